"""High availability as a cycle on EC2: maintenance, failover, maintenance, a second failover of the same validator
(its replacement dies too), maintenance. Every run succeeds and nobody edits the inventory: the live placement
follows the validator, maintenance backs up and images the node that runs it now.

And a fenced CN started again never runs the validator key. The simulated EC2 keeps an instance's private IP and
its enabled services across stop and start, and a PN accepts any CN that dials it, so a fenced instance that boots
with kcnd enabled and the key on its data volume would double-sign: the failover's defuse step prevents it, in both
outcomes (the first failed CN did not answer and was fenced by the stop alone; the second was fenced over SSH)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from kaia_ha import failover_cloud, live
from kaia_ha.model.inventory import load_inventory

FAILOVER, MAINTENANCE = "kaia_cn_failover_cloud", "kaia_cn_maintenance"


def running_validators(cell, node_id: str) -> list[str]:
    return [n["instance_id"] for n in cell.status()["nodes"] if n["node_id"] == node_id and n["running"]]


@pytest.fixture(scope="module")
def cycle(own_cell_airflow):
    cell, runner = own_cell_airflow
    inventory = Path(cell.read_env()["KAIA_HA_INVENTORY"])
    digest = hashlib.sha256(inventory.read_bytes()).hexdigest()
    first = cell.node("cn-aws-1")
    started = time.monotonic()
    runs = {"dry": runner.run(FAILOVER, {"failed_cn": "cn-aws-1", "dry_run": True})}
    runs["dry placement"] = live.current(load_inventory().cell("cc-cloud"))
    cell.break_(first["instance_id"], "stop-instance")  # its host does not answer: fenced by the stop alone
    runs["failover 1"] = runner.run(FAILOVER, {"failed_cn": "cn-aws-1"})
    runs["maintenance 2"] = runner.run(MAINTENANCE)
    second = live.current(load_inventory().cell("cc-cloud")).active.instance_id
    cell.break_(second, "kill")  # the replacement dies too; its host answers: fenced over SSH with the learned host key
    runs["failover 2"] = runner.run(FAILOVER, {"failed_cn": "cn-aws-1"})
    runs["maintenance 3"] = runner.run(MAINTENANCE)
    print(f"\ncloud cycle (dry run, failover, maintenance, failover, maintenance): {time.monotonic() - started:.0f} s")
    return cell, runner, first, second, runs, inventory, digest


def test_every_run_of_the_cycle_succeeds_and_the_inventory_is_untouched(cycle):
    cell, runner, first, second, runs, inventory, digest = cycle
    for name in ("dry", "failover 1", "maintenance 2", "failover 2", "maintenance 3"):
        _, state, states = runs[name]
        assert state == "success", (name, {k: v for k, v in states.items() if v[0] not in ("success", "skipped")})
    assert hashlib.sha256(inventory.read_bytes()).hexdigest() == digest


def test_a_dry_run_records_nothing(cycle):
    *_, runs, _, _ = cycle
    assert runs["dry placement"].generation == 0
    assert runs["dry"][2][("verify.record_placement", -1)][0] == "skipped"


def test_the_placement_follows_the_validator_with_a_history(cycle):
    cell, runner, first, second, runs, *_ = cycle
    cloud = load_inventory().cell("cc-cloud")
    placement = live.current(cloud)
    third = placement.active.instance_id
    assert placement.generation == 2 and third not in (first["instance_id"], second)
    assert [f.instance_id for f in placement.fenced] == [first["instance_id"], second]
    assert running_validators(cell, first["node_id"]) == [third]  # one live validator, the newest replacement
    assert cell.status()["double_signing_events"] == []
    history = live.history(cloud)
    assert [(p.change.dag_id, p.change.run_id) for p in history] == [(FAILOVER, runs["failover 1"][0]),
                                                                     (FAILOVER, runs["failover 2"][0])]
    assert history[1].change.before.startswith(f"cn-aws-1 on {second}")
    assert history[1].change.after.startswith(f"cn-aws-1 on {third}")
    report = runner.report(FAILOVER, runs["failover 2"][0])
    assert report["facts"]["live placement"].startswith(f"generation 2: cn-aws-1 on {third}")
    assert not any("inventory" in t for t in report["todo"])
    fence = report["timeline"]
    assert [s for s in fence if s["task"] == "fence.fence"][-1]["outcome"] == "success"


def test_maintenance_backs_up_and_images_the_node_that_runs_the_validator_now(cycle):
    cell, runner, first, second, runs, *_ = cycle
    after_first = runner.report(MAINTENANCE, runs["maintenance 2"][0])
    cloud = next(c for c in after_first["cells"] if c["cell"] == "cc-cloud")
    assert cloud["nodekey"]["action"] == "unchanged" and cloud["nodekey"]["node_id"] == first["node_id"]
    assert cloud["image"]["decision"] == "create" and f"runs on {second} now" in cloud["image"]["reason"]
    assert cloud["placement"].startswith(f"cn-aws-1 on {second}")
    ec2 = cell.client("ec2")
    image = ec2.describe_images(ImageIds=[cloud["image"]["image_id"]])["Images"][0]
    assert {t["Key"]: t["Value"] for t in image["Tags"]}["kaia:source-instance"] == second
    # The second failover launched its replacement from that image, the replacement's own.
    third = live.current(load_inventory().cell("cc-cloud")).active.instance_id
    launched = ec2.describe_instances(InstanceIds=[third])["Reservations"][0]["Instances"][0]
    assert launched["ImageId"] == image["ImageId"]
    last = next(c for c in runner.report(MAINTENANCE, runs["maintenance 3"][0])["cells"] if c["cell"] == "cc-cloud")
    assert last["nodekey"]["action"] == "unchanged" and f"runs on {third} now" in last["image"]["reason"]


def test_nothing_was_made_twice(cycle):
    cell, runner, first, second, runs, *_ = cycle
    made = [c for c in cell.calls()[cell.seeded_calls:] if c["status"] == 200 and not c["dry_run"]]
    assert len({c["params"].get("ClientToken") for c in made if c["action"] == "RunInstances"}) == 2  # one per failover
    assert len({c["params"].get("ClientToken") for c in made if c["action"] == "CreateVolume"}) == 2


def test_a_run_that_acted_on_an_older_placement_fails_clearly_and_records_nothing(cycle):
    """Two failovers of one validator at once: the one that records second read a placement that has changed."""
    cell, runner, *_ = cycle
    cloud = load_inventory().cell("cc-cloud")
    now = live.current(cloud)
    stale = {"cell": "cc-cloud", "failed_cn": "cn-aws-1", "run_id": "manual__rival",
             "failed_instance_id": now.active.instance_id,
             "placement": now.model_dump(mode="json") | {"generation": now.generation - 1}}
    host = {"new_instance_id": "i-0000000000000dead", "new_private_ip": "10.0.0.9", "new_host_key": "ssh-ed25519 AAAA"}
    with pytest.raises(live.PlacementConflict, match="changed after this run read it.*NOT recorded"):
        failover_cloud.record_placement(stale, host, {"over_ssh": False})
    assert live.current(cloud) == now


# ----- defused: what a fenced instance does when someone starts it (these start instances: last) -----------------
def tags(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


@pytest.fixture(scope="module")
def failovers(cycle):
    cell, runner, first, second, runs, *_ = cycle
    return cell, runner, first, second, runs["failover 1"], runs["failover 2"]


def test_both_failovers_succeed_and_defuse_the_failed_instance(failovers):
    cell, runner, first, second, one, two = failovers
    for run_id, state, states in (one, two):
        assert state == "success", {k: v for k, v in states.items() if v[0] not in ("success", "skipped")}
        assert states[("fence.defuse", -1)][0] == "success"
    ec2 = cell.client("ec2")
    volumes = ec2.describe_volumes(Filters=[{"Name": "tag-key", "Values": ["kaia:fenced-by"]}])["Volumes"]
    fenced_from = sorted(tags(v)["kaia:fenced-from"] for v in volumes)
    # Not answering: data and root volume; fenced over SSH: the data volume (kcnd is disabled and the keys aside).
    assert fenced_from == sorted([f"{first['instance_id']}:/dev/sda1", f"{first['instance_id']}:/dev/sdf",
                                  f"{second}:/dev/sdf"])
    assert all(v["State"] == "available" for v in volumes)  # kept for forensics, not deleted
    report = runner.report(FAILOVER, one[0])
    assert any("mount it read-only" in t for t in report["todo"])


def test_the_fenced_instance_that_did_not_answer_cannot_be_started(failovers):
    cell, runner, first, *_ = failovers
    with pytest.raises(ClientError, match="does not have a volume attached at root"):
        cell.client("ec2").start_instances(InstanceIds=[first["instance_id"]])


def test_the_replacement_never_ran_kcnd_before_its_identity_was_installed(failovers):
    """The image starts kcnd at boot; cloud-init's bootcmd (the launch's user data) keeps it off on the first boot, so
    kcnd never ran on the empty DATA_DIR (it would have generated a key of its own) and start_kcnd enables it."""
    cell, runner, first, second, *_ = failovers
    third = live.current(load_inventory().cell("cc-cloud")).active.instance_id
    log = cell.ssh("cn-aws-1", "sudo cat /var/log/kcnd/kcnd.out", instance_id=third).stdout
    assert "Generated nodekey" not in log
    assert cell.ssh("cn-aws-1", "systemctl is-enabled kcnd", check=False, instance_id=third).stdout.strip() == "enabled"
    launches = [c for c in cell.calls("RunInstances")[-4:] if not c["dry_run"]]
    assert launches and all("UserData" in c["params"] for c in launches)


def test_the_instance_fenced_over_ssh_starts_as_a_harmless_machine(failovers):
    cell, runner, first, second, *_ = failovers
    ec2 = cell.client("ec2")
    ec2.start_instances(InstanceIds=[second])
    cell.wait_for(lambda: ec2.describe_instances(InstanceIds=[second])["Reservations"][0]["Instances"][0]["State"]
                  ["Name"] == "running", timeout=60, what=f"{second} running")
    time.sleep(3)  # boot: enabled services would start now
    assert cell.ssh("cn-aws-1", "systemctl is-active kcnd", check=False, instance_id=second).stdout.strip() != "active"
    cell.ssh("cn-aws-1", "sudo systemctl start kcnd", check=False, instance_id=second)  # someone starts it by hand
    time.sleep(3)
    validator = first["node_id"]
    running = [n for n in cell.status()["nodes"] if n["node_id"] == validator and n["running"]]
    assert [n["instance_id"] for n in running] == [live.current(load_inventory().cell("cc-cloud")).active.instance_id]
    assert cell.status()["double_signing_events"] == []
