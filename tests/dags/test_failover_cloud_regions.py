"""A cloud cell in another region, reached through a connection of its own: every AWS call of its failover,
the operators' waits and snapshot included, goes to that cell's region through that connection (with the
first cell's, the failed instance, the PN volume and the replacement are not found there)."""

from __future__ import annotations

import pytest

DAG_ID = "kaia_cn_failover_cloud"
WEST = "us-west-2"


@pytest.fixture(scope="module")
def two_regions(tmp_path_factory):
    """Two cloud cells (``cc-cloud`` in us-east-1, ``cc-cloud-2`` in us-west-2 through ``kaia_aws_us_west_2``), with
    what a failover of ``cc-cloud-2`` needs: its key backup and a CN image, made by the maintenance's own steps."""
    import pendulum

    from cellkit import AirflowRunner, Cell

    cell = Cell(tmp_path_factory.mktemp("simcell-regions"))
    cell.up("--cloud-cells", "2")
    try:
        with AirflowRunner(cell, tmp_path_factory.mktemp("reports-regions")) as runner:
            from kaia_ha import maintenance
            from kaia_ha.model.inventory import load_inventory
            from kaia_ha_airflow.hooks.ec2 import CoreCellEC2Hook

            west = load_inventory().cell("cc-cloud-2")
            assert (west.region, west.aws_conn_id) == (WEST, "kaia_aws_us_west_2")
            maintenance.backup_nodekey(west.name, "test-setup")
            plan = maintenance.image_plan(west.name, "test-setup", pendulum.now("UTC"))
            ec2 = CoreCellEC2Hook(aws_conn_id=west.aws_conn_id, region_name=west.region)
            image_id, _ = ec2.create_image(instance_id=plan["instance_id"], name=plan["name"], tags=plan["tags"],
                                           exclude_devices=plan["exclude_devices"], no_reboot=True, description="setup")
            ec2.conn.get_waiter("image_available").wait(ImageIds=[image_id], WaiterConfig={"Delay": 0.5,
                                                                                           "MaxAttempts": 120})
            cell.seeded_calls = len(cell.calls())  # what follows is the failover's
            yield cell, runner
    finally:
        cell.down()


def test_a_failover_in_the_second_region_uses_that_cells_connection_and_region(two_regions):
    cell, runner = two_regions
    failed = cell.node("cn-aws-1-c2")
    cell.break_("cn-aws-1-c2", "kill")
    # A fresh snapshot: the PN snapshot operator and its sensor run too, not only the instance state sensors.
    run_id, state, states = runner.run(DAG_ID, {"failed_cn": "cn-aws-1-c2", "use_presnapshot": False})
    assert state == "success", {k: v for k, v in states.items() if v[0] != "success"}
    for task in ("fence.wait_stopped", "chain_data.fresh_snapshot.create_snapshot",
                 "chain_data.fresh_snapshot.wait_snapshot", "launch.wait_running"):
        assert states[(task, -1)][0] == "success", task
    west = cell.client("ec2", region=WEST)
    old = west.describe_instances(InstanceIds=[failed["instance_id"]])["Reservations"][0]["Instances"][0]
    assert old["State"]["Name"] == "stopped"
    new = runner.report(DAG_ID, run_id)["facts"]["replacement instance"]
    assert west.describe_instances(InstanceIds=[new])["Reservations"][0]["Instances"][0]["State"]["Name"] == "running"
    snapshots = west.describe_snapshots(Filters=[{"Name": "tag:kaia:run-id", "Values": [run_id]}])["Snapshots"]
    assert [s["State"] for s in snapshots] == ["completed"]
    live = [n for n in cell.status()["nodes"] if n["node_id"] == failed["node_id"] and n["running"]]
    assert [n["instance_id"] for n in live] == [new] and live[0]["peer_count"].get("cn", 0) > 0
    # Every call naming the failed instance went to its region, and none was refused for a resource not found.
    calls = cell.calls()[cell.seeded_calls:]
    assert {c["region"] for c in calls if failed["instance_id"] in str(c["params"])} == {WEST}
    assert [c for c in calls if "NotFound" in (c["error"] or "")] == []
