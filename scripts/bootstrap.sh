#!/usr/bin/env bash
# Everything `make demo` and `make test` need on a fresh Debian machine with Python 3.11:
# Debian packages for the simulated hosts and the browser tests, the virtual environment with pinned packages, an Airflow home.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
command -v ssh-keygen >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# The engine tests drive the Airflow UI in a real, headless browser: Debian's own, never a downloaded one.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
# The Celery engine (drill/engine.py, EXECUTOR=celery): PostgreSQL and Redis on loopback, started by the project.
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need_apt+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade "pip==26.3"
.venv/bin/python -m pip install -q -r requirements-dev.txt -c constraints.txt

# The project's own Airflow home (its metadata DB is what dag.test() and the scheduler use).
. scripts/airflow-env.sh
mkdir -p "$AIRFLOW_HOME"
.venv/bin/airflow db migrate >/dev/null
.venv/bin/airflow pools set kaia_pn_downtime 1 "Kaia: one kpnd stop at a time" >/dev/null
echo "bootstrap: ready (.venv, $AIRFLOW_HOME)"
