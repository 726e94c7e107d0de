#!/usr/bin/env bash
# `make demo`: the simulated core cell plus Airflow (api-server, scheduler, dag-processor, triggerer)
# with this project's DAGs, until Ctrl-C. Run through `make demo` (it sets up .venv and Airflow first).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/airflow-env.sh
PORT="${KAIA_HA_DEMO_PORT:-8080}"

python -m simcell up
set -a; source .simcell/env; set +a
airflow pools set kaia_pn_downtime 1 "Kaia: at most one PN stopped at a time" >/dev/null

cleanup() {
  echo; echo "demo: stopping Airflow and the simulated core cell"
  [ -n "${AIRFLOW_PID:-}" ] && kill -- -"$AIRFLOW_PID" 2>/dev/null || true
  python -m simcell down >/dev/null || true
}
trap cleanup EXIT INT TERM

mkdir -p "$AIRFLOW_HOME"
AIRFLOW__API__PORT="$PORT" setsid airflow standalone > "$AIRFLOW_HOME/standalone.log" 2>&1 &
AIRFLOW_PID=$!
echo "demo: starting Airflow (log: $AIRFLOW_HOME/standalone.log)"
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$PORT/api/v2/version" >/dev/null 2>&1 && break
  sleep 1
done
PASSWORDS="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
echo
echo "  Airflow UI:  http://127.0.0.1:$PORT"
echo "  Login:       $(python -c "import json,sys; d=json.load(open('$PASSWORDS')); print(', '.join(f'{u} / {p}' for u,p in d.items()))" 2>/dev/null || echo "see $PASSWORDS")"
echo "  Simulated core cell: python -m simcell status   (inventory: $KAIA_HA_INVENTORY)"
echo "  DAGs: kaia_cn_maintenance, kaia_cn_standby_readiness (scheduled); kaia_cn_failover_cloud, kaia_cn_failover_standby (trigger during an incident)"
echo "  Drill: python -m simcell break cn-aws-1 --how kill, then trigger kaia_cn_failover_cloud"
echo
echo "Ctrl-C stops everything."
wait "$AIRFLOW_PID"
