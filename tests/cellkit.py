"""Drive a simulated core cell from tests the way an operator does (its CLI, SSH, boto3), and run the
project's DAGs against it for real (DagBag parse, ``dag.test()``)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import boto3

REPO = Path(__file__).resolve().parent.parent


class Cell:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.base_env = dict(os.environ, SIMCELL_DIR=str(state_dir), PYTHONPATH=str(REPO))
        self.env: dict[str, str] = {}

    # ----- the CLI ---------------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "simcell", *args], env=self.base_env, cwd=REPO, capture_output=True, text=True,
            timeout=300
        )
        if check and result.returncode != 0:
            raise AssertionError(f"simcell {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n"
                                 f"{result.stderr}")
        return result

    def up(self, *args: str) -> None:
        self.cli("up", *args)
        self.env = self.read_env()

    def down(self) -> None:
        self.cli("down", check=False)

    def read_env(self) -> dict[str, str]:
        env = {}
        for line in (self.state_dir / "env").read_text().splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export ") :].partition("=")
                env[key] = shlex.split(value)[0] if value else ""
        return env

    def engine_env(self) -> dict[str, str]:
        """The environment of an Airflow engine against this cell (the drill, the engine suite): the cell's, and what
        a deployment with several workers keeps off their disks, in the cell's S3 (docker-compose.yaml's options):
        the run reports (the durable report store) and the task logs (Airflow's remote logging)."""
        from simcell.seed import STATE_BUCKET

        return {**self.env, "KAIA_HA_REPORT_URL": f"s3://{STATE_BUCKET}/reports", "KAIA_HA_REPORT_CONN_ID": "kaia_aws",
                "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
                "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": f"s3://{STATE_BUCKET}/logs",
                "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": "kaia_aws"}

    def status(self) -> dict:
        return json.loads(self.cli("status").stdout)

    def node(self, name: str, service: str | None = None) -> dict:
        for node in self.status()["nodes"]:
            if node["name"] == name and (service is None or node["service"] == service):
                return node
        raise KeyError(name)

    def fault(self, *args: str) -> None:
        self.cli("fault", *args)

    @contextlib.contextmanager
    def maintenance_settings(self, cell_name: str, **settings):
        """The inventory's ``maintenance`` of one cell changed for the block (the DAGs read it again: mtime), then put
        back; e.g. short PN stop limits, so a slow stop need not last a minute."""
        import yaml

        path = Path(self.env["KAIA_HA_INVENTORY"])
        before = path.read_text()
        data = yaml.safe_load(before)
        next(c for c in data["cells"] if c["name"] == cell_name)["maintenance"].update(settings)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        try:
            yield
        finally:
            path.write_text(before)

    def break_(self, node: str, how: str) -> None:
        self.cli("break", node, "--how", how)

    # ----- AWS and SSH -------------------------------------------------------------------------------
    def client(self, service: str, region: str = "us-east-1", **config):
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
            region_name=region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(**config) if config else None,
        )

    def conn(self, name: str) -> dict:
        return json.loads(self.env["AIRFLOW_CONN_SSH_" + name.upper().replace("-", "_")])

    def ssh(self, name: str, command: str, check: bool = True, stdin: str | None = None,
            instance_id: str | None = None) -> subprocess.CompletedProcess:
        """Run a command on a node's host with the system ssh client, host key checked.

        ``instance_id``: a launched instance instead, reached like the node (its login and key), its address
        and host key from the EC2 API (console output), as an operator would.
        """
        conn = self.conn(name)
        if instance_id:
            ec2 = self.client("ec2")
            instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
            address = instance["PrivateIpAddress"]
            console = ec2.get_console_output(InstanceId=instance_id)["Output"]  # botocore decodes the base64
            key = next(line for line in console.splitlines() if line.startswith("ssh-ed25519 AAAA"))
            conn = conn | {"host": address, "extra": conn["extra"] | {"host_key": " ".join(key.split()[:2])}}
            name = instance_id
        known = self.state_dir / f"known_hosts_{name}"
        known.write_text(f"[{conn['host']}]:{conn['port']} {conn['extra']['host_key']}\n")
        result = subprocess.run(
            ["ssh", "-i", conn["extra"]["key_file"], "-p", str(conn["port"]), "-o", f"UserKnownHostsFile={known}",
             "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
             f"{conn['login']}@{conn['host']}", command],
            capture_output=True, text=True, input=stdin, timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"ssh {name} {command!r} -> {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def attach(self, name: str, expr: str, data_dir: str = "/var/kcnd/data", binary: str = "kcn"):
        out = self.ssh(name, f"sudo {binary} attach --datadir {data_dir} --exec "
                             f"{shlex.quote('JSON.stringify(' + expr + ')')}").stdout
        return json.loads(json.loads(out))

    def calls(self, action: str | None = None) -> list[dict]:
        lines = (self.state_dir / "aws-calls.jsonl").read_text().splitlines()
        calls = [json.loads(line) for line in lines]
        return [c for c in calls if action is None or c["action"] == action]

    def wait_for(self, predicate, timeout: float = 30, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.2)


def answer_when_asked(dag_id: str, task_id: str, option: str, seen: dict, timeout: float = 180):
    """Play the operator: when the task waits for input (Required actions), answer it as the UI's API does.
    Returns the thread; ``seen`` gets the question (state, run_id, subject, body, options) and when it was asked."""
    import threading
    from datetime import datetime, timezone

    def run():
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance
        from airflow.models.trigger import handle_event_submit
        from airflow.triggers.base import TriggerEvent
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select

        since, deadline = datetime.now(timezone.utc), time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with create_session() as session:
                    ti = session.scalars(select(TaskInstance).where(
                        TaskInstance.dag_id == dag_id, TaskInstance.task_id == task_id,
                        TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                        TaskInstance.start_date >= since)).first()
                    if ti is not None:
                        detail = session.get(HITLDetail, ti.id)
                        seen.update(state=str(ti.state), run_id=ti.run_id, subject=detail.subject, body=detail.body,
                                    options=detail.options, asked_at=time.time())
                        detail.responded_by = {"id": "drill", "name": "drill-operator"}
                        detail.responded_at = datetime.now(timezone.utc)
                        detail.chosen_options = [option]
                        detail.params_input = {}
                        handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti,
                                            session=session)
                        return
            except Exception as exc:  # e.g. the metadata database busy: ask again
                seen.setdefault("errors", []).append(repr(exc)[:200])
            time.sleep(0.5)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def end_interrupted_runs() -> None:
    """Mark failed the project's DAG runs an interrupted test session left running in the shared metadata DB
    (``dag.test()`` runs end before it returns): a "running" cloud failover makes the maintenance DAG leave
    the PNs alone, as it should in production. Called once, when a test session starts."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    ours = [p.stem for p in (REPO / "dags").glob("kaia_*.py")]  # each DAG file is named after its DAG
    with create_session() as session:
        (session.query(DagRun).filter(DagRun.state == DagRunState.RUNNING, DagRun.dag_id.in_(ours))
         .update({DagRun.state: DagRunState.FAILED}))


class AirflowRunner:
    def __init__(self, cell, report_dir: Path):
        self.cell = cell
        self.report_dir = report_dir

    def __enter__(self):
        self.saved = dict(os.environ)
        os.environ.update({k: v for k, v in self.cell.env.items() if k != "AIRFLOW_HOME"})
        os.environ["KAIA_HA_REPORT_DIR"] = str(self.report_dir)
        os.environ["KAIA_HA_RETRY_DELAY_SECONDS"] = "1"
        return self

    def __exit__(self, *exc):
        os.environ.clear()
        os.environ.update(self.saved)

    def dag(self, dag_id: str):
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(REPO / "dags" / f"{dag_id}.py"))  # each DAG file is named after its DAG
        assert bag.import_errors == {}, bag.import_errors
        return bag.get_dag(dag_id)

    def run(self, dag_id: str, conf: dict | None = None, retries: int | None = None):
        """``dag.test()`` and the final state of every task instance:
        ``(run_id, state, {(task_id, map_index): (state, try)})``.

        Every log record of the run is kept in ``self.log_text`` for leak scans; with ``self.leak_scan`` set (a
        ``leakscan.LeakScan``), the run's process command lines are watched too. ``retries``: every task's, instead
        of the DAG's (0: a step fails at its first error, for drills that clear it afterwards).
        """
        return self._drive(dag_id, lambda dag: dag.test(run_conf=conf), retries)

    def clear_and_rerun(self, dag_id: str, run_id: str, task_ids: list[str] | None = None, retries: int | None = None):
        """What an operator does in the UI after fixing a cause: *Clear* the failed tasks (default: every failed or
        upstream-failed one) with *Downstream*, and let the same run go on. Returns what ``run`` returns.

        ``dag.test()`` cannot do this by itself: it deletes any run of its logical date and starts a new one
        (``get_or_create_dagrun``). So the tasks are cleared with Airflow's own ``clear`` (as the UI's Clear does:
        their try numbers are kept, the run goes back to running), and ``dag.test()``'s own loop then drives that
        same run, with only its delete-and-recreate step replaced by "this run".
        """
        from unittest import mock

        from airflow.models.dagrun import DagRun
        from airflow.serialization.definitions.dag import SerializedDAG
        from airflow.serialization.serialized_objects import DagSerialization
        from airflow.utils.session import create_session
        from airflow.utils.state import DagRunState

        def drive(dag):
            with create_session() as session:
                dr = session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id).one()
                failed = task_ids or [ti.task_id for ti in dr.get_task_instances(session=session)
                                      if ti.state in ("failed", "upstream_failed")]
                logical_date, run_after = dr.logical_date, dr.run_after
            assert failed, f"{run_id}: no failed task to clear"
            scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
            subset = scheduler_dag.partial_subset(task_ids=failed, include_downstream=True, include_upstream=False)
            scheduler_dag.clear(task_ids=list(subset.task_dict), run_id=run_id, dag_run_state=DagRunState.RUNNING)
            if retries is not None:  # the clear takes the retries of the DAG as stored; a drill's own count stays
                from airflow.models.taskinstance import TaskInstance

                with create_session() as session:
                    for ti in session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id,
                                                                 TaskInstance.run_id == run_id,
                                                                 TaskInstance.task_id.in_(list(subset.task_dict))):
                        ti.max_tries = ti.try_number + retries

            def this_run(*, session, dag, **_):
                dr = session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id).one()
                dr.dag = dag  # what create_dagrun would have set: the scheduler's view of the DAG
                return dr

            with mock.patch.object(SerializedDAG, "clear_dags", lambda *a, **k: 0), \
                 mock.patch("airflow.models.dagrun.get_or_create_dagrun", this_run):
                return dag.test(logical_date=logical_date, run_after=run_after)

        return self._drive(dag_id, drive, retries)

    def run_existing(self, dag_id: str, run_id: str):
        """Run a queued run that another DAG triggered (what the scheduler would do), with ``dag.test()``'s loop
        driving that run instead of a new one. Returns what ``run`` returns."""
        from unittest import mock

        from airflow.models.dagrun import DagRun
        from airflow.utils import timezone
        from airflow.utils.state import DagRunState

        def this_run(*, session, dag, **_):
            dr = session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id).one()
            dr.dag = dag
            dr.state, dr.start_date = DagRunState.RUNNING, timezone.utcnow()  # the scheduler starts a queued run
            return dr

        with mock.patch("airflow.models.dagrun.get_or_create_dagrun", this_run):
            return self._drive(dag_id, lambda dag: dag.test())

    def _drive(self, dag_id: str, go, retries: int | None = None):
        import contextlib
        import logging

        records: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record):
                try:
                    records.append(record.getMessage())
                except Exception:
                    records.append(str(record.msg))

        handler = Keep(level=logging.DEBUG)
        logging.getLogger().addHandler(handler)
        scan = getattr(self, "leak_scan", None)
        try:
            dag = self.dag(dag_id)
            if retries is not None:
                for task in dag.tasks:
                    task.retries = retries
            with scan.watch() if scan else contextlib.nullcontext():
                dag_run = go(dag)
        finally:
            logging.getLogger().removeHandler(handler)
            self.log_text = getattr(self, "log_text", "") + "\n".join(records)
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session

        with create_session() as session:
            dr = session.query(DagRun).filter_by(dag_id=dag_id, run_id=dag_run.run_id).one()
            tis = {(ti.task_id, ti.map_index): (getattr(ti.state, "value", ti.state), ti.try_number)
                   for ti in dr.get_task_instances(session=session)}
            state = dr.state
        return dag_run.run_id, state, tis

    def report(self, dag_id: str, run_id: str) -> dict:
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
        return json.loads((self.report_dir / dag_id / f"{stem}.json").read_text())
