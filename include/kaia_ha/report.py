"""Run reports: each step records its own timing; a final task renders one report per run.

A step's record is a small JSON-safe dict pushed to XCom under ``STEP_KEY`` (start, end, seconds, try
number, outcome). Reports are written as JSON and Markdown through Airflow's object storage to the store
``kaia_ha.model.report_store`` names (``KAIA_HA_REPORT_URL``, e.g. ``s3://bucket/prefix``; unset, the local folder
``KAIA_HA_REPORT_DIR``, default ``$AIRFLOW_HOME/reports``), one folder per DAG, where the UI's Report tab reads
them, and printed to the task log. No key material ever reaches them: steps return node IDs and fingerprints only.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import uuid
from contextlib import contextmanager

from kaia_ha.model import report_store
from kaia_ha_airflow.iam import needs

STEP_KEY = "kaia_step"
log = logging.getLogger(__name__)


def step(fn):
    """Record the step's timing and outcome in XCom when it runs as an Airflow task."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            from airflow.sdk import get_current_context

            context = get_current_context()
        except Exception:  # called outside a task (a unit test): nothing to record into
            return fn(*args, **kwargs)
        with step_record(context):
            return fn(*args, **kwargs)

    return wrapper


def _record(ti, start: float, error: BaseException | None) -> None:
    """Push the step's record (one shape for functions and operators): start, end, seconds, try, outcome."""
    from airflow.sdk.exceptions import AirflowSkipException

    end = time.time()
    if error is None:
        outcome = "success"
    elif isinstance(error, AirflowSkipException):  # nothing to do: said why, not a failure
        outcome = f"skipped: {str(error)[:300]}"
    else:
        outcome = f"failed: {type(error).__name__}: {str(error)[:300]}"
    ti.xcom_push(key=STEP_KEY, value={"task": ti.task_id, "try": ti.try_number, "start": start, "end": end,
                                      "seconds": round(end - start, 2), "outcome": outcome})


@contextmanager
def step_record(context):
    """Record when a step ran and how it ended, also when it fails (the postmortem needs both)."""
    start, error = time.time(), None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        _record(context["ti"], start, error)


def record_task(context) -> None:
    """Task callback (success, retry, failure) that records an operator's or sensor's step the way ``@step``
    records a function's, so the timeline has every task: the waits for EC2 are often the critical path."""
    ti = context["ti"]
    _record(ti, ti.start_date.timestamp() if ti.start_date else time.time(), context.get("exception"))


file_name = report_store.file_name


def write(dag_id: str, run_id: str, report: dict, markdown: str) -> dict[str, str]:
    """Store the run's report (JSON and Markdown) where the Report tab reads it; the same names on every try, so a
    retry replaces what an earlier try wrote. Local files are replaced atomically (a unique temporary file, then a
    rename), an S3 object by one PUT (a reader sees the old object or the new, never a part). Returns the two
    locations: file system paths for a local store, ``s3://`` URLs otherwise. A durable store that fails does not
    cost the run its verdict: the report goes to the local folder instead, with a warning in the task log."""
    texts = {"json": json.dumps(report, indent=2, default=str), "markdown": markdown}
    fallback = report_store.store({**os.environ, report_store.URL_ENV: ""})
    try:
        where = report_store.store()
    except ValueError as exc:
        where = _not_stored(exc, os.environ.get(report_store.URL_ENV), dag_id, fallback)
    if where.local:
        return _write_local(where, dag_id, run_id, texts)
    try:
        return _write_remote(where, dag_id, run_id, texts)
    except Exception as exc:  # the caller still logs the report and raises the run's own verdict
        return _write_local(_not_stored(exc, where.url, dag_id, fallback), dag_id, run_id, texts)


def _not_stored(exc: Exception, url: str | None, dag_id: str, fallback: report_store.Store) -> report_store.Store:
    log.warning("The report could NOT be stored in %s (%s: %s); it is on this worker only, under %s",
                url, type(exc).__name__, str(exc)[:300], report_store.local_path(fallback.folder(dag_id)))
    return fallback


@needs("s3:PutObject")
def _write_remote(where: report_store.Store, dag_id: str, run_id: str, texts: dict[str, str]) -> dict[str, str]:
    from airflow.sdk import ObjectStoragePath  # here, not at import: DAG files import this module

    urls = where.locate(dag_id, run_id)
    for kind, url in urls.items():
        ObjectStoragePath(url, conn_id=where.conn_id).write_text(texts[kind])
    return urls


def _write_local(where: report_store.Store, dag_id: str, run_id: str, texts: dict[str, str]) -> dict[str, str]:
    from airflow.sdk import ObjectStoragePath

    urls = where.locate(dag_id, run_id)
    for kind, url in urls.items():
        target = ObjectStoragePath(url)
        target.parent.mkdir(parents=True, exist_ok=True)  # the store's own folder (KAIA_HA_REPORT_URL or _DIR)
        tmp = target.parent / f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            tmp.write_text(texts[kind])
            tmp.replace(target)
        finally:
            if tmp.exists():
                tmp.unlink()
    return {kind: str(report_store.local_path(url)) for kind, url in urls.items()}


def table(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def timeline(ti, dag_id: str, run_id: str) -> tuple[list[dict], dict[str, str]]:
    """Every recorded step of the run, in start order, with its final state; and all task states."""
    states = ti.get_task_states(dag_id=dag_id, run_ids=[run_id]).get(run_id, {})
    steps = []
    for task_id in states:
        record = ti.xcom_pull(task_ids=task_id, key=STEP_KEY, default=None)
        if record:
            steps.append(record | {"state": states[task_id]})
    return sorted(steps, key=lambda r: r["start"]), states
