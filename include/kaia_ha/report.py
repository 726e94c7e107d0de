"""Run reports: each step records its own timing; a final task renders one report per run.

A step's record is a small JSON-safe dict pushed to XCom under ``STEP_KEY`` (start, end, seconds, try
number, outcome). Reports are written as JSON and Markdown under ``KAIA_HA_REPORT_DIR`` (default
``$AIRFLOW_HOME/reports``), one folder per DAG, and printed to the task log. No key material ever
reaches them: steps return node IDs and fingerprints only.
"""

from __future__ import annotations

import functools
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

STEP_KEY = "kaia_step"


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
    end = time.time()
    ti.xcom_push(key=STEP_KEY, value={
        "task": ti.task_id, "try": ti.try_number, "start": start, "end": end, "seconds": round(end - start, 2),
        "outcome": "success" if error is None else f"failed: {type(error).__name__}: {str(error)[:300]}"})


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


def report_dir(dag_id: str) -> Path:
    base = os.environ.get("KAIA_HA_REPORT_DIR") or Path(os.environ.get("AIRFLOW_HOME", ".")) / "reports"
    path = Path(base) / dag_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_name(run_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)


def write(dag_id: str, run_id: str, report: dict, markdown: str) -> dict[str, str]:
    folder = report_dir(dag_id)
    stem = file_name(run_id)
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
    for path, text in ((json_path, json.dumps(report, indent=2, default=str)), (md_path, markdown)):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return {"json": str(json_path), "markdown": str(md_path)}


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
