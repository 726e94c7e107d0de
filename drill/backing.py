"""The Celery engine's backing services on loopback, from Debian's packages: PostgreSQL (the metadata database and
Celery's result backend) and Redis (Celery's broker). ``scripts/bootstrap.sh`` installs both; each engine starts
its own, in a folder of its own, on free ports, and removes it on stop.

PostgreSQL refuses to run as root: as root the server runs as Debian's ``postgres`` user (``runuser``).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class BackingError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(ready, what: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BackingError(f"{what} exited ({process.returncode}); log: {log}\n{log.read_text(errors='replace')}")
        if ready():
            return
        time.sleep(0.2)
    raise BackingError(f"{what} not ready after {timeout:.0f}s; log: {log}")


def _stop(process: subprocess.Popen | None, sig: int, grace: float = 20) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Postgres:
    """One PostgreSQL cluster with a database ``airflow`` owned by the superuser ``airflow`` (trust on loopback)."""

    def __init__(self, env: dict[str, str], port: int | None = None):
        self.port = port or free_port()
        self.env = env
        self.dir = Path(tempfile.mkdtemp(prefix="kaia-ha-pg-"))  # outside pytest's 0700 folders: postgres reads it
        self.data, self.log = self.dir / "data", self.dir / "postgres.log"
        self.process: subprocess.Popen | None = None
        self.url = f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/airflow"

    @staticmethod
    def bin(name: str) -> str:
        found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
        if not found:
            raise BackingError(f"PostgreSQL's {name} not found: run scripts/bootstrap.sh "
                               "(it installs Debian's postgresql)")
        return found[-1]

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def start(self, timeout: float = 60) -> "Postgres":
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        initdb = subprocess.run(self._as_owner([self.bin("initdb"), "-D", str(self.data), "-U", "airflow",
                                                "--auth=trust", "-E", "UTF8", "--no-sync"]),
                                env=self.env, cwd=self.dir, capture_output=True, text=True)
        if initdb.returncode:
            raise BackingError(f"initdb failed ({initdb.returncode}): {initdb.stderr[-2000:]}")
        with self.log.open("wb") as log:
            # A throwaway test cluster: no fsync (its data dies with the engine).
            self.process = subprocess.Popen(
                self._as_owner([self.bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.dir),
                                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                                "-c", "full_page_writes=off", "-c", "max_connections=300"]),
                env=self.env, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)  # cwd: the postgres user may not enter the caller's folder
        _wait(self._accepts, "PostgreSQL", self.process, self.log, timeout)
        import psycopg2  # the runtime's driver (requirements.txt)

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="airflow", dbname="postgres")
        try:
            conn.autocommit = True  # CREATE DATABASE runs outside a transaction
            with conn.cursor() as cur:
                cur.execute("CREATE DATABASE airflow")
        finally:
            conn.close()
        return self

    def _accepts(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(host="127.0.0.1", port=self.port, user="airflow", dbname="postgres",
                             connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def stop(self) -> None:
        try:  # the postmaster itself (as root, self.process is runuser, which does not pass the signal on)
            os.kill(int((self.data / "postmaster.pid").read_text().split()[0]), signal.SIGINT)  # fast shutdown
        except (OSError, ValueError, IndexError):
            pass
        _stop(self.process, signal.SIGINT)
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    """One Redis server, nothing persisted."""

    def __init__(self, env: dict[str, str], port: int | None = None):
        self.port = port or free_port()
        self.env = env
        self.dir = Path(tempfile.mkdtemp(prefix="kaia-ha-redis-"))
        self.log = self.dir / "redis.log"
        self.process: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> "Redis":
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(server):
            raise BackingError("redis-server not found: run scripts/bootstrap.sh (installs Debian's redis-server)")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.dir)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        _wait(self._pong, "Redis", self.process, self.log, timeout)
        return self

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        _stop(self.process, signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)
