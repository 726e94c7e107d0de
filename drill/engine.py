"""Airflow for real: ``airflow standalone`` (api-server, scheduler, dag-processor, triggerer) in an Airflow
home of its own, driven through the REST API (``/api/v2``) the way the UI drives it.

The engine tests (``tests/engine``), ``python -m drill`` and ``make demo`` all start Airflow with this module.
Every process it starts carries a marker in its environment; ``stop()`` ends them all by that marker
(task processes run in process groups of their own, so killing the standalone group is not enough).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import requests

REPO = Path(__file__).resolve().parent.parent
POOL = ("kaia_pn_downtime", 1, "Kaia: one kpnd stop at a time")  # as scripts/bootstrap.sh and the compose init
FINISHED = {"success", "failed"}
MARKER = "KAIA_HA_ENGINE_ID"


class EngineError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def __init__(self, home: Path, extra_env: dict[str, str] | None = None, port: int | None = None):
        self.home = Path(home)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.id = uuid.uuid4().hex
        self.env = self._env(extra_env or {})
        self.process: subprocess.Popen | None = None
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
        self.log_path = self.home / "standalone.log"
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(["airflow", "standalone"], env=self.env, cwd=REPO, start_new_session=True,
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_up(timeout)  # standalone migrates the new database itself
            self.ensure_pool(*POOL)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineError(f"airflow standalone exited ({self.process.returncode}); log: {self.log_path}\n"
                                  f"{self.tail()}")
            try:
                health = self.session.get(f"{self.url}/api/v2/monitor/health", timeout=5)
                if health.ok and self.password_file().exists() and all(
                        (health.json().get(c) or {}).get("status") == "healthy"
                        for c in ("scheduler", "dag_processor", "triggerer")):
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise EngineError(f"Airflow not up after {timeout:.0f}s; log: {self.log_path}\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
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
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.ours():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while self.ours() and time.monotonic() < deadline:
                time.sleep(0.2)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process = None

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

    def runs(self, dag_id: str) -> dict[str, dict]:
        """Every run of the DAG by run id (state, conf, dates)."""
        return {r["dag_run_id"]: r for r in self.get(f"/dags/{dag_id}/dagRuns", limit=1000)["dag_runs"]}

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        run = self.post(f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=1000)["task_instances"]

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

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        body = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                        full_content="true", map_index=map_index)
        return log_text(body.get("content", []))
