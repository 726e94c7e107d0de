"""Where the simulated cell keeps its state (all under ``.simcell/``, ignored by git)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("SIMCELL_DIR", REPO / ".simcell")).resolve()

ENV_FILE = STATE / "env"
RUNTIME_FILE = STATE / "runtime.json"  # ports and pids of the running supervisor
CALL_LOG = STATE / "aws-calls.jsonl"
# present while SSH faults wait: only then a session asks the coordinator
SSH_FAULTS_FLAG = STATE / "ssh-faults-pending"
SUPERVISOR_LOG = STATE / "supervisor.log"
INVENTORY = STATE / "inventory.yaml"
KEYS = STATE / "keys"
HOSTS = STATE / "hosts"
VOLUMES = STATE / "ebs" / "volumes"
SNAPSHOTS = STATE / "ebs" / "snapshots"
IMAGES = STATE / "images"

PYTHON = sys.executable
SSH_PORT = 2222  # every simulated host listens on its own loopback address, on this port

# The directories of a host's root file system that its SSH sessions (and the node daemons started
# from them) see at their usual absolute paths. Each is a bind mount in a private mount namespace.
HOST_MOUNTS = ("etc/kcnd", "etc/kpnd", "var/kcnd", "var/kpnd", "var/log/kcnd", "var/log/kpnd", "opt/kaia")


def host_dir(name: str) -> Path:
    return HOSTS / name


def host_root(name: str) -> Path:
    return HOSTS / name / "root"
