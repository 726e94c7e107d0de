"""The maintenance DAG against the simulated core cell: what an operator checks after a run."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime

import pytest

from kaia_ha.model.keys import KeyBackup

DAG_ID = "kaia_cn_maintenance"


def ok(states: dict) -> bool:
    return all(s in ("success", "skipped") for s, _ in states.values())


def images(cell) -> list[dict]:
    ec2 = cell.client("ec2")
    return ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:kaia:kind", "Values": ["cn-image"]}])["Images"]


def snapshots(cell, run_id: str | None = None) -> list[dict]:
    filters = [{"Name": "tag:kaia:kind", "Values": ["pn-chaindata"]}]
    if run_id:
        filters.append({"Name": "tag:kaia:run-id", "Values": [run_id]})
    return cell.client("ec2").describe_snapshots(OwnerIds=["self"], Filters=filters)["Snapshots"]


def task_end(run_id: str, task_id: str) -> datetime:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=DAG_ID, run_id=run_id, task_id=task_id).one()
        return ti.end_date


def kpnds_down(cell) -> list[str]:
    return [n["name"] for n in cell.status()["nodes"] if n["service"] == "kpnd" and not n["running"]]


@pytest.fixture(scope="module")
def first_run(airflow, cell):
    return airflow.run(DAG_ID)


def test_a_run_backs_up_the_keys_images_the_cn_without_data_and_snapshots_a_pn(first_run, airflow, cell):
    run_id, state, states = first_run
    assert state == "success", states
    # The backup holds the key the running CN uses.
    secrets = cell.client("secretsmanager")
    for name, secret_id in (("cn-aws-1", "kaia-ha/cc-cloud/cn-aws-1/nodekey"),
                            ("cn-metal-a", "kaia-ha/cc-metal/cn-metal-a/nodekey")):
        backup = KeyBackup.from_secret_string(secrets.get_secret_value(SecretId=secret_id)["SecretString"], secret_id)
        assert backup.node_id == cell.node(name)["node_id"]
        assert backup.bls is not None
    # One image, made without the DATA_DIR device (the call log shows the NoDevice mapping).
    made = images(cell)
    assert len(made) == 1
    create = cell.calls("CreateImage")[-1]["params"]
    assert create["BlockDeviceMapping.1.DeviceName"] == "/dev/sdf" and "BlockDeviceMapping.1.NoDevice" in create
    assert create["NoReboot"] == "true"
    assert "/dev/sdf" not in {m["DeviceName"] for m in made[0]["BlockDeviceMappings"]}
    # One completed snapshot, from a clean stop, and the PN is back.
    snaps = snapshots(cell, run_id)
    assert len(snaps) == 1 and snaps[0]["State"] == "completed"
    tags = {t["Key"]: t["Value"] for t in snaps[0]["Tags"]}
    assert tags["kaia:clean-stop"] == "true"
    assert all(n["running"] and n["peer_count"]["total"] > 0 for n in cell.status()["nodes"] if n["service"] == "kpnd")
    report = airflow.report(DAG_ID, run_id)
    cloud = next(c for c in report["cells"] if c["cell"] == "cc-cloud")
    assert cloud["pn_snapshot"]["snapshot_id"] == snaps[0]["SnapshotId"]
    assert 0 < cloud["pn_snapshot"]["kpnd_down_seconds"] < 60
    # kpnd ran again as soon as its snapshot was pending: before the stop task (all cells' stops) had even ended.
    started = datetime.fromisoformat(cloud["pn_snapshot"]["kpnd_started_at"])
    assert started <= task_end(run_id, "pn_snapshot.stop_and_snapshot"), cloud["pn_snapshot"]
    # Timed by the snapshot's own CompletionTime (here at once), not by the poke that saw every cell's complete.
    assert 0 <= cloud["pn_snapshot"]["snapshot_complete_seconds"] <= cloud["pn_snapshot"]["kpnd_down_seconds"]


def test_the_snapshot_was_taken_from_a_cleanly_stopped_pn(first_run, cell):
    run_id, _, _ = first_run
    snap = snapshots(cell, run_id)[0]
    volume = cell.client("ec2").create_volume(AvailabilityZone="us-east-1a", SnapshotId=snap["SnapshotId"],
                                              Size=snap["VolumeSize"])["VolumeId"]
    cell.client("ec2").get_waiter("volume_available").wait(VolumeIds=[volume], WaiterConfig={"Delay": 0.2})
    cell.client("ec2").attach_volume(VolumeId=volume, InstanceId=cell.node("cn-aws-1")["instance_id"],
                                     Device="/dev/sdh")
    cell.ssh("cn-aws-1", "sudo mkdir -p /var/kcnd/check && sudo mount /dev/sdh /var/kcnd/check")
    try:
        current = json.loads(cell.ssh("cn-aws-1", "cat /var/kcnd/check/klay/chaindata/misc/CURRENT.json").stdout)
        assert current["clean"] is True
    finally:
        cell.ssh("cn-aws-1", "sudo umount /var/kcnd/check")
        cell.client("ec2").detach_volume(VolumeId=volume)


def test_a_second_run_with_nothing_changed_makes_no_image_and_a_conf_change_does(first_run, airflow, cell):
    before = len(cell.calls("CreateImage"))
    run_id, state, states = airflow.run(DAG_ID)
    assert state == "success", states
    assert states[("cn_image.create_image", -1)][0] == "skipped"
    assert len(cell.calls("CreateImage")) == before
    assert len(images(cell)) == 1
    cell.ssh("cn-aws-1", "echo '# tuned by the operator' | sudo tee -a /etc/kcnd/conf/kcnd.conf")
    run_id, state, states = airflow.run(DAG_ID)
    assert state == "success", states
    assert len(images(cell)) == 2
    assert airflow.report(DAG_ID, run_id)["cells"][0]["image"]["reason"].startswith("kcnd.conf or kcn version changed")


def test_faults_end_in_success_with_nothing_made_twice_and_kpnd_running(first_run, airflow, cell):
    cell.fault("CreateSnapshot", "--kind", "throttle", "--times", "2")
    cell.fault("CreateSnapshot", "--kind", "drop", "--times", "1")  # made, but the answer is lost
    cell.fault("CreateImage", "--kind", "server-error", "--times", "1")
    cell.fault("CreateImage", "--kind", "drop", "--times", "1")
    for pn in ("pn-aws-1", "pn-aws-2"):
        cell.fault(f"ssh:{pn}", "--kind", "drop", "--times", "1")
    cell.ssh("cn-aws-1", "echo '# another change' | sudo tee -a /etc/kcnd/conf/kcnd.conf")
    run_id, state, states = airflow.run(DAG_ID)
    assert state == "success", states
    assert len(snapshots(cell, run_id)) == 1
    made = [i for i in images(cell) if {"Key": "kaia:run-id", "Value": run_id} in i["Tags"]]
    assert len(made) == 1
    assert cell.status()["pending_faults"]["aws"] == {}
    assert all(n["running"] for n in cell.status()["nodes"] if n["service"] == "kpnd")


def test_retention_keeps_the_newest_and_whatever_a_failover_uses(first_run, airflow, cell):
    ec2 = cell.client("ec2")
    instance = cell.node("pn-aws-2", "kpnd")["instance_id"]
    volumes = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [instance]},
                                            {"Name": "attachment.device", "Values": ["/dev/sdf"]}])["Volumes"]
    vol = volumes[0]["VolumeId"]
    made = []
    for i in range(4):
        tags = [{"Key": "kaia:cell", "Value": "cc-cloud"}, {"Key": "kaia:kind", "Value": "pn-chaindata"},
                {"Key": "kaia:node", "Value": "pn-aws-2"}, {"Key": "kaia:run-id", "Value": f"old-{i}"}]
        if i == 0:
            tags.append({"Key": "kaia:in-use-by", "Value": "failover-run-x"})
        made.append(ec2.create_snapshot(VolumeId=vol,
                                        TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags}])["SnapshotId"])
        time.sleep(1.1)  # distinct start times, so "newest" is well defined
    before = {s["SnapshotId"] for s in snapshots(cell)}
    run_id, state, states = airflow.run(DAG_ID)
    assert state == "success", states
    after = {s["SnapshotId"] for s in snapshots(cell)}
    newest = snapshots(cell, run_id)[0]["SnapshotId"]
    assert newest in after
    assert made[0] in after  # in use by a failover
    assert len(after - {made[0]}) == 3  # keep_snapshots
    assert before - after  # something old was deleted


def test_a_pn_left_down_leads_the_report_and_a_clear_brings_it_back(first_run, airflow, cell):
    """The stop step's own start and the teardown's both failing is the one way a PN stays down: the report must say
    so first. The stop record outlives the tries: a clear starts that PN even when the first check on it fails."""
    cell.fault("ssh:*", "--kind", "drop", "--times", "2", "--match", "systemctl start kpnd")  # both starts
    run_id, state, states = airflow.run(DAG_ID, retries=0)
    assert state == "failed" and states[("pn_snapshot.start_kpnd", -1)][0] == "failed", states
    down = kpnds_down(cell)
    assert len(down) == 1, cell.status()["nodes"]
    report = airflow.report(DAG_ID, run_id)
    assert report["urgent"] and report["urgent"][0].startswith(f"URGENT: kpnd on PN {down[0]} may still be stopped")
    assert "clear pn_snapshot.start_kpnd (for cc-cloud)" in report["urgent"][0]
    assert any(c["params"].get("Subject", "").startswith("[kaia-ha] URGENT: a PN of cc-cloud may be DOWN")
               for c in cell.calls("Publish"))
    # The stop cleared (a new try: Airflow drops the earlier try's XComs), its first look at that PN (is kpnd
    # active?) lost: what this run left stopped is still known, and the teardown starts it.
    cell.fault(f"ssh:{down[0]}", "--kind", "drop", "--times", "1", "--match", "systemctl is-active kpnd")
    _, state, states = airflow.clear_and_rerun(DAG_ID, run_id, task_ids=["pn_snapshot.stop_and_snapshot"], retries=0)
    assert states[("pn_snapshot.stop_and_snapshot", -1)][0] == "failed", states
    assert kpnds_down(cell) == [], states
    assert airflow.report(DAG_ID, run_id)["urgent"] == []
    _, state, states = airflow.clear_and_rerun(DAG_ID, run_id)
    assert state == "success", states
    assert len(snapshots(cell, run_id)) == 1  # no second stop, no second snapshot


def test_a_pn_stopped_by_a_step_that_then_failed_is_started_again(first_run, airflow, cell):
    """The stop step fails (CreateSnapshot refused past every retry) after it stopped a PN: the teardown must still
    start it (a teardown whose only setup failed would be skipped: its trigger rule is all_done)."""
    cell.fault("CreateSnapshot", "--kind", "server-error", "--times", "40")
    try:
        run_id, state, states = airflow.run(DAG_ID, retries=0)
    finally:
        cell.fault("--clear")
    assert state == "failed" and states[("pn_snapshot.stop_and_snapshot", -1)][0] == "failed", states
    assert states[("pn_snapshot.start_kpnd", -1)][0] == "success", states
    assert kpnds_down(cell) == []
    report = airflow.report(DAG_ID, run_id)
    assert report["urgent"] == []
    cloud = next(c for c in report["cells"] if c["cell"] == "cc-cloud")
    assert cloud["steps"]["kpnd stop and snapshot"].startswith("failed: ")
    # Cleared while a cloud failover runs: the retry of the stop takes no PN down.
    with failover_running():
        _, state, states = airflow.clear_and_rerun(DAG_ID, run_id, task_ids=["pn_snapshot.stop_and_snapshot"])
    assert states[("pn_snapshot.stop_and_snapshot", -1)][0] == "skipped", states
    assert snapshots(cell, run_id) == [] and kpnds_down(cell) == []


@contextlib.contextmanager
def failover_running():
    """What the scheduler holds while an operator's cloud failover runs."""
    import pendulum
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    with create_session() as session:
        session.add(DagRun(dag_id="kaia_cn_failover_cloud", run_id="incident", run_type="manual",
                           state=DagRunState.RUNNING,
                           run_after=pendulum.now("UTC"), start_date=pendulum.now("UTC")))
    try:
        yield
    finally:
        with create_session() as session:
            (session.query(DagRun)
             .filter(DagRun.dag_id == "kaia_cn_failover_cloud", DagRun.run_id == "incident").delete())


def test_no_pn_goes_down_while_a_cloud_failover_runs(first_run, airflow, cell):
    """A failover may take a fresh snapshot of a PN itself: maintenance then leaves every PN up."""
    with failover_running():
        run_id, state, states = airflow.run(DAG_ID)
    assert state == "success", states
    assert states[("pn_snapshot.plan", -1)][0] == "skipped"
    assert states[("pn_snapshot.stop_and_snapshot", -1)][0] == "skipped"
    assert snapshots(cell, run_id) == []
    assert all(n["running"] for n in cell.status()["nodes"] if n["service"] == "kpnd")
    assert airflow.report(DAG_ID, run_id)["cells"][0]["nodekey"]["action"]  # the rest of the run went on


class StopTry:
    """The few task-instance members the PN stop and start use (the rest of each run is real: SSH to the cell)."""

    def __init__(self, try_number: int = 1):
        self.try_number, self.xcom = try_number, {}

    def xcom_push(self, key, value):
        self.xcom[key] = value

    def xcom_pull(self, task_ids, key, default=None):
        return self.xcom.get(key, default)


def kpnd_running(cell, pn: str) -> bool:
    return cell.ssh(pn, "systemctl is-active kpnd", check=False).stdout.strip() == "active"


def test_a_pn_is_not_stopped_while_another_pn_of_its_cell_is_down(first_run, airflow, cell):
    from kaia_ha import pn

    cell.ssh("pn-aws-2", "sudo systemctl stop kpnd")
    try:
        with pytest.raises(pn.PNError,
                           match="pn-aws-2 is not healthy .*not taking pn-aws-1 down too"):
            pn.stop_pn("cc-cloud", "pn-aws-1", ti=StopTry())
        assert kpnd_running(cell, "pn-aws-1") and not kpnd_running(cell, "pn-aws-2")  # and pn-aws-2 is not this run's
    finally:
        cell.ssh("pn-aws-2", "sudo systemctl start kpnd")


def test_a_pn_someone_else_stopped_is_left_for_them_to_start(first_run, airflow, cell):
    """Their snapshot may not be taken yet: starting kpnd under it would make it dirty."""
    from kaia_ha import pn

    cell.ssh("pn-aws-1", "sudo systemctl stop kpnd")  # another run's stop, its CreateSnapshot not sent yet
    try:
        ti = StopTry()
        with pytest.raises(pn.PNError,
                           match="kpnd on pn-aws-1 is inactive before this run stopped it"):
            pn.stop_pn("cc-cloud", "pn-aws-1", ti=ti)
        started = pn.start_pn("cc-cloud", ti=ti, stop_task="stop_kpnd")  # this run's teardown
        assert started["started"] is False and not kpnd_running(cell, "pn-aws-1")
        ours = StopTry()
        ours.xcom_push(pn.STOPPED_KEY, ["pn-aws-1"])  # what a stop records before its SIGTERM
        # its own: started
        assert pn.start_pn("cc-cloud", ti=ours, stop_task="stop_kpnd")["pns"] == ["pn-aws-1"]
        assert kpnd_running(cell, "pn-aws-1")
    finally:
        cell.ssh("pn-aws-1", "sudo systemctl start kpnd")


def test_a_retry_leaves_a_pn_someone_else_stopped_to_them(first_run, airflow, cell):
    """A later try of the stop takes a PN it finds down for its own earlier stop only when this run's kept record
    says an earlier try left it down. Here no try of this run stopped it: another run's stop, whose snapshot may not
    be taken yet (starting kpnd under it would make it dirty)."""
    from kaia_ha import maintenance
    from kaia_ha.over_cells import CELLS_KEY

    run_id = "a-retry-of-the-stop"
    plan = maintenance.pn_snapshot_plan("cc-cloud", run_id)
    cell.ssh(plan["pn"], "sudo systemctl stop kpnd")
    try:
        ti = StopTry(try_number=2)
        ti.xcom[CELLS_KEY] = {"done": {"cc-cloud": plan}}  # what pn_snapshot.plan recorded
        with pytest.raises(maintenance.MaintenanceError,
                           match=f"kpnd on {plan['pn']} is inactive before this run stopped it"):
            maintenance.stop_and_snapshot(ti, run_id)
        assert snapshots(cell, run_id) == [] and not kpnd_running(cell, plan["pn"])
    finally:
        cell.ssh(plan["pn"], "sudo systemctl start kpnd")
