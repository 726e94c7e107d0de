"""The leak scan itself finds a key in each spelling and each place, and never prints it."""

from __future__ import annotations

import base64
import sqlite3
import subprocess
import sys
import time

import pytest

from leakscan import CmdlineWatch, _hit, needles, scan_files, scan_sqlite

KEY = "5f" * 16 + "a0" * 16  # made up, not a key of the cell
KEYS = {"cn-x nodekey": needles(KEY)}


@pytest.mark.parametrize("spelling", [
    KEY, KEY.upper(), "0x" + KEY, base64.b64encode(bytes.fromhex(KEY)).decode(),
    base64.urlsafe_b64encode(bytes.fromhex(KEY)).decode(), base64.b64encode(KEY.encode() + b"\n").decode(),
    base64.b64encode(b"{'k': '" + KEY.encode() + b"'}").decode(),  # inside a longer blob, off alignment
])
def test_every_spelling_is_found(spelling):
    assert _hit(KEYS, f"before {spelling} after".encode()) == "cn-x nodekey"


def test_a_near_miss_is_not_a_hit():
    assert _hit(KEYS, (KEY[:-2] + "ff").encode()) is None


def test_hits_name_the_place_not_the_key(tmp_path):
    (tmp_path / "task.log").write_text(f"installing {KEY}")
    db = tmp_path / "airflow.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE xcom (key TEXT, value BLOB)")
        conn.execute("INSERT INTO xcom VALUES ('return_value', ?)", (f'{{"k": "{KEY}"}}'.encode(),))
    hits = scan_files(KEYS, [tmp_path / "task.log"], "the task log file")
    db_hits, rows = scan_sqlite(KEYS, db)
    assert rows == {"xcom": 1}
    assert any("table xcom, column value" in h for h in db_hits)
    assert hits and all(KEY not in h and KEY.upper() not in h for h in hits + db_hits)


def test_a_key_on_a_short_lived_command_line_is_seen():
    with CmdlineWatch() as watch:
        subprocess.run([sys.executable, "-c", "import time; time.sleep(0.3)", KEY], check=True)
        time.sleep(0.05)
    found = [where for line, where in watch.seen.items() if _hit(KEYS, line)]
    assert found and "python" in found[0] and KEY not in found[0]
