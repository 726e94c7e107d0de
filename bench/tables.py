"""Markdown tables for the README from the benchmarks' JSON (so no figure is copied by hand).

    .venv/bin/python bench/tables.py [.artifacts/bench]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import OUT

ORDER = ["failover_rto", "failover_standby_rto", "maintenance_downtime", "dag_parse", "maintenance_scale", "watchdog",
         "watchdog_soak"]


def render(data: dict) -> str:
    load = data["load"]["1min_during"]
    m = data["machine"]
    command = data.get("command") or f".venv/bin/python bench/{data['benchmark']}.py"
    head = (f"`{command}` — {data['date'][:16].replace('T', ' ')} UTC, {m['cores']} cores ({m['cpu']}), "
            f"1-min load average during the runs {load['median']:.1f} (min {load['min']:.1f}, max {load['max']:.1f})"
            + ("" if data.get("complete", True) else " — INCOMPLETE (interrupted)"))
    failed = sum(1 for res in data["results"].values() for r in res["runs"] if not r.get("ok"))
    tail = f"\n\n{failed} run(s) failed: see `.artifacts/bench/{data['benchmark']}.log`." if failed else ""
    return f"{head}\n\nmedian (min-max, runs)\n\n{data['table']}{tail}\n"


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    for name in ORDER:
        path = folder / f"{name}.json"
        if path.exists():
            print(f"### {name}\n\n{render(json.loads(path.read_text()))}")


if __name__ == "__main__":
    main()
