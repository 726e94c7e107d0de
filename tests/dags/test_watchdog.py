"""The watchdog against a simulated core cell of its own, in order (each test leaves the cell as the next expects):

- a healthy cell with a dropped SSH session raises nothing;
- each way of breaking the active CN is "dead" only after the configured rounds, and then opens one approval:
  stop-instance (cloud, then started again), cut-ssh (bare metal), kill (cloud; a killed node's database stays dirty,
  so it comes last);
- a CN running another node ID, and a fenced host running kcnd, are alerted at the first round;
- reject: nothing is triggered, and no second approval is opened at once; auto_failover: no question asked;
- approve: the right failover DAG run is created with ``failed_cn``; the watchdog stays quiet while it is queued.

Rounds are one per run (``rounds_per_run: 1``) and ``dead_after_rounds: 2`` (the inventory's watchdog block).
"""

from __future__ import annotations

import pytest
import yaml

import cellkit

WATCH = "kaia_cn_watchdog"
APPROVAL = "kaia_cn_failover_approval"
ROUNDS = 2


@pytest.fixture(scope="module")
def watch(tmp_path_factory):
    cell = cellkit.Cell(tmp_path_factory.mktemp("simcell-watch"))
    cell.up()
    try:
        path = cell.env["KAIA_HA_INVENTORY"]
        inventory = yaml.safe_load(open(path))
        for c in inventory["cells"]:
            c["watchdog"] = {"dead_after_rounds": ROUNDS, "round_seconds": 1}
        with open(path, "w") as f:
            yaml.safe_dump(inventory, f)
        with cellkit.AirflowRunner(cell, tmp_path_factory.mktemp("reports-watch")) as runner:
            for dag_id in (APPROVAL, "kaia_cn_failover_cloud", "kaia_cn_failover_standby"):
                for run_id, run in runs(dag_id).items():  # an earlier session's (the metadata DB is shared)
                    if run["state"] in ("queued", "running"):
                        end(dag_id, run_id)
            yield cell, runner
    finally:
        cell.down()


def runs(dag_id: str) -> dict[str, dict]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return {r.run_id: {"state": str(getattr(r.state, "value", r.state)), "conf": r.conf}
                for r in session.query(DagRun).filter_by(dag_id=dag_id)}


def end(dag_id: str, run_id: str) -> None:
    """Nothing runs a triggered run here (no scheduler): end it, as an operator would after the check."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id).update({DagRun.state: "failed"})


def rounds(runner) -> dict[str, dict]:
    """One watchdog run of one round; each cell's verdict and the states of its tasks."""
    import json

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    run_id, state, states = runner.run(WATCH, {"rounds_per_run": 1})
    assert state == "success", states
    with create_session() as session:  # the one watch task's XCom: each cell's verdict by cell name
        value = session.query(XComModel.value).filter_by(dag_id=WATCH, run_id=run_id, key="return_value",
                                                         task_id="watch").scalar()
    judged = json.loads(value) if isinstance(value, str) else value
    verdicts = {}
    for cell_name, verdict in judged.items():
        mine = {k[0]: v[0] for k, v in states.items() if k[0].startswith(f"{cell_name}.")}
        verdicts[cell_name] = verdict | {"states": mine}
    return verdicts


def round_(runner, cell_name: str) -> dict:
    return rounds(runner)[cell_name]


def published(cell, since: int) -> list[dict]:
    return [c["params"] for c in cell.calls("Publish")[since:]]


def dead_after_rounds(runner, cell_name: str) -> dict:
    """Rounds until dead; asserts it took exactly the configured count and opened an approval only then."""
    before = set(runs(APPROVAL))
    for n in range(1, ROUNDS):
        verdict = round_(runner, cell_name)
        assert verdict["verdict"] == "degraded" and verdict["bad_rounds"] == n, verdict
        assert verdict["states"][f"{cell_name}.open_approval"] == "skipped" and set(runs(APPROVAL)) == before
    verdict = round_(runner, cell_name)
    assert verdict["verdict"] == "dead" and verdict["bad_rounds"] == ROUNDS, verdict
    assert verdict["states"][f"{cell_name}.open_approval"] == "success"
    opened = set(runs(APPROVAL)) - before
    assert len(opened) == 1, opened
    return verdict | {"approval": opened.pop()}


def test_a_healthy_cell_with_a_dropped_ssh_session_raises_nothing(watch):
    cell, runner = watch
    sent, approvals = len(cell.calls("Publish")), set(runs(APPROVAL))
    cell.fault("ssh:cn-aws-1", "--kind", "drop")
    cell.fault("ssh:cn-metal-a", "--kind", "drop")
    for _ in range(ROUNDS + 1):
        verdicts = rounds(runner)
        judged = {name: v["verdict"] for name, v in verdicts.items()}
        assert judged == {"cc-cloud": "healthy", "cc-metal": "healthy"}, verdicts
    assert cell.status()["pending_faults"]["ssh"] == {}  # the drops happened, and were not counted
    assert set(runs(APPROVAL)) == approvals and published(cell, sent) == []


def test_a_stopped_cloud_instance_is_dead_after_the_rounds(watch):
    cell, runner = watch
    cell.break_("cn-aws-1", "stop-instance")
    verdict = dead_after_rounds(runner, "cc-cloud")
    assert any("EC2 says instance" in r for r in verdict["reasons"]), verdict
    end(APPROVAL, verdict["approval"])
    instance = cell.node("cn-aws-1")["instance_id"]
    ec2 = cell.client("ec2")

    def stopped():
        found = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
        return found["State"]["Name"] == "stopped"

    cell.wait_for(stopped, timeout=60, what="stopped")
    ec2.start_instances(InstanceIds=[instance])
    cell.wait_for(lambda: round_(runner, "cc-cloud")["verdict"] == "healthy", timeout=90, what="cn-aws-1 healthy again")


def test_a_regenerated_node_id_is_alerted_at_the_first_round(watch):
    cell, runner = watch
    sent = len(cell.calls("Publish"))
    key = "/var/kcnd/data/klay/nodekey"
    cell.ssh("cn-metal-a", f"sudo systemctl stop kcnd && sudo mv {key} {key}.aside && sudo systemctl start kcnd")
    try:
        verdict = round_(runner, "cc-metal")
        assert verdict["verdict"] == "degraded" and verdict["bad_rounds"] == 1  # no PN accepts the new ID either
        assert any("runs node ID" in text and "not its validator's" in text for text in verdict["immediate"]), verdict
        alerts = [p for p in published(cell, sent) if "regenerated" in p["Message"]]
        assert len(alerts) == 1 and alerts[0]["Subject"].startswith("[kaia-ha] cc-metal: cn-metal-a")
    finally:
        cell.ssh("cn-metal-a", f"sudo systemctl stop kcnd && sudo mv -f {key}.aside {key} && sudo systemctl start kcnd")
    cell.wait_for(lambda: round_(runner, "cc-metal")["verdict"] == "healthy", timeout=60,
                  what="cn-metal-a healthy again")


def test_a_metal_cn_with_ssh_cut_is_dead_after_the_rounds_and_a_rejection_starts_nothing(watch):
    cell, runner = watch
    cell.break_("cn-metal-a", "cut-ssh")  # kcnd still runs there: the failover would fence or ask
    failovers = set(runs("kaia_cn_failover_standby"))
    verdict = dead_after_rounds(runner, "cc-metal")
    assert any("does not answer over SSH" in r for r in verdict["reasons"]), verdict
    assert any("kcnd may still run" in e for e in verdict["evidence"]), verdict  # the PNs still see it: said so
    assert runs(APPROVAL)[verdict["approval"]]["conf"]["failover_dag_id"] == "kaia_cn_failover_standby"
    seen: dict = {}
    operator = cellkit.answer_when_asked(APPROVAL, "approve", "Reject", seen)
    run_id, state, states = runner.run_existing(APPROVAL, verdict["approval"])
    operator.join(timeout=5)
    assert seen["subject"] == "Fail over cn-metal-a now?"
    assert states[("fail_over", -1)][0] == "skipped" and set(runs("kaia_cn_failover_standby")) == failovers
    # Still dead: no new approval until the repeat (30 min by default).
    verdict = round_(runner, "cc-metal")
    assert verdict["verdict"] == "dead" and verdict["states"]["cc-metal.open_approval"] == "skipped"
    assert not [r for r, run in runs(APPROVAL).items()
                if r.startswith("watchdog__cn-metal-a") and run["state"] == "queued"]


def test_with_auto_failover_the_approval_run_starts_the_failover_without_asking(watch):
    cell, runner = watch
    conf = {"cell": "cc-metal", "validator": "cn-metal-a", "failover_dag_id": "kaia_cn_failover_standby",
            "evidence": "cn-metal-a: DEAD (test)", "auto_failover": True, "failover_conf": {"failed_cn": "cn-metal-a"}}
    run_id, state, states = runner.run(APPROVAL, conf)
    assert state == "success" and states[("approve", -1)][0] == "skipped", states
    failover = runs("kaia_cn_failover_standby")[f"approved__{run_id}"]
    assert failover["conf"] == {"failed_cn": "cn-metal-a"}
    end("kaia_cn_failover_standby", f"approved__{run_id}")


def test_a_killed_cloud_cn_is_dead_after_the_rounds_and_approval_starts_its_failover(watch):
    cell, runner = watch
    sent = len(cell.calls("Publish"))
    cell.break_("cn-aws-1", "kill")
    verdict = dead_after_rounds(runner, "cc-cloud")
    assert any("kcnd is not running" in r for r in verdict["reasons"]), verdict
    approval = runs(APPROVAL)[verdict["approval"]]
    assert approval["conf"]["failover_dag_id"] == "kaia_cn_failover_cloud"
    assert approval["conf"]["failover_conf"] == {"failed_cn": "cn-aws-1"}

    seen: dict = {}
    operator = cellkit.answer_when_asked(APPROVAL, "approve", "Approve", seen)
    run_id, state, states = runner.run_existing(APPROVAL, verdict["approval"])
    operator.join(timeout=5)
    assert state == "success", states
    assert seen["subject"] == "Fail over cn-aws-1 now?" and "kcnd is not running" in seen["body"]
    assert "kaia_cn_failover_cloud" in seen["body"] and "failed_cn" in seen["body"]
    failover = runs("kaia_cn_failover_cloud")[f"approved__{run_id}"]
    approvals = set(runs(APPROVAL))
    assert failover["conf"] == {"failed_cn": "cn-aws-1"} and failover["state"] == "queued"
    assert any(p["Subject"].startswith("[kaia-ha] DEAD: cn-aws-1") for p in published(cell, sent))

    # While its failover is queued the watchdog is quiet: still dead, no second approval.
    verdict = round_(runner, "cc-cloud")
    assert verdict["verdict"] == "dead" and verdict["states"]["cc-cloud.open_approval"] == "skipped"
    assert set(runs(APPROVAL)) == approvals
    end("kaia_cn_failover_cloud", f"approved__{run_id}")


def test_a_fenced_host_running_kcnd_is_alerted_at_the_first_round(watch):
    from kaia_ha import live
    from kaia_ha.model.inventory import load_inventory
    from kaia_ha.model.placement import Fenced

    cell, runner = watch
    metal = load_inventory().cell("cc-metal")
    # As if a failover had fenced cn-metal-b and someone started kcnd there again (it runs: the standby).
    record = Fenced(host="cn-metal-b", run_id="test", dag_id="test", at=live.now(), how="over SSH")
    live.update(metal, lambda p: p.next(fenced=[*p.fenced, record]), dag_id="test", run_id="fence-cn-metal-b",
                why="watchdog test: a fenced host alive")
    sent = len(cell.calls("Publish"))
    verdict = round_(runner, "cc-metal")
    assert "fenced host cn-metal-b runs kcnd again" in verdict["immediate"], verdict
    subjects = [p["Subject"] for p in published(cell, sent)]
    assert subjects == ["[kaia-ha] cc-metal: fenced host cn-metal-b runs kcnd again"]
