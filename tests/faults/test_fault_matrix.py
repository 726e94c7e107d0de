"""Every AWS action and SSH step of the maintenance DAG, the cloud failover and the bare-metal failover, under
throttling, 5xx and dropped connections: each run ends in success with nothing made twice, every PN running,
no double signing and no key anywhere it must not be (``faultkit.fault_run``)."""

from __future__ import annotations

import secrets

import pytest

from faultkit import (
    AWS_ACTIONS,
    CLOUD,
    KINDS,
    MAINTENANCE,
    METAL,
    assert_ended_well,
    cell_with_airflow,
    fault_run,
    faults_of,
    full_sweep,
    outlasting,
    pick,
    within_retries,
)
from kaia_ha.model.keys import BlsKey, KeyBackup, NodeKey

# the fresh-snapshot path: every step
CLOUD_CONF = {"failed_cn": "cn-aws-1", "use_presnapshot": False, "snapshot_pn": "pn-aws-1"}
METAL_CONF = {"failed_cn": "cn-metal-a"}
CLOUD_MAKES = {"instances": 1, "volumes": 1, "snapshots pn-chaindata": 1, "images": 0}
MAINTENANCE_MAKES = {"images": 1, "snapshots pn-chaindata": 1, "instances": 0, "volumes": 0}


def clean_maintenance(cell, runner) -> None:
    run_id, state, states = runner.run(MAINTENANCE)
    assert state == "success", states


def validator_runs_once(cell, node_id: str, where: str) -> None:
    live = [n for n in cell.status()["nodes"] if n["node_id"] == node_id and n["running"]]
    assert [n["instance_id"] or n["name"] for n in live] == [where], live


def cloud_failover(cell, runner, faults, group, matrix):
    validator = cell.node("cn-aws-1")["node_id"]
    cell.break_("cn-aws-1", "kill")
    outcome = matrix.add(fault_run(cell, runner, CLOUD, CLOUD_CONF, faults, group))
    assert_ended_well(outcome, CLOUD_MAKES, faults)
    instance = cell.client("ec2").describe_instances(Filters=[{"Name": "tag:kaia:run-id", "Values": [outcome.run_id]}])
    validator_runs_once(cell, validator, instance["Reservations"][0]["Instances"][0]["InstanceId"])
    return outcome


def metal_failover(cell, runner, faults, group, matrix):
    validator, standby = cell.node("cn-metal-a")["node_id"], cell.node("cn-metal-b")["node_id"]
    cell.break_("cn-metal-a", "kill")
    outcome = matrix.add(fault_run(cell, runner, METAL, METAL_CONF, faults, group))
    assert_ended_well(outcome, {"instances": 0, "volumes": 0, "images": 0}, faults)
    if outlasting(faults):  # failed while fencing: the standby is untouched, the validator nowhere twice
        assert cell.node("cn-metal-b")["running"] and cell.node("cn-metal-b")["node_id"] == standby
        assert not [n for n in cell.status()["nodes"] if n["node_id"] == validator and n["running"]]
        return outcome
    validator_runs_once(cell, validator, "cn-metal-b")
    assert cell.status()["floating_ips"]["10.50.0.100"] == "cn-metal-b"
    return outcome


def only_catalogued(outcome) -> None:
    """The run called no AWS action the matrix has no row for."""
    assert set(outcome.called) <= set(AWS_ACTIONS[outcome.dag_id]), (
        set(outcome.called) - set(AWS_ACTIONS[outcome.dag_id]))


# ----- the quick subset (make test) --------------------------------------------------------------------------
QUICK = {
    MAINTENANCE: pick(MAINTENANCE, ("aws drop", "CreateSnapshot"), ("aws throttle", "CreateImage"),
                      ("ssh drop-after", "systemctl stop kpnd")),
    CLOUD: pick(CLOUD, ("aws drop", "RunInstances"), ("aws server-error", "AssociateAddress"),
                ("ssh drop-after", "mount /dev/sdf"), ("ssh drop", "nodekey.kaia-ha.tmp")),
    METAL: pick(METAL, ("ssh drop-after", "systemctl disable kcnd"), ("ssh drop", "nodekey.kaia-ha.tmp"),
                ("aws server-error", "GetSecretValue")),
}


@pytest.mark.timeout(600)
def test_representative_faults_in_each_dag_end_well(tmp_path_factory, matrix):
    with cell_with_airflow(tmp_path_factory, "quick") as (cell, runner):
        assert_ended_well(matrix.add(fault_run(cell, runner, MAINTENANCE, None, QUICK[MAINTENANCE], "quick")),
                          MAINTENANCE_MAKES)
        cloud_failover(cell, runner, QUICK[CLOUD], "quick", matrix)
        metal_failover(cell, runner, QUICK[METAL], "quick", matrix)


# ----- the full sweep (make faults) -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def maintenance_cell(tmp_path_factory):
    """One cell for every maintenance group (a maintenance run changes nothing for good): run once clean, then
    given more images and snapshots than retention keeps, so that every run deletes some."""
    with cell_with_airflow(tmp_path_factory, "maintenance") as (cell, runner):
        clean_maintenance(cell, runner)
        ec2 = cell.client("ec2")
        cn, pn = cell.node("cn-aws-1")["instance_id"], cell.node("pn-aws-2")["instance_id"]
        volume = ec2.describe_volumes(
            Filters=[{"Name": "attachment.instance-id", "Values": [pn]},
                     {"Name": "attachment.device", "Values": ["/dev/sdf"]}])["Volumes"][0]["VolumeId"]
        for i in range(3):
            tags = lambda kind: [{"Key": "kaia:cell", "Value": "cc-cloud"}, {"Key": "kaia:kind", "Value": kind},  # noqa: E731
                                 {"Key": "kaia:node", "Value": "cn-aws-1" if kind == "cn-image" else "pn-aws-2"},
                                 {"Key": "kaia:run-id", "Value": f"older-{i}"}]
            ec2.create_image(InstanceId=cn, Name=f"kaia-cn-older-{i}", NoReboot=True,
                             BlockDeviceMappings=[{"DeviceName": "/dev/sdf", "NoDevice": ""}],
                             TagSpecifications=[{"ResourceType": "image", "Tags": tags("cn-image")}])
            ec2.create_snapshot(VolumeId=volume,
                                TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags("pn-chaindata")}])
        yield cell, runner


def a_run_with_everything_to_do(cell) -> None:
    """kcnd.conf changed (a new image), cc-cloud's backup missing (CreateSecret), cc-metal's stale (PutSecretValue
    and an SNS alert)."""
    cell.ssh("cn-aws-1", f"echo '# tuned {secrets.token_hex(4)}' | sudo tee -a /etc/kcnd/conf/kcnd.conf")
    sm = cell.client("secretsmanager")
    sm.delete_secret(SecretId="kaia-ha/cc-cloud/cn-aws-1/nodekey", ForceDeleteWithoutRecovery=True)
    stale = KeyBackup(NodeKey(secrets.token_hex(32)), BlsKey(secrets.token_hex(32)), None, source="stale")
    sm.put_secret_value(SecretId="kaia-ha/cc-metal/cn-metal-a/nodekey", SecretString=stale.to_secret_string())


@full_sweep
@pytest.mark.parametrize("kind", KINDS)
def test_maintenance_under_faults(maintenance_cell, kind, matrix):
    cell, runner = maintenance_cell
    a_run_with_everything_to_do(cell)
    outcome = matrix.add(fault_run(cell, runner, MAINTENANCE, None, faults_of(MAINTENANCE, kind), kind))
    assert_ended_well(outcome, MAINTENANCE_MAKES, faults_of(MAINTENANCE, kind))
    only_catalogued(outcome)
    assert {"CreateSecret", "PutSecretValue", "DeregisterImage", "DeleteSnapshot"} <= set(outcome.called)


@full_sweep
@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", KINDS)
def test_failovers_under_faults(tmp_path_factory, kind, matrix):
    """A fresh cell per kind (a failover changes the cell for good): the cloud failover, then the bare-metal one."""
    with cell_with_airflow(tmp_path_factory, kind.replace(" ", "-")) as (cell, runner):
        clean_maintenance(cell, runner)
        only_catalogued(cloud_failover(cell, runner, faults_of(CLOUD, kind), kind, matrix))
        only_catalogued(metal_failover(cell, runner, faults_of(METAL, kind), kind, matrix))


@full_sweep
@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", [k for k in KINDS if k.startswith("ssh")])
def test_bare_metal_failover_under_ssh_faults_within_its_retries(tmp_path_factory, kind, matrix):
    """The bare-metal group above gives fence_over_ssh more SSH faults than it has retries, so that run fails there
    and never reaches the later steps: here every step gets at most as many as it has retries, and succeeds."""
    from kaia_ha import maintenance
    from kaia_ha.model.inventory import load_inventory

    with cell_with_airflow(tmp_path_factory, f"metal-{kind.replace(' ', '-')}") as (cell, runner):
        # the backup a failover needs, as the maintenance DAG makes it
        for metal in load_inventory().cells_of("bare-metal"):
            maintenance.backup_nodekey(metal.name, "test-setup")
        faults = within_retries(faults_of(METAL, kind))
        assert not outlasting(faults)
        metal_failover(cell, runner, faults, f"{kind}, within retries", matrix)
