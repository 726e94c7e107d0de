"""Airflow for real, in an Airflow home of its own, driven through the REST API (``/api/v2``) the way the UI
drives it. Two engines:

- ``local``: ``airflow standalone`` (api-server, scheduler, dag-processor, triggerer; LocalExecutor, SQLite).
- ``celery``: what ``docker-compose.yaml`` deploys, on loopback: PostgreSQL and Redis (``drill.backing``), then
  api-server, scheduler, dag-processor, triggerer and two Celery workers, each a process of its own
  (``CELERY_COMPONENTS``; ``tests/test_deployment.py`` keeps the compose file in step with it).

The engine tests (``tests/engine``), ``python -m drill`` and ``make demo`` all start Airflow with this module
(``KAIA_HA_EXECUTOR`` or ``executor=`` chooses). Every process it starts carries a marker in its environment;
``stop()`` ends them all by that marker (task processes run in process groups of their own, so killing the
components' groups is not enough).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import requests

from drill.backing import Postgres, Redis, free_port

REPO = Path(__file__).resolve().parent.parent
POOL = ("kaia_pn_downtime", 1, "Kaia: one kpnd stop at a time")  # as scripts/bootstrap.sh and the compose init
FINISHED = {"success", "failed"}
MARKER = "KAIA_HA_ENGINE_ID"
EXECUTORS = ("local", "celery")
WORKERS = ("worker-1", "worker-2")
# The Celery engine's Airflow components and their commands, as docker-compose.yaml runs them (one process each).
CELERY_COMPONENTS: dict[str, list[str]] = {
    "api-server": ["api-server"],
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer"],
    **{worker: ["celery", "worker"] for worker in WORKERS},
}
# Shared by every component of either engine (docker-compose.yaml sets each for every Airflow service too).
SHARED_SETTINGS = ("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "AIRFLOW__API_AUTH__JWT_SECRET",
                   "AIRFLOW__API__SECRET_KEY")


def celery_settings(database: str, broker: str) -> dict[str, str]:
    """What makes it the Celery engine, given the PostgreSQL URL (with its driver: SQLAlchemy 2.1's default for a
    bare ``postgresql://`` is psycopg 3, which the runtime does not install) and the Redis URL."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + database,
        "AIRFLOW__CELERY__BROKER_URL": broker,
    }


class EngineError(RuntimeError):
    pass


def log_text(content: list) -> str:
    """A task log as the API returns it (structured records) as plain text, every field kept: the leak
    scans must see exception details too, not only the message."""
    lines = []
    for record in content:
        if isinstance(record, dict):
            rest = {k: v for k, v in record.items() if k not in ("event", "timestamp", "level", "logger")}
            lines.append(f"{record.get('timestamp', '')} {record.get('level', '')} {record.get('event', '')}"
                         + (f" {json.dumps(rest, default=str)}" if rest else ""))
        else:
            lines.append(str(record))
    return "\n".join(lines)


class AirflowEngine:
    """``start()`` a real Airflow in ``home`` with ``extra_env`` (the simulated cell's variables), then use the
    REST API."""

    def __init__(self, home: Path, extra_env: dict[str, str] | None = None, port: int | None = None,
                 executor: str | None = None):
        self.executor = executor or os.environ.get("KAIA_HA_EXECUTOR") or "local"
        if self.executor not in EXECUTORS:
            raise EngineError(f"executor {self.executor!r}: choose one of {', '.join(EXECUTORS)} "
                              f"(EXECUTOR= in make, KAIA_HA_EXECUTOR in the environment)")
        self.home = Path(home)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.id = uuid.uuid4().hex
        self.env = self._env(extra_env or {})
        self.process: subprocess.Popen | None = None  # the standalone, or the api-server of the Celery engine
        self.components: dict[str, subprocess.Popen] = {}
        self.backing: list[Postgres | Redis] = []
        self.log_path = self.home / ("standalone.log" if self.executor == "local" else "api-server.log")
        self.session = requests.Session()
        self._token: str | None = None

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.update({k: v for k, v in extra.items() if k != "AIRFLOW_HOME"})
        venv_bin = str(Path(sys.executable).parent)
        env.update({
            MARKER: self.id,
            "AIRFLOW_HOME": str(self.home),
            # What scripts/airflow-env.sh sets for the project's own Airflow home.
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "PYTHONPATH": os.pathsep.join([str(REPO / "include"), str(REPO / "plugins"), str(REPO)]),
            "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            # One secret for every component: the scheduler signs the workers' tokens, the api-server checks them.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            # Parse at once and often: a drill should not wait minutes for its DAGs.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            # Only the runs the drill or test triggers: unpausing the maintenance DAG would otherwise start its
            # latest scheduled run too, which holds the DAG's one active run and races the failover for the PNs.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",  # two shared cores and SQLite
            # On a loaded machine the api-server (one worker, SQLite) can take more than the default 5 s to
            # start a task; a timeout there fails the try before the task even ran.
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            # Not the fixed defaults (8793, 8794): another Airflow on this machine may hold them.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "KAIA_HA_REPORT_DIR": str(self.home / "reports"),
            "KAIA_HA_RETRY_DELAY_SECONDS": extra.get("KAIA_HA_RETRY_DELAY_SECONDS", "1"),
        })
        return env

    # ----- processes ---------------------------------------------------------------------------------------
    def start(self, timeout: float = 300) -> "AirflowEngine":
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            if self.executor == "local":
                self.process = self._spawn("standalone", ["standalone"])  # migrates the new database itself
            else:
                self._start_celery()
            self._wait_up(timeout)
            self.ensure_pool(*POOL)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        with (self.home / f"{name}.log").open("wb") as log:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(["airflow", *command], env=env or self.env, cwd=REPO, start_new_session=True,
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.components[name] = process
        return process

    def _start_celery(self) -> None:
        postgres, redis = Postgres(self.env), Redis(self.env)
        self.backing = [postgres, redis]
        postgres.start()
        redis.start()
        self.env.update(celery_settings(postgres.url, redis.url))
        self.env.update({
            "AIRFLOW__CORE__PARALLELISM": "8",  # two workers of four slots (no SQLite to spare any more)
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
        })
        migrate = subprocess.run(["airflow", "db", "migrate"], env=self.env, cwd=REPO, capture_output=True, text=True)
        if migrate.returncode:
            raise EngineError(f"airflow db migrate failed ({migrate.returncode}):\n{migrate.stderr[-3000:]}")
        for name, command in CELERY_COMPONENTS.items():
            if name in WORKERS:
                # Each worker names itself (TaskInstance.hostname), so a run shows which worker ran each task; the
                # logs are on this one disk, so the workers serve none. Each has a home and scratch of its own: a
                # task that counted on another task's local files fails here, as it would on two machines.
                scratch = self.home / name / "tmp"
                scratch.mkdir(parents=True, exist_ok=True)
                env = {**self.env, "KAIA_HA_WORKER_NAME": name, "HOME": str(scratch.parent), "TMPDIR": str(scratch),
                       "KAIA_HA_REPORT_DIR": str(scratch.parent / "reports"),  # used only without a durable store
                       "AIRFLOW__CORE__HOSTNAME_CALLABLE": "drill.hostname.worker_name"}
                command = [*command, "--celery-hostname", f"{name}@%h", "--skip-serve-logs"]
                self._spawn(name, command, env)
            else:
                self._spawn(name, command)
        self.process = self.components["api-server"]

    def alive(self) -> bool:
        return bool(self.components) and all(p.poll() is None for p in self.components.values())

    def _workers_ready(self) -> bool:
        """Every Celery worker started has said it is ready (standalone has none)."""
        started = [name for name in self.components if name in WORKERS]
        return all(b" ready." in (self.home / f"{name}.log").read_bytes() for name in started)

    def _wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.components.items():
                if process.poll() is not None:
                    raise EngineError(f"airflow {name} exited ({process.returncode}); log: {self.home}/{name}.log\n"
                                      f"{self.tail(name=name)}")
            try:
                health = self.session.get(f"{self.url}/api/v2/monitor/health", timeout=5)
                if health.ok and self.password_file().exists() and all(
                        (health.json().get(c) or {}).get("status") == "healthy"
                        for c in ("scheduler", "dag_processor", "triggerer")) and self._workers_ready():
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise EngineError(f"Airflow not up after {timeout:.0f}s; log: {self.log_path}\n{self.tail()}")

    def tail(self, lines: int = 40, name: str | None = None) -> str:
        path = self.home / f"{name}.log" if name else self.log_path
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ours(self) -> list[int]:
        """Every live process started by this engine: found by the marker in its environment."""
        needle = f"{MARKER}={self.id}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    if needle in (proc / "environ").read_bytes().split(b"\0"):
                        pids.append(int(proc.name))
                except OSError:
                    continue
        return pids

    def stop(self, grace: float = 20) -> None:
        if not self.components and not self.backing:
            return
        for process in self.components.values():
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for process in self.components.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for service in self.backing:  # after Airflow: nothing writes to them any more
            service.stop()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.ours():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while self.ours() and time.monotonic() < deadline:
                time.sleep(0.2)
        for process in self.components.values():
            if process.poll() is None:
                process.kill()
            process.wait()
        self.components, self.backing, self.process = {}, [], None

    def __enter__(self) -> "AirflowEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----- login -------------------------------------------------------------------------------------------
    def password_file(self) -> Path:
        return Path(self.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])

    def login(self) -> tuple[str, str]:
        """The admin login the simple auth manager generated (what the UI asks for)."""
        users = json.loads(self.password_file().read_text())
        return ("admin", users["admin"]) if "admin" in users else next(iter(users.items()))

    @property
    def token(self) -> str:
        if self._token is None:
            user, password = self.login()
            r = self.session.post(f"{self.url}/auth/token", json={"username": user, "password": password}, timeout=30)
            if not r.ok:
                raise EngineError(f"POST /auth/token -> {r.status_code}: {r.text[:300]}")
            self._token = r.json()["access_token"]
        return self._token

    # ----- REST --------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        r = self.session.request(method, f"{self.url}/api/v2{path}", headers=headers, timeout=60, **kwargs)
        if not r.ok:
            raise EngineError(f"{method} /api/v2{path} -> {r.status_code}: {r.text[:500]}")
        return r

    def get(self, path: str, **params) -> dict:
        return self.request("GET", path, params=params).json()

    def post(self, path: str, body: dict) -> dict:
        return self.request("POST", path, json=body).json()

    def patch(self, path: str, body: dict) -> dict:
        return self.request("PATCH", path, json=body).json()

    def wait_parsed(self, dag_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get(f"/dags/{dag_id}")
            except EngineError as exc:
                if time.monotonic() > deadline:
                    errors = self.get("/importErrors").get("import_errors", [])
                    raise EngineError(f"{dag_id} not parsed after {timeout:.0f}s: {exc}; "
                                      f"import errors: {errors}") from None
            time.sleep(1)

    def ensure_pool(self, name: str, slots: int, description: str) -> None:
        try:
            self.patch(f"/pools/{name}", {"name": name, "slots": slots, "description": description})
        except EngineError:
            self.post("/pools", {"name": name, "slots": slots, "description": description})

    def unpause(self, dag_id: str) -> None:
        self.wait_parsed(dag_id)
        self.patch(f"/dags/{dag_id}", {"is_paused": False})

    def pause(self, dag_id: str) -> None:
        self.patch(f"/dags/{dag_id}", {"is_paused": True})

    def hitl(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict:
        """The question a waiting task asks (*Required actions* in the UI): subject, body, options."""
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails")

    def respond(self, dag_id: str, run_id: str, task_id: str, option: str, map_index: int = -1) -> dict:
        """Answer it as the UI does (the operator's button)."""
        return self.patch(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails",
                          {"chosen_options": [option], "params_input": {}})

    def pages(self, path: str, field: str, **params) -> list[dict]:
        """Every item of a listing: the API gives at most ``[api] maximum_page_limit`` (100) a page."""
        items: list[dict] = []
        while True:
            page = self.get(path, limit=100, offset=len(items), **params)
            items += page[field]
            if not page[field] or len(items) >= page["total_entries"]:
                return items

    def runs(self, dag_id: str) -> dict[str, dict]:
        """Every run of the DAG by run id (state, conf, dates)."""
        return {r["dag_run_id"]: r for r in self.pages(f"/dags/{dag_id}/dagRuns", "dag_runs")}

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        run = self.post(f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.pages(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", "task_instances")

    def wait(self, dag_id: str, run_id: str, timeout: float = 600,
             on_progress: Callable[[list[dict]], None] | None = None, poll: float = 2) -> str:
        """The run's final state (success or failed); ``on_progress`` sees the task instances at each poll."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.run(dag_id, run_id)["state"]
            if on_progress:
                on_progress(self.task_instances(dag_id, run_id))
            if state in FINISHED:
                return state
            if time.monotonic() > deadline:
                raise EngineError(f"{dag_id} {run_id} still {state} after {timeout:.0f}s")
            time.sleep(poll)

    def report(self, dag_id: str, run_id: str, form: str = "markdown") -> str:
        """A run's report from the durable store, through the Report tab's app (``/kaia-ha/reports``)."""
        r = self.session.get(f"{self.url}/kaia-ha/reports/{dag_id}/{quote(run_id, safe='')}/{form}",
                             headers={"Authorization": f"Bearer {self.token}"}, timeout=60)
        if not r.ok:
            raise EngineError(f"report of {dag_id} {run_id} -> {r.status_code}: {r.text[:300]}")
        return r.text

    def hosts(self, dag_id: str, run_id: str) -> dict[str, int]:
        """How many of the run's task instances each worker ran (TaskInstance.hostname)."""
        counts: dict[str, int] = {}
        for ti in self.task_instances(dag_id, run_id):
            if ti.get("hostname"):
                counts[ti["hostname"]] = counts.get(ti["hostname"], 0) + 1
        return dict(sorted(counts.items()))

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        body = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                        full_content="true", map_index=map_index)
        return log_text(body.get("content", []))
