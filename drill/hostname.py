"""``[core] hostname_callable`` of the Celery engine's workers: two workers on one machine, each named
(``KAIA_HA_WORKER_NAME``), so a task instance's hostname tells which worker ran it."""

import os
import socket


def worker_name() -> str:
    return os.environ.get("KAIA_HA_WORKER_NAME") or socket.getfqdn()
