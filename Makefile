# Kaia CN high availability: Airflow DAGs and the simulated core cell they are built against.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
RUN := source scripts/airflow-env.sh &&
STAMP := $(VENV)/.bootstrapped

.PHONY: help setup demo drill test simcell-up simcell-down simcell-status clean

help:
	@echo "make demo            the drill, then the Airflow UI stays up (address and login printed) until Ctrl-C"
	@echo "make drill           a failover drill through the real Airflow: maintenance, CN killed, failover, report"
	@echo "make test            every test suite (sets everything up on first use)"
	@echo "make simcell-up|simcell-down|simcell-status"

$(STAMP): requirements.txt constraints.txt scripts/bootstrap.sh
	bash scripts/bootstrap.sh
	touch $@

setup: $(STAMP)

test: $(STAMP)
	$(RUN) $(PY) -m pytest tests -q -p no:cacheprovider

demo: $(STAMP)
	$(RUN) $(PY) -m drill --stay

drill: $(STAMP)
	$(RUN) $(PY) -m drill

simcell-up: $(STAMP)
	$(RUN) $(PY) -m simcell up

simcell-down: $(STAMP)
	$(RUN) $(PY) -m simcell down

simcell-status: $(STAMP)
	$(RUN) $(PY) -m simcell status

clean: simcell-down
	rm -rf .airflow .simcell .artifacts
