"""A fenced CN started again must never run the validator key. The simulated EC2 keeps an instance's private IP and
its enabled services across stop and start, and a PN accepts any CN that dials it, so a fenced instance that boots
with kcnd enabled and the key on its data volume would double-sign: the failover's defuse step is what prevents it.
Both outcomes: a host that did not answer (fenced by the stop alone) and one fenced over SSH."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from kaia_ha import live
from kaia_ha.inventory import load_inventory

FAILOVER = "kaia_cn_failover_cloud"


def tags(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


@pytest.fixture(scope="module")
def failovers(own_cell_airflow):
    cell, runner = own_cell_airflow
    first = cell.node("cn-aws-1")
    cell.break_(first["instance_id"], "stop-instance")  # the host does not answer: only the stop fences it
    one = runner.run(FAILOVER, {"failed_cn": "cn-aws-1"})
    second = live.current(load_inventory().cell("cc-cloud")).active.instance_id
    cell.break_(second, "kill")  # kcnd dies, the host answers: fenced over SSH first
    two = runner.run(FAILOVER, {"failed_cn": "cn-aws-1"})
    return cell, runner, first, second, one, two


def test_both_failovers_succeed_and_defuse_the_failed_instance(failovers):
    cell, runner, first, second, one, two = failovers
    for run_id, state, states in (one, two):
        assert state == "success", {k: v for k, v in states.items() if v[0] not in ("success", "skipped")}
        assert states[("fence.defuse", -1)][0] == "success"
    ec2 = cell.client("ec2")
    volumes = ec2.describe_volumes(Filters=[{"Name": "tag-key", "Values": ["kaia:fenced-by"]}])["Volumes"]
    fenced_from = sorted(tags(v)["kaia:fenced-from"] for v in volumes)
    # Not answering: data and root volume; fenced over SSH: the data volume (kcnd is disabled and the keys aside).
    assert fenced_from == sorted([f"{first['instance_id']}:/dev/sda1", f"{first['instance_id']}:/dev/sdf", f"{second}:/dev/sdf"])
    assert all(v["State"] == "available" for v in volumes)  # kept for forensics, not deleted
    report = runner.report(FAILOVER, one[0])
    assert any("mount it read-only" in t for t in report["todo"])


def test_the_fenced_instance_that_did_not_answer_cannot_be_started(failovers):
    cell, runner, first, *_ = failovers
    with pytest.raises(ClientError, match="does not have a volume attached at root"):
        cell.client("ec2").start_instances(InstanceIds=[first["instance_id"]])


def test_the_instance_fenced_over_ssh_starts_as_a_harmless_machine(failovers):
    cell, runner, first, second, *_ = failovers
    ec2 = cell.client("ec2")
    ec2.start_instances(InstanceIds=[second])
    cell.wait_for(lambda: ec2.describe_instances(InstanceIds=[second])["Reservations"][0]["Instances"][0]["State"]["Name"]
                  == "running", timeout=60, what=f"{second} running")
    time.sleep(3)  # boot: enabled services would start now
    assert cell.ssh("cn-aws-1", "systemctl is-active kcnd", check=False, instance_id=second).stdout.strip() != "active"
    cell.ssh("cn-aws-1", "sudo systemctl start kcnd", check=False, instance_id=second)  # someone starts it by hand
    time.sleep(3)
    validator = first["node_id"]
    running = [n for n in cell.status()["nodes"] if n["node_id"] == validator and n["running"]]
    assert [n["instance_id"] for n in running] == [live.current(load_inventory().cell("cc-cloud")).active.instance_id]
    assert cell.status()["double_signing_events"] == []


def test_the_replacement_never_ran_kcnd_before_its_identity_was_installed(failovers):
    """The image starts kcnd at boot; cloud-init's bootcmd (the launch's user data) keeps it off on the first boot, so
    kcnd never ran on the empty DATA_DIR (it would have generated a key of its own) and start_kcnd enables it."""
    cell, runner, first, second, *_ = failovers
    third = live.current(load_inventory().cell("cc-cloud")).active.instance_id
    for replacement in (second, third):
        log = cell.ssh("cn-aws-1", "sudo cat /var/log/kcnd/kcnd.out", instance_id=replacement).stdout
        assert "Generated nodekey" not in log, replacement
    assert cell.ssh("cn-aws-1", "systemctl is-enabled kcnd", check=False, instance_id=third).stdout.strip() == "enabled"
    launches = [c for c in cell.calls("RunInstances")[-4:] if not c["dry_run"]]
    assert launches and all("UserData" in c["params"] for c in launches)
