"""The fault matrix: every AWS action and every SSH step of the DAGs, under every kind of fault, and what a
run under faults must leave behind (nothing made twice, every PN running, no double signing, no key leaked).

One home for the catalogue (``aws_faults``, ``ssh_faults``), for running one DAG under a group of faults
(``fault_run``), for counting what a run made (``made_by_run``) and for writing the matrix (``Matrix``).
Faults of one kind go into one run when they do not interfere (each hits another action, or another command).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from cellkit import REPO, AirflowRunner, Cell
from leakscan import LeakScan

MAINTENANCE, CLOUD, METAL = "kaia_cn_maintenance", "kaia_cn_failover_cloud", "kaia_cn_failover_standby"
FULL = os.environ.get("KAIA_HA_FULL_FAULTS") == "1"
full_sweep = pytest.mark.skipif(not FULL, reason="part of the full fault sweep: make faults (KAIA_HA_FULL_FAULTS=1)")
ARTIFACTS = REPO / ".artifacts"

# How often each fault repeats: enough that botocore's own retry is not the whole story (two throttles in a
# row), and one dropped answer, which is what idempotency has to survive.
AWS_KINDS = {"throttle": 2, "server-error": 2, "drop": 1}  # simcell's AWS drop: performed, the answer lost
SSH_KINDS = {"drop": 1, "drop-after": 1}  # drop: before the command runs; drop-after: it ran, its answer lost
KINDS = [*(f"aws {k}" for k in AWS_KINDS), *(f"ssh {k}" for k in SSH_KINDS)]

# Every AWS action each DAG calls (the non-DryRun calls of a clean run, checked against the call log of every
# run of the full sweep, so a new action without a row fails). The maintenance runs of the sweep find one
# backup missing and one stale, so that they create and update a secret (and alert), and find more images and
# snapshots than retention keeps.
AWS_ACTIONS = {
    MAINTENANCE: ("GetSecretValue", "CreateSecret", "PutSecretValue", "Publish", "DescribeImages", "CreateImage",
                  "DescribeSnapshots", "CreateSnapshot", "DeregisterImage", "DeleteSnapshot"),
    CLOUD: ("GetSecretValue", "DescribeInstances", "DescribeAddresses", "DescribeImages", "DescribeSubnets",
            "DescribeSnapshots",
            "StopInstances", "CreateSnapshot", "CreateTags", "CreateVolume", "DescribeVolumes", "RunInstances",
            "GetConsoleOutput",
            "AttachVolume", "AssociateAddress", "Publish"),
    METAL: ("GetSecretValue", "Publish"),
}

# Every SSH step: (task, host, text of a command only that step runs first on that host). ``*``: whichever
# host runs it (the PN the maintenance rotation picks, the replacement instance that does not exist yet).
SSH_STEPS = {
    MAINTENANCE: (
        ("nodekey_backup", "cn-aws-1", "klay/nodekey"),
        ("nodekey_backup", "cn-aws-1", "kcn attach"),
        ("nodekey_backup", "cn-metal-a", "klay/nodekey"),
        ("cn_image.plan", "cn-aws-1", "cat /etc/kcnd/conf/kcnd.conf"),
        ("cn_image.plan", "cn-aws-1", "kcn version"),
        ("cn_image.plan", "cn-aws-1", "mountpoint -q"),
        ("pn_snapshot.plan", "pn-aws-2", "systemctl is-active kpnd"),
        ("pn_snapshot.plan", "pn-aws-2", "kpn attach"),
        ("pn_snapshot.stop_and_snapshot", "*", "systemctl kill"),
        ("pn_snapshot.stop_and_snapshot", "*", "systemctl stop kpnd"),
        ("pn_snapshot.stop_and_snapshot", "*", "tail -n 300"),
        ("pn_snapshot.stop_and_snapshot", "*", "systemctl start kpnd"),  # started in the stop step
    ),
    CLOUD: (
        ("preflight", "pn-aws-1", "kpnd.conf; printf"),
        ("preflight", "pn-aws-1", "kpn version"),
        ("fence.fence", "cn-aws-1", "systemctl disable kcnd"),
        ("chain_data.fresh_snapshot.stop_kpnd", "pn-aws-1", "systemctl kill"),
        ("chain_data.fresh_snapshot.stop_kpnd", "pn-aws-1", "systemctl stop kpnd"),
        ("chain_data.fresh_snapshot.start_kpnd", "pn-aws-1", "systemctl start kpnd"),
        ("replace.attach_and_mount", "*", "mountpoint -q"),
        ("replace.attach_and_mount", "*", "mount /dev/sdf"),
        ("replace.prune", "*", "-maxdepth 4 -type d"),
        ("replace.prune", "*", "! -name chaindata"),
        ("replace.install_keys", "*", "nodekey.kaia-ha.tmp"),
        ("replace.install_keys", "*", "stat -c %a"),
        ("verify.start_kcnd", "*", "systemctl enable kcnd"),
        ("verify.start_kcnd", "*", "systemctl start kcnd"),
        ("verify.in_sync", "*", "kcn attach"),
    ),
    METAL: (
        ("preflight.check_standby", "cn-metal-b", "kcnd.conf; printf"),
        ("preflight.check_standby", "cn-metal-b", "kcn attach"),
        ("preflight.check_failed_active", "cn-metal-a", "systemctl is-active kcnd; ip -4"),
        ("preflight.check_floating_ip", "cn-metal-b", "ip -4 addr show"),
        ("fence.fence_over_ssh", "cn-metal-a", "systemctl disable kcnd"),
        ("fence.fence_over_ssh", "cn-metal-a", "systemctl stop kcnd"),
        ("fence.fence_over_ssh", "cn-metal-a", "keys-aside"),
        ("fence.fence_over_ssh", "cn-metal-a", "ip addr del"),
        ("fence.verify_fenced", "cn-metal-b", "arping -D"),
        ("takeover.stop_standby", "cn-metal-b", "systemctl stop kcnd"),
        ("takeover.replace_identity", "cn-metal-b", "keys-aside"),
        ("takeover.replace_identity", "cn-metal-b", "nodekey.kaia-ha.tmp"),
        ("takeover.move_floating_ip", "cn-metal-b", "ip addr add"),
        ("takeover.move_floating_ip", "cn-metal-b", "arping -U"),
        ("start.start_standby", "cn-metal-b", "systemctl enable kcnd"),
    ),
}


@dataclass(frozen=True)
class Fault:
    dag_id: str
    target: str  # an AWS action, or ssh:HOST
    kind: str
    times: int = 1
    match: str | None = None
    step: str = ""  # SSH: the task that runs the command

    @property
    def is_ssh(self) -> bool:
        return self.target.startswith("ssh:")

    @property
    def row(self) -> str:
        return f"{self.step}: `{self.match}` on {self.target[4:]}" if self.is_ssh else self.target

    def inject(self, cell: Cell) -> None:
        cell.fault(self.target, "--kind", self.kind, "--times", str(self.times),
                   *(("--match", self.match) if self.match else ()))

    def pending_in(self, pending: dict) -> bool:
        if self.is_ssh:
            return f"{self.kind} {self.match}" in pending.get("ssh_detail", {}).get(self.target[4:], [])
        return bool(pending["aws"].get(self.target))


def aws_faults(dag_id: str, kind: str, actions: tuple[str, ...] | None = None) -> list[Fault]:
    return [Fault(dag_id, a, kind, AWS_KINDS[kind]) for a in actions or AWS_ACTIONS[dag_id]]


def ssh_faults(dag_id: str, kind: str, steps: tuple | None = None) -> list[Fault]:
    return [Fault(dag_id, f"ssh:{host}", kind, SSH_KINDS[kind], match, task)
            for task, host, match in steps or SSH_STEPS[dag_id]]


def faults_of(dag_id: str, kind: str) -> list[Fault]:
    family, _, k = kind.partition(" ")
    return aws_faults(dag_id, k) if family == "aws" else ssh_faults(dag_id, k)


def pick(dag_id: str, *rows: tuple[str, str]) -> list[Fault]:
    """Representative cells of the matrix: ``(kind, AWS action or SSH match)``."""
    out = []
    for kind, what in rows:
        family, _, k = kind.partition(" ")
        if family == "aws":
            assert what in AWS_ACTIONS[dag_id], what
            out += aws_faults(dag_id, k, (what,))
        else:
            steps = tuple(s for s in SSH_STEPS[dag_id] if s[2] == what)
            assert steps, what
            out += ssh_faults(dag_id, k, steps[:1])
    return out


# ----- what a run leaves behind ----------------------------------------------------------------------------
def made_by_run(cell: Cell, run_id: str) -> dict[str, int]:
    """Instances, volumes, images and snapshots (per kind and source volume) tagged with the run's id."""
    ec2 = cell.client("ec2")
    by_run = [{"Name": "tag:kaia:run-id", "Values": [run_id]}]
    instances = [i for r in ec2.describe_instances(Filters=by_run)["Reservations"] for i in r["Instances"]]
    made = {"instances": len(instances), "volumes": len(ec2.describe_volumes(Filters=by_run)["Volumes"]),
            "images": len(ec2.describe_images(Owners=["self"], Filters=by_run)["Images"])}
    for snap in ec2.describe_snapshots(OwnerIds=["self"], Filters=by_run)["Snapshots"]:
        kind = next((t["Value"] for t in snap.get("Tags", []) if t["Key"] == "kaia:kind"), "?")
        key = f"snapshots {kind} of {snap['VolumeId']}"
        made[key] = made.get(key, 0) + 1
    return made


def duplicates(made: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in made.items() if v > 1}


def failure_messages(runner: AirflowRunner, dag_id: str, run_id: str) -> dict[str, str]:
    """Why each failed task failed, as the run's report tells the operator."""
    try:
        report = runner.report(dag_id, run_id)
    except FileNotFoundError:
        return {}
    steps = report.get("timeline") or [s for c in report.get("cells", []) for s in c.get("timeline", [])]
    return {s["task"]: s["outcome"] for s in steps if str(s.get("outcome", "")).startswith("failed")}


@dataclass
class RunOutcome:
    dag_id: str
    group: str
    run_id: str
    state: str
    seconds: float
    made: dict[str, int]
    duplicates: dict[str, int]
    pns_stopped: list[str]
    double_signing_events: list
    failed: dict[str, str]
    retried: dict[str, int]
    leaks: list[str]
    called: list[str]  # the AWS actions the run called (not DryRun)
    rows: list[dict] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.duplicates and not self.pns_stopped and not self.double_signing_events and not self.leaks


def fault_run(cell: Cell, runner: AirflowRunner, dag_id: str, conf: dict | None, faults: list[Fault],
              group: str) -> RunOutcome:
    """Run the DAG with the faults injected, then judge it: which faults were reached, what the run made, every
    PN running, no double signing, and the leak scan (a leak fails here, naming where)."""
    since = len(cell.calls())
    for fault in faults:
        fault.inject(cell)
    began = time.monotonic()
    run_id, state, states = runner.run(dag_id, conf)
    seconds = round(time.monotonic() - began, 1)
    status = cell.status()
    pending = status["pending_faults"]
    cell.fault("--clear")  # before anything of ours calls AWS or SSH again
    calls = cell.calls()[since:]
    leaks, _ = runner.leak_scan.findings()
    made = made_by_run(cell, run_id)
    outcome = RunOutcome(
        dag_id=dag_id, group=group, run_id=run_id, state=str(getattr(state, "value", state)), seconds=seconds,
        made=made,
        duplicates=duplicates(made),
        pns_stopped=[n["name"] for n in status["nodes"] if n["service"] == "kpnd" and not n["running"]],
        double_signing_events=status["double_signing_events"], failed=failure_messages(runner, dag_id, run_id),
        retried={task: tries for (task, _), (_, tries) in states.items() if tries > 1}, leaks=leaks,
        called=sorted({c["action"] for c in calls if not c["dry_run"]}),
    )
    print(f"\nfault run {dag_id} [{group}]: {outcome.state} in {seconds} s; retried {outcome.retried}", flush=True)
    for fault in faults:
        row = {"dag": dag_id, "family": "ssh" if fault.is_ssh else "aws", "row": fault.row, "kind": fault.kind,
               "times": fault.times, "reached": not fault.pending_in(pending),
               "outcome": "success" if outcome.state == "success" else "failed", "duplicates": outcome.duplicates}
        if fault.is_ssh:
            row["tries"] = states.get((fault.step, -1), (None, 0))[1]
        else:
            mine = [c for c in calls if c["action"] == fault.target and not c["dry_run"]]
            row["calls"] = len(mine)
            row["faulted"] = sum(1 for c in mine if c["fault"])
        outcome.rows.append(row)
    return outcome


TASK_RETRIES = 3  # the DAGs' default (core_cell_dag)


def outlasting(faults: list[Fault]) -> dict[str, str]:
    """SSH steps given more faults in one run than they have retries (each try meets the next one): the fault
    outlasts the retries, so the run must fail there, saying where, with nothing half-way. ``{step: host}``."""
    per_step = Counter(f.step for f in faults if f.is_ssh)
    return {f.step: f.target[4:] for f in faults if f.is_ssh and per_step[f.step] > TASK_RETRIES}


def within_retries(faults: list[Fault]) -> list[Fault]:
    """The faults without those a step could not outlast: at most TASK_RETRIES per step."""
    seen: Counter = Counter()
    kept = []
    for fault in faults:
        seen[fault.step] += 1
        if not fault.is_ssh or seen[fault.step] <= TASK_RETRIES:
            kept.append(fault)
    return kept


def assert_ended_well(outcome: RunOutcome, expect: dict[str, int] | None = None, faults: list[Fault] = ()) -> None:
    """Success (or, where a fault outlasts a step's retries, a failure at that step whose message names the host),
    every fault reached, nothing made twice (and what should be made, made), PNs up, no double signing, no leak."""
    doomed = outlasting(list(faults))
    if doomed:
        assert outcome.state == "failed", (outcome.group, "a fault outlasting the retries of", doomed)
        for step, host in doomed.items():
            assert host in outcome.failed.get(step, ""), (step, outcome.failed)  # the report says which host dropped
    else:
        assert outcome.state == "success", (outcome.group, outcome.failed, outcome.retried)
        missed = [r["row"] for r in outcome.rows if not r["reached"]]
        assert not missed, f"faults never reached (the DAG no longer runs this; update the catalogue): {missed}"
    assert not outcome.leaks, "validator keys leaked:\n  " + "\n  ".join(outcome.leaks)  # names places, never keys
    assert outcome.clean, (outcome.duplicates, outcome.pns_stopped, outcome.double_signing_events)
    for what, count in (expect or {}).items():
        assert sum(v for k, v in outcome.made.items() if k.startswith(what)) == count, (what, outcome.made)


# ----- cells -----------------------------------------------------------------------------------------------
@contextmanager
def cell_with_airflow(tmp_path_factory, name: str):
    """A fresh cell, its runner with a leak scan watching every run, and the maintenance DAG run once (key
    backups, a CN image, a PN snapshot): what a failover finds in a well-kept core cell."""
    cell = Cell(tmp_path_factory.mktemp(f"simcell-{name}"))
    cell.up()
    try:
        with AirflowRunner(cell, tmp_path_factory.mktemp(f"reports-{name}")) as runner:
            runner.leak_scan = LeakScan(cell, runner)  # the keys, read before any fault is injected
            yield cell, runner
    finally:
        cell.down()


def pns_running(cell: Cell) -> bool:
    return all(n["running"] for n in cell.status()["nodes"] if n["service"] == "kpnd")


# ----- the matrix ------------------------------------------------------------------------------------------
class Matrix:
    """Collects every run's outcome; ``write`` renders the action x fault table (Markdown and JSON)."""

    def __init__(self):
        self.outcomes: list[RunOutcome] = []
        self.extra: dict[str, list[dict]] = {}

    def add(self, outcome: RunOutcome) -> RunOutcome:
        self.outcomes.append(outcome)
        return outcome

    @staticmethod
    def _cell(row: dict) -> str:
        if not row["reached"]:
            return "not reached"
        # the run's outcome; the step's own try follows
        text = "run ok" if row["outcome"] == "success" else "run FAILED"
        text += f", try {row['tries']}" if "tries" in row else f", {row['calls']} calls ({row['faulted']} faulted)"
        return text + (f", DUPLICATES {row['duplicates']}" if row["duplicates"] else "")

    def markdown(self, runs: list[dict], extra: dict[str, list[dict]]) -> str:
        lines = ["# Fault matrix", "",
                 "Each cell: the outcome of the run the fault was in; for AWS the calls of the action in that run "
                 "(how many got the fault), for SSH the try at which the step that runs the command ended. Faults: "
                 + ", ".join(f"{k} x{t}" for k, t in AWS_KINDS.items())
                 + " (AWS; drop = performed, answer lost); " + ", ".join(f"ssh {k} x{t}" for k, t in SSH_KINDS.items())
                 + " (drop = before the command runs; drop-after = it ran, the answer lost). Runs of the quick "
                   "subset are listed with their group `quick`.", ""]
        rows = [r | {"group": o["group"]} for o in runs for r in o["rows"]]
        for dag_id in (MAINTENANCE, CLOUD, METAL):
            for family, kinds in (("aws", list(AWS_KINDS)), ("ssh", list(SSH_KINDS))):
                mine = [r for r in rows if r["dag"] == dag_id and r["family"] == family]
                if not mine:
                    continue
                lines += [f"## {dag_id}: {'AWS actions' if family == 'aws' else 'SSH steps'}", "",
                          "| " + ("action" if family == "aws" else "step: command on host") + " | "
                          + " | ".join(kinds) + " |",
                          "|---|" + "---|" * len(kinds)]
                for name in dict.fromkeys(r["row"] for r in mine):
                    cells = []
                    for kind in kinds:
                        hit = [r for r in mine if r["row"] == name and r["kind"] == kind]
                        cells.append("; ".join(self._cell(r) + (" (quick)" if r["group"] == "quick" else "")
                                               for r in hit) or "-")
                    lines.append(f"| {name.replace('|', '/')} | " + " | ".join(cells) + " |")
                lines.append("")
        lines += ["## Runs", "", "| DAG | group | run | state | s | made (by run tag) | duplicates | PNs stopped | "
                                 "double signing | leaks | failed | tasks retried (try) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for o in runs:
            failed = "; ".join(f"{t}: {m[:160]}" for t, m in o["failed"].items()).replace("|", "/").replace("\n", " ")
            lines.append(f"| {o['dag_id']} | {o['group']} | {o['run_id']} | {o['state']} | {o['seconds']} | "
                         f"{o['made'] or '-'} | {o['duplicates'] or 'none'} | {o['pns_stopped'] or 'none'} | "
                         f"{len(o['double_signing_events'])} | {len(o['leaks']) or 'none'} | {failed or '-'} | "
                         f"{o['retried'] or '-'} |")
        for title, table_rows in extra.items():
            if table_rows:
                columns = list(table_rows[0])
                lines += ["", f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                lines += ["| " + " | ".join(str(r.get(c, "")).replace("|", "/").replace("\n", " ") for c in columns)
                          + " |" for r in table_rows]
        return "\n".join(lines) + "\n"

    def write(self, stem: str = "fault-matrix") -> Path:
        """Merged with what an earlier session wrote: a group run again replaces its earlier outcome."""
        ARTIFACTS.mkdir(exist_ok=True)
        json_path, path = ARTIFACTS / f"{stem}.json", ARTIFACTS / f"{stem}.md"
        earlier = json.loads(json_path.read_text()) if json_path.exists() else {"runs": [], "extra": {}}
        runs = [asdict(o) for o in self.outcomes]
        again = {(r["dag_id"], r["group"]) for r in runs}
        runs = [r for r in earlier["runs"] if (r["dag_id"], r["group"]) not in again] + runs
        extra = dict(earlier.get("extra", {}))
        for title, rows in self.extra.items():  # rows of a DAG run again replace that DAG's earlier rows
            again = {r.get("dag") for r in rows}
            extra[title] = [r for r in extra.get(title, []) if r.get("dag") not in again] + rows
        json_path.write_text(json.dumps({"runs": runs, "extra": extra}, indent=2, default=str))
        path.write_text(self.markdown(runs, extra))
        return path
