"""The validator keys are nowhere but on the hosts and in Secrets Manager: one scan, used after every run.

``LeakScan`` learns the nodekey and bls-nodekey of every CN (from the hosts, before any fault is injected, and
from the Secrets Manager backups), watches the process command lines while a run goes (``watch()``), and
``assert_clean()`` looks for each key (hex in either case, so also with ``0x``; base64 of its bytes and of its
text, at every alignment) in the task logs, the Airflow home's ``logs/``, the whole metadata database (every
column of every table, so ``xcom`` and ``rendered_task_instance_fields``, and the file's raw bytes), the
reports, the command lines seen and the cell's AWS call log. A hit names where, never the key.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

CN_KEY_FILES = ("nodekey", "bls-nodekey")


def needles(hex_key: str) -> list[bytes]:
    """Every spelling of one key we look for. Hex covers ``0x``-prefixed too; base64 at the three alignments
    covers a key inside a longer encoded blob."""
    hex_key = hex_key.strip().lower()
    found = [hex_key.encode(), hex_key.upper().encode()]
    for data in (bytes.fromhex(hex_key), hex_key.encode()):
        for shift in range(3):
            encoded = base64.b64encode(b"\0" * shift + data)
            whole = (shift + len(data)) // 3 * 4  # groups made of key bytes only
            core = encoded[4 if shift else 0: whole]
            found += [core, core.replace(b"+", b"-").replace(b"/", b"_")]
    return found


def _hit(keys: dict[str, list[bytes]], data: bytes) -> str | None:
    """The name of the key (e.g. ``cn-aws-1 nodekey``) found in ``data``, else None."""
    for name, forms in keys.items():
        if any(form in data for form in forms):
            return name
    return None


class CmdlineWatch:
    """Every distinct process command line seen while it runs (polled: a short-lived ``ssh`` or ``bash -c`` is
    caught if it lives a poll interval)."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.seen: dict[bytes, str] = {}  # cmdline -> "pid N (program)"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                line = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if line and line not in self.seen:
                program = Path(line.split(b"\0")[0].decode(errors="replace")).name
                self.seen[line] = f"pid {proc.name} ({program})"

    def __enter__(self):
        def loop():
            while not self._stop.is_set():
                self.poll()
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=loop, daemon=True, name="cmdline-watch")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def scan_files(keys, paths, label: str) -> list[str]:
    hits = []
    for path in paths:
        if path.is_file():
            name = _hit(keys, path.read_bytes())
            if name:
                hits.append(f"{name} in {label} {path}")
    return hits


def scan_sqlite(keys, db: Path) -> tuple[list[str], dict[str, int]]:
    """Every column of every row of every table (named in a hit), then the file's bytes (free pages, WAL)."""
    hits, rows = [], {}
    # A plain connection, only reading: a read-only one cannot open a WAL database that Airflow holds open.
    conn = sqlite3.connect(db, timeout=60)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            cursor = conn.execute(f'SELECT * FROM "{table}"')
            columns = [d[0] for d in cursor.description]
            rows[table] = 0
            for row in cursor:
                rows[table] += 1
                for column, value in zip(columns, row):
                    if value is None:
                        continue
                    data = value if isinstance(value, bytes) else str(value).encode()
                    name = _hit(keys, data)
                    if name:
                        hits.append(f"{name} in the metadata DB, table {table}, column {column}")
    finally:
        conn.close()
    hits += scan_files(keys, [db, Path(f"{db}-wal"), Path(f"{db}-journal")], "the metadata DB file")
    return hits, rows


class LeakScan:
    """One cell's keys and every place they must not reach. Build it before injecting faults (it reads the
    keys over SSH)."""

    def __init__(self, cell, runner, keys: dict[str, str] | None = None):
        self.cell, self.runner = cell, runner
        self.keys = {name: needles(value) for name, value in (keys if keys is not None else self._read_keys()).items()}
        assert self.keys, "no key to look for: the scan would prove nothing"
        self.cmdlines = CmdlineWatch()

    def _read_keys(self) -> dict[str, str]:
        from kaia_ha.model.inventory import load_inventory

        found: dict[str, str] = {}
        inventory = load_inventory(self.cell.env["KAIA_HA_INVENTORY"])
        secrets = self.cell.client("secretsmanager")
        for cell in inventory.cells:
            for cn in cell.cns:
                for file in CN_KEY_FILES:  # what the host holds (a standby's own keys too)
                    out = self.cell.ssh(cn.name, f"sudo cat {cn.data_dir}/klay/{file}", check=False)
                    if out.returncode == 0 and out.stdout.strip():
                        found[f"{cn.name} {file}"] = out.stdout.strip()
                try:  # what the backup holds (the host may be fenced by now)
                    secret = json.loads(secrets.get_secret_value(SecretId=cn.nodekey_secret_id)["SecretString"])
                except secrets.exceptions.ResourceNotFoundException:
                    continue
                found[f"{cn.name} nodekey (backup)"] = secret["nodekey"]
                if secret.get("bls_nodekey"):
                    found[f"{cn.name} bls-nodekey (backup)"] = secret["bls_nodekey"]
        return found

    @contextmanager
    def watch(self):
        """Around a run: command lines are seen only while their process lives."""
        with self.cmdlines:
            yield self

    def findings(self) -> tuple[list[str], dict]:
        hits: list[str] = []
        name = _hit(self.keys, getattr(self.runner, "log_text", "").encode())
        if name:
            hits.append(f"{name} in the task log records of the run (runner.log_text)")
        home = Path(os.environ["AIRFLOW_HOME"])
        logs = sorted((home / "logs").rglob("*"))
        hits += scan_files(self.keys, logs, "the task log file")
        reports = sorted(self.runner.report_dir.rglob("*"))
        hits += scan_files(self.keys, reports, "the report")
        hits += scan_files(self.keys, [self.cell.state_dir / "aws-calls.jsonl"], "the AWS call log")
        for line, where in self.cmdlines.seen.items():
            name = _hit(self.keys, line)
            if name:
                hits.append(f"{name} on the command line of {where}")
        rows: dict[str, int] = {}
        from airflow.configuration import conf

        url = conf.get("database", "sql_alchemy_conn")
        if url.startswith("sqlite:///"):
            db_hits, rows = scan_sqlite(self.keys, Path(url[len("sqlite:///"):]))
            hits += db_hits
        scanned = {"keys": len(self.keys), "log records": bool(getattr(self.runner, "log_text", "")),
                   "log files": len(logs),
                   "report files": len([p for p in reports if p.is_file()]), "command lines": len(self.cmdlines.seen),
                   "xcom rows": rows.get("xcom", 0), "db tables": len(rows)}
        return hits, scanned

    def assert_clean(self) -> dict:
        """Fail naming every place a key was found (never the key); also fail if there was nothing to scan."""
        hits, scanned = self.findings()
        assert not hits, "validator keys leaked:\n  " + "\n  ".join(sorted(set(hits)))
        assert (scanned["log records"] and scanned["xcom rows"] and scanned["db tables"]
                and scanned["report files"]), scanned
        return scanned
