"""What every benchmark shares: run a measurement N times, median and spread, a table, JSON.

    bench = Bench("failover_rto", params={...})
    bench.repeat("pre-taken", runs, once, "pretaken")     # once() returns {"figure": seconds, ...}
    bench.finish([("rto_s", "RTO (s)")])                   # prints the table, writes .artifacts/bench/<name>.json

Airflow and the cell log a lot to stdout; while a benchmark measures, both go to
``.artifacts/bench/<name>.log`` and only the results reach the terminal.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / ".artifacts" / "bench"
sys.path[:0] = [str(REPO / "tests"), str(REPO)]  # cellkit (the DAG tests' Cell and AirflowRunner), simcell


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kib / 2**20, 1),
            "python": platform.python_version(),
            "kernel": platform.release()}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def spread(values: list[float]) -> dict:
    """Median and min-max of the runs that produced a figure (None for runs that did not)."""
    got = [v for v in values if v is not None]
    if not got:
        return {"median": None, "min": None, "max": None, "runs": 0}
    return {"median": round(statistics.median(got), 3), "min": round(min(got), 3), "max": round(max(got), 3),
            "runs": len(got)}


def fmt(s: dict) -> str:
    if not s or s.get("median") is None:
        return "-"
    return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f}, n={s['runs']})"


@contextlib.contextmanager
def quiet(log_path: Path):
    """fd-level redirect of stdout/stderr (Airflow's log handlers hold the original streams)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def say(text: str) -> None:
    print(text, flush=True)


# ----- a cell of N cloud core cells ---------------------------------------------------------------------------
def cloud_cells_up(cell, n: int) -> float:
    """``python -m simcell up --cloud-cells n`` for ``cell`` (a cellkit.Cell; instant profile), its env read; the
    seconds it took. The caller owns ``cell.down()``, also when this raises (a half-seeded cell)."""
    import subprocess

    t0 = time.monotonic()
    # Not cell.up(): its 5 min CLI timeout is too short for seeding 20 cells on 2 cores.
    up = subprocess.run([sys.executable, "-m", "simcell", "up", "--cloud-cells", str(n), "--timeout", "1800"],
                        env=cell.base_env, cwd=REPO, capture_output=True, text=True, timeout=1900)
    if up.returncode != 0:
        raise RuntimeError(f"simcell up --cloud-cells {n} failed: {up.stdout[-500:]} {up.stderr[-2000:]}")
    cell.env = cell.read_env()
    return round(time.monotonic() - t0, 1)


CLK = os.sysconf("SC_CLK_TCK")


def cell_processes(state_dir: Path) -> dict:
    """The cell's processes now: count, sshd count, RSS (MiB), CPU seconds (own + reaped children)."""
    marker = f"SIMCELL_OWNER={state_dir}".encode()
    count = sshd = rss_kib = ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
            # sshd rewrites its environ and argv (setproctitle); its title still names its config in the state dir
            if (marker not in environ.split(b"\0")
                    and str(state_dir).encode() not in Path(f"/proc/{entry}/cmdline").read_bytes()):
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
            status = Path(f"/proc/{entry}/status").read_text()
            rss_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
            count += 1
            sshd += "sshd" in stat[stat.index("(") + 1:stat.rindex(")")]
        except (OSError, ValueError):
            continue
    return {"processes": count, "sshd": sshd, "rss_mib": round(rss_kib / 1024), "cpu_s": round(ticks / CLK, 1)}


# ----- a DAG run's tasks --------------------------------------------------------------------------------------
def run_steps(dag_id: str, run_id: str) -> list[dict]:
    """Every task instance of the run that succeeded, from the metadata DB (the reports' timelines record only
    the project's own steps, not sensors and provider operators): task, t_start, t_end (from the run's
    start), seconds; in start order."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        dr = session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id).one()
        t0 = dr.start_date.timestamp()
        steps = [{"task": ti.task_id, "t_start": round(ti.start_date.timestamp() - t0, 2),
                  "t_end": round(ti.end_date.timestamp() - t0, 2),
                  "seconds": round((ti.end_date - ti.start_date).total_seconds(), 2)}
                 for ti in dr.get_task_instances(session=session)
                 if getattr(ti.state, "value", ti.state) == "success" and ti.start_date and ti.end_date]
    return sorted(steps, key=lambda s: s["t_start"])


def critical_path(dag, steps: list[dict], last: str) -> list[str]:
    """The chain that decided when ``last`` could start: from ``last`` back, each task's upstream that ended last."""
    ends = {s["task"]: s["t_end"] for s in steps}
    path = [last]
    while True:
        ups = [u for u in dag.get_task(path[-1]).upstream_task_ids if u in ends]
        if not ups:
            return path[::-1]
        path.append(max(ups, key=ends.get))


def path_figures(rto: float, steps: list[dict], path: list[str]) -> dict:
    """The critical path's tasks and their summed durations; overhead = RTO minus that sum, split into
    idle (no task running: scheduling, task start-up) and serialized (a task off the path was running
    while the path waited: dag.test() runs one task at a time)."""
    on_path = [s for s in steps if s["task"] in path]
    path_sum = sum(s["seconds"] for s in on_path)
    busy, reach = 0.0, 0.0  # the union of all task intervals up to the RTO
    for s in sorted(steps, key=lambda s: s["t_start"]):
        start, end = max(s["t_start"], reach), min(s["t_end"], rto)
        if end > start:
            busy += end - start
            reach = end
    idle = rto - busy
    return {"rto_s": rto, "critical_path_s": round(path_sum, 2), "overhead_s": round(rto - path_sum, 2),
            "idle_s": round(idle, 2), "serialized_s": round(rto - path_sum - idle, 2),
            "critical_path": [f"{s['task']} {s['seconds']:.1f}" for s in on_path], "steps": steps}


class Bench:
    def __init__(self, name: str, params: dict | None = None, notes: list[str] | None = None):
        self.name = name
        self.params = params or {}
        self.notes = notes or []
        self.results: dict[str, dict] = {}
        self.started = time.time()
        OUT.mkdir(parents=True, exist_ok=True)
        self.log = OUT / f"{name}.log"
        self.log.write_text("")
        self.load_start = load()
        self.command = " ".join([".venv/bin/python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
        self.date = None  # set when the last run ends

    @classmethod
    def load(cls, name: str) -> "Bench":
        """A benchmark's saved runs, to derive figures again from their raw steps (``--rescore``)."""
        data = json.loads((OUT / f"{name}.json").read_text())
        bench = cls.__new__(cls)
        bench.name, bench.params, bench.notes, bench.results = name, data["params"], data["notes"], data["results"]
        bench.started, bench.load_start = time.time() - data["duration_s"], data["load"]["start"]
        bench.log = OUT / f"{name}.log"
        bench.command = data.get("command") or f".venv/bin/python bench/{name}.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in data["params"].items() if k in ("cells", "runs", "time_scale"))
        bench.date, bench.load_end = data["date"], data["load"]["end"]
        return bench

    def repeat(self, label: str, runs: int, fn, *args, **kwargs) -> list[dict]:
        """``fn(*args, **kwargs)`` ``runs`` times; each returns a dict of figures (and any detail). A run that
        raises is recorded as failed (with its error) and the others still count."""
        out = self.results.setdefault(label, {"runs": []})["runs"]
        for i in range(runs):
            before, t0 = load(), time.monotonic()
            try:
                with quiet(self.log):
                    figures = fn(*args, **kwargs)
                figures = {"ok": True, **figures}
            except Exception as exc:  # keep going: a failed run is a result too
                with open(self.log, "a") as f:
                    f.write(traceback.format_exc())
                figures = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            figures |= {"wall_s": round(time.monotonic() - t0, 2), "load_before": before, "load_after": load()}
            out.append(figures)
            self.save()  # after every run: an interrupted benchmark keeps what it measured
            say(f"  {self.name} {label} run {i + 1}/{runs}: " + ", ".join(
                f"{k}={v}" for k, v in figures.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) or k == "error"))
        return out

    def stats(self, label: str, metric: str) -> dict:
        return spread([r.get(metric) for r in self.results[label]["runs"] if r.get("ok")])

    def save(self, columns: list[tuple[str, str]] | None = None) -> Path:
        """Write ``.artifacts/bench/<name>.json``: every run, and with ``columns`` the stats and the table."""
        table = ""
        if columns:
            for label, res in self.results.items():
                res["stats"] = {metric: self.stats(label, metric) for metric, _ in columns}
            lines = ["| | " + " | ".join(title for _, title in columns) + " |", "|---" * (len(columns) + 1) + "|"]
            lines += [f"| {label} | " + " | ".join(fmt(res["stats"][m]) for m, _ in columns) + " |"
                      for label, res in self.results.items()]
            table = "\n".join(lines)
        loads = [r[k][0] for res in self.results.values() for r in res["runs"] for k in ("load_before", "load_after")]
        self.data = {
            "benchmark": self.name,
            "date": self.date or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": self.command, "complete": bool(columns), "machine": machine(), "params": self.params,
            "notes": self.notes,
            "load": {"start": self.load_start, "end": getattr(self, "load_end", None) or load(),
                     "1min_during": spread(loads)},
            "duration_s": round(time.time() - self.started, 1), "columns": dict(columns or []), "table": table,
            "results": self.results,
        }
        path = OUT / f"{self.name}.json"
        path.write_text(json.dumps(self.data, indent=2, default=str))
        return path

    def finish(self, columns: list[tuple[str, str]]) -> Path:
        """Print one row per label (median (min-max, n) of each metric) and write the JSON."""
        path = self.save(columns)
        data = self.data
        say(f"\n## {self.name}  ({data['date']}, {data['machine']['cores']} cores, 1-min load during runs "
            f"{fmt(data['load']['1min_during'])})\n"
            + data["table"] + f"\n-> {path.relative_to(REPO)} (log: {self.log.relative_to(REPO)})")
        return path
