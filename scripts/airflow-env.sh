# Sourced by the Makefile's recipes and scripts: the project's Airflow settings, no secrets.
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$_repo/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$_repo/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$_repo/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True
export PYTHONPATH="$_repo/include:$_repo/plugins:$_repo${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$_repo/.venv/bin:$PATH"
