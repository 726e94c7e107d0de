"""One task's step over many core cells at once, in threads: the watchdog's round and the maintenance steps.

Why not a task per cell: every task is a process that parses its DAG file, and at 20 cells a maintenance run of a
task per cell and step was ~260 tasks, 11x (LocalExecutor) to 24x (Celery) the time of one cell on two cores. A
cell's work in a step is SSH and AWS calls (I/O), so threads do it at once for the price of one task start.

Each cell's outcome is kept apart: ``done`` (its result), ``skipped`` (why nothing was to be done) or ``failed``
(why). A step over cells tries every cell before it fails, so one cell's fault never holds back the others, and the
next step works on the cells this one did. Within a step the cells share what is costly to make
and safe to share (``shared``: an AWS client costs ~0.15 CPU-s to make, and boto3 clients are thread-safe).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from kaia_ha.model.inventory import Cell
from kaia_ha_airflow.hooks.ec2 import CoreCellEC2Hook
from kaia_ha_airflow.hooks.kaia_node import KaiaNodeHook

log = logging.getLogger(__name__)
MAX_THREADS = 16  # cells worked on at once (each: one SSH session at a time, a few AWS calls)
CELLS_KEY = "kaia_cells"  # the XCom of a step over cells: {"done": {...}, "skipped": {...}, "failed": {...}}


_scope: dict | None = None  # what the cells of the step running now share (``shared``)
_scope_lock = threading.Lock()


def shared(key: tuple, make: Callable[[], object]):
    """Within a step over cells, one object per ``key`` for every cell's thread (made once, under a lock); outside
    one, a new object each call. Scoped to the step: a connection changed between steps is read again."""
    if _scope is None:
        return make()
    with _scope_lock:
        if key not in _scope:
            _scope[key] = make()
        return _scope[key]


def ec2(cell: Cell) -> CoreCellEC2Hook:
    """The cell's EC2 hook; within a step, one per account connection and region for all the cells."""
    return shared(("ec2", cell.aws_conn_id, cell.region),
                  lambda: CoreCellEC2Hook(aws_conn_id=cell.aws_conn_id, region_name=cell.region))


def node_hook(node) -> KaiaNodeHook:
    """SSH to an inventory node as its connection says; within a step, one session per node, reused by the cell's
    thread (a node is one cell's: no two threads share it). Saves an SSH handshake per check."""
    return shared(("ssh", node.name, node.ssh_conn_id), lambda: KaiaNodeHook(node))


class CellSkipped(Exception):  # noqa: N818 - a cell's outcome, not an error
    """Nothing for this step to do in this cell; the message says why (for the log and the report)."""


@dataclass
class Outcome:
    done: dict[str, object] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def as_xcom(self) -> dict:
        return {"done": self.done, "skipped": self.skipped, "failed": self.failed}

    def summary(self) -> str:
        parts = [f"{len(self.done)} done", f"{len(self.skipped)} skipped", f"{len(self.failed)} failed"]
        return ", ".join(parts)


def conn_ids(cell: Cell) -> set[str]:
    ssh = {node.ssh_conn_id for node in [*cell.cns, *cell.pns]}
    return ssh | {cell.aws_conn_id} if cell.scheme == "cloud" else ssh


def look_up_connections(cells: Iterable[Cell]) -> None:
    """Each connection looked up once before the threads: a lookup registers its secrets with Airflow's secrets
    masker, which has no lock; later lookups of the same connection add nothing new."""
    from airflow.sdk import BaseHook

    for conn_id in sorted({c for cell in cells for c in conn_ids(cell)}):
        try:
            BaseHook.get_connection(conn_id)
        except Exception as exc:  # the cell's own work says what is wrong with it
            log.warning("connection %s: %s", conn_id, type(exc).__name__)


def threads_for(cells: int, most: int = MAX_THREADS) -> int:
    """Threads for a step over ``cells``: one when the task runs under ``dag.test()``, whose in-process supervisor
    channel has no lock (it unsets itself while it answers a call, so another thread's XCom or connection call
    fails); a worker's task process talks to its supervisor under a lock."""
    try:
        from airflow.sdk.execution_time import task_runner
        from airflow.sdk.execution_time.supervisor import InProcessSupervisorComms
    except ImportError:
        return max(1, min(cells, most))
    if isinstance(getattr(task_runner, "SUPERVISOR_COMMS", None), InProcessSupervisorComms):
        return 1
    return max(1, min(cells, most))


def each_cell(cells: list[Cell], work: Callable[[Cell], object], *, what: str) -> Outcome:
    """``work(cell)`` for every cell at once; each cell's result, skip or failure (never raised: see ``Outcome``)."""
    global _scope
    look_up_connections(cells)
    outcome = Outcome()

    def one(cell: Cell) -> None:
        try:
            outcome.done[cell.name] = work(cell)
        except CellSkipped as why:
            outcome.skipped[cell.name] = str(why)
            log.info("%s of %s: skipped: %s", what, cell.name, why)
        except Exception as exc:
            outcome.failed[cell.name] = f"{type(exc).__name__}: {str(exc)[:500]}"
            log.error("%s of %s failed: %s", what, cell.name, outcome.failed[cell.name], exc_info=True)

    outer, _scope = _scope, (_scope if _scope is not None else {})
    try:
        if cells:
            with ThreadPoolExecutor(max_workers=threads_for(len(cells)), thread_name_prefix=what[:12]) as pool:
                list(pool.map(one, cells))
    finally:
        _scope = outer
    log.info("%s over %d cells: %s", what, len(cells), outcome.summary())
    return outcome
