"""Plain helpers of the Kaia CN high-availability DAGs: no Airflow operators here."""
