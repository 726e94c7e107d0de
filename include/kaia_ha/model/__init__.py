"""The domain model: no Airflow task code; imports nothing of the project outside kaia_ha.model."""
