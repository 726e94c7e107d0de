# Kaia CN high availability: Airflow DAGs and the simulated core cell they are built against.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
RUN := source scripts/airflow-env.sh &&
STAMP := $(VENV)/.bootstrapped

.PHONY: help setup demo drill test bench faults simcell-up simcell-down simcell-status clean

help:
	@echo "make demo            the drill, then the Airflow UI stays up (address and login printed) until Ctrl-C"
	@echo "make drill           a failover drill through the real Airflow: maintenance, CN killed, failover, report"
	@echo "                     (EXECUTOR=celery: on PostgreSQL, Redis and two Celery workers)"
	@echo "make test            ruff check, then every test suite (sets everything up on first use)"
	@echo "make bench           every benchmark (RUNS=5 more runs, CELLS=1,5 skip 20 cells) -> .artifacts/bench/*.json"
	@echo "make faults          the full fault sweep; writes .artifacts/fault-matrix.md and .json"
	@echo "make simcell-up|simcell-down|simcell-status"

$(STAMP): requirements.txt requirements-dev.txt constraints.txt scripts/bootstrap.sh
	bash scripts/bootstrap.sh
	touch $@

setup: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(RUN) $(PY) -m pytest tests -q -p no:cacheprovider

# Benchmarks one after another (they share 2 cores); RUNS overrides each one's default run count,
# CELLS the core-cell counts of the scale benchmark (default 1,5,20; 20 cells is most of the time).
BENCH_RUNS = $(if $(RUNS),--runs $(RUNS))
bench: $(STAMP)
	$(RUN) $(PY) bench/failover_rto.py $(BENCH_RUNS)
	$(RUN) $(PY) bench/failover_standby_rto.py $(BENCH_RUNS)
	$(RUN) $(PY) bench/maintenance_downtime.py $(BENCH_RUNS)
	$(RUN) $(PY) bench/dag_parse.py $(BENCH_RUNS)
	$(RUN) $(PY) bench/maintenance_scale.py $(BENCH_RUNS) $(if $(CELLS),--cells $(CELLS))
	$(RUN) $(PY) bench/watchdog.py $(BENCH_RUNS)
	$(RUN) $(PY) bench/watchdog.py --soak 30
	$(RUN) $(PY) bench/watchdog.py --cells 20
	$(RUN) $(PY) bench/engine.py overhead $(BENCH_RUNS)
	$(RUN) $(PY) bench/engine.py scale $(if $(CELLS),--cells $(CELLS))

# Every AWS action and SSH step under every fault kind, and every failover step failed then cleared.
faults: $(STAMP)
	$(RUN) KAIA_HA_FULL_FAULTS=1 $(PY) -m pytest tests/faults -q -p no:cacheprovider -rs

demo: $(STAMP)
	$(RUN) $(PY) -m drill --stay $(DRILL_EXECUTOR)

# EXECUTOR=local (airflow standalone, SQLite) or celery (PostgreSQL, Redis, two Celery workers).
DRILL_EXECUTOR = $(if $(EXECUTOR),--executor $(EXECUTOR))
drill: $(STAMP)
	$(RUN) $(PY) -m drill $(DRILL_EXECUTOR)

simcell-up: $(STAMP)
	$(RUN) $(PY) -m simcell up

simcell-down: $(STAMP)
	$(RUN) $(PY) -m simcell down

simcell-status: $(STAMP)
	$(RUN) $(PY) -m simcell status

clean: simcell-down
	rm -rf .airflow .simcell .artifacts
