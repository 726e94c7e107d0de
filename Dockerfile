# The Airflow image for docker-compose.yaml: the official image plus this project's pinned packages.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt constraints.txt /opt/kaia-ha/
RUN pip install --no-cache-dir -r /opt/kaia-ha/requirements.txt -c /opt/kaia-ha/constraints.txt
COPY --chown=airflow:root dags/ /opt/airflow/dags/
COPY --chown=airflow:root plugins/ /opt/airflow/plugins/
COPY --chown=airflow:root include/ /opt/airflow/include/
ENV PYTHONPATH=/opt/airflow/include:/opt/airflow/plugins
