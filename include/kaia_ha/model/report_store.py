"""Where run reports live: one place the ``report`` tasks write to and the UI's Report tab reads from.

``KAIA_HA_REPORT_URL`` names the durable store, e.g. ``s3://bucket/kaia-ha-reports`` (reached with the Airflow
connection ``KAIA_HA_REPORT_CONN_ID``, default ``kaia_aws``, the project's AWS connection); unset, it is the local
folder ``KAIA_HA_REPORT_DIR`` (default ``$AIRFLOW_HOME/reports``) as ``file://``, seen only by the machine that
wrote it. A run's report is ``<base>/<dag_id>/<run id made file-safe>.json`` and ``.md``. Pure: reads os.environ only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

URL_ENV, CONN_ENV, DIR_ENV = "KAIA_HA_REPORT_URL", "KAIA_HA_REPORT_CONN_ID", "KAIA_HA_REPORT_DIR"
DEFAULT_CONN_ID = "kaia_aws"  # the project's AWS connection (inventory.example.yaml, docker-compose.yaml)
SCHEMES = ("file", "s3")
_DAG_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # Airflow's DAG id characters; no leading dot, no slash


@dataclass(frozen=True)
class Store:
    """The base URL (no trailing slash) and the Airflow connection to reach it (None for local files)."""

    url: str
    conn_id: str | None

    @property
    def local(self) -> bool:
        return urlsplit(self.url).scheme == "file"

    def folder(self, dag_id: str) -> str:
        return f"{self.url}/{dag_folder(dag_id)}"

    def locate(self, dag_id: str, run_id: str) -> dict[str, str]:
        """``{"json": url, "markdown": url}`` of a run's report; ValueError for a DAG id or run id that could
        name anything outside ``<base>/<dag_id>/``."""
        stem, folder = file_name(run_id), self.folder(dag_id)
        if not stem.strip("."):
            raise ValueError(f"run id {run_id!r} names no report")
        return {"json": f"{folder}/{stem}.json", "markdown": f"{folder}/{stem}.md"}


def store(env: dict[str, str] | None = None) -> Store:
    env = os.environ if env is None else env
    url = (env.get(URL_ENV) or "").strip().rstrip("/")
    if not url:
        base = env.get(DIR_ENV) or Path(env.get("AIRFLOW_HOME") or ".") / "reports"
        return Store("file://" + str(Path(base).absolute()).rstrip("/"), None)
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or (parts.scheme == "s3" and not parts.netloc):
        raise ValueError(f"{URL_ENV}={url!r}: must be s3://bucket/prefix or file:///absolute/path")
    if parts.scheme == "file":
        return Store(url, None)
    return Store(url, (env.get(CONN_ENV) or "").strip() or DEFAULT_CONN_ID)


def file_name(run_id: str) -> str:
    """The run id made file-safe: letters, digits, ``-_.``; anything else (``/``, ``:``, ``+``) becomes ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)


def dag_folder(dag_id: str) -> str:
    if not _DAG_ID.fullmatch(dag_id):
        raise ValueError(f"DAG id {dag_id!r} is not a plain name")
    return dag_id


def local_path(url: str) -> Path:
    """The file system path of a ``file://`` URL (written unquoted, as ``store`` makes them)."""
    return Path(urlsplit(url).path)
