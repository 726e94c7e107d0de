# The Airflow image for docker-compose.yaml: the official image plus this project's pinned runtime packages
# (requirements.txt only: the test tools have a file of their own and stay out of the image).
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt constraints.txt /opt/kaia-ha/
# As the image's docs say: name the image's own Airflow (AIRFLOW_VERSION, set by the image) so that pip can neither
# upgrade nor downgrade it while resolving the providers; requirements.txt pins the same version (a test checks the
# FROM tag against it). `pip check`, as the entrypoint does after extra requirements: fail the build if the pins
# break a package the image already has.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/kaia-ha/requirements.txt \
        -c /opt/kaia-ha/constraints.txt \
    && pip check
COPY --chown=airflow:root dags/ /opt/airflow/dags/
COPY --chown=airflow:root plugins/ /opt/airflow/plugins/
COPY --chown=airflow:root include/ /opt/airflow/include/
ENV PYTHONPATH=/opt/airflow/include:/opt/airflow/plugins
