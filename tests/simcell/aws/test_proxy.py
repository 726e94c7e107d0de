"""The AWS front layer, driven the way DAGs drive it: boto3 over HTTP."""

from __future__ import annotations

import json
import threading
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError

from simcell.aws.latency import Latency
from simcell.aws.proxy import AwsFront, _Reply, _rewritten

REGION = "us-east-1"
ZONE = "us-east-1a"
OTHER_ZONE = "us-east-1b"
AMI = "ami-12c6146b"  # one of moto's built-in images
# total_max_attempts counts the first call; max_attempts=1 would still retry once.
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def _recorder(name: str) -> Callable[..., None]:
    def record(self: RecordingHooks, *args: Any) -> None:
        self.calls.append((name, *args))

    return record


class RecordingHooks:
    """A fake world: records every hook call; answers console output and image data volumes."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.console: dict[str, str] = {}
        self.data_volumes: dict[str, dict[str, int]] = {}

    snapshot_created = _recorder("snapshot_created")
    volume_created = _recorder("volume_created")
    volume_attached = _recorder("volume_attached")
    volume_detached = _recorder("volume_detached")
    volume_deleted = _recorder("volume_deleted")
    snapshot_deleted = _recorder("snapshot_deleted")
    instance_launched = _recorder("instance_launched")
    instance_running = _recorder("instance_running")
    instance_stopping = _recorder("instance_stopping")
    instance_terminated = _recorder("instance_terminated")
    image_created = _recorder("image_created")
    image_deregistered = _recorder("image_deregistered")
    address_moved = _recorder("address_moved")

    def console_output(self, instance_id: str) -> str | None:
        self.calls.append(("console_output", instance_id))
        return self.console.get(instance_id)

    def image_data_volumes(self, image_id: str) -> dict[str, int]:
        self.calls.append(("image_data_volumes", image_id))
        return self.data_volumes.get(image_id, {})

    def of(self, name: str) -> list[tuple]:
        return [call[1:] for call in self.calls if call[0] == name]

    def names(self) -> list[str]:
        return [call[0] for call in self.calls if call[0] not in ("image_data_volumes", "console_output")]


class Harness:
    def __init__(self, front: AwsFront, hooks: RecordingHooks, log_path: Path) -> None:
        self.front, self.hooks, self.log_path = front, hooks, log_path
        self.ec2 = self.client("ec2")

    def client(self, service: str, config: Config = NO_RETRY) -> Any:
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.front.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=config,
        )

    def log(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def launch(self, zone: str = ZONE, image_id: str = AMI) -> str:
        reply = self.ec2.run_instances(
            ImageId=image_id, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": zone}
        )
        return reply["Instances"][0]["InstanceId"]

    def volume(self, size: int = 10, zone: str = ZONE, **kwargs: Any) -> str:
        return self.ec2.create_volume(Size=size, AvailabilityZone=zone, **kwargs)["VolumeId"]

    def state(self, instance_id: str) -> str:
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return reservations[0]["Instances"][0]["State"]["Name"]


@pytest.fixture(scope="module")
def fronts():
    """Every front of the module, stopped together at the end: a stop waits up to 1 s for the
    servers' poll loops. A front left idle is harmless: each ``start()`` resets moto's global state."""
    started: list[AwsFront] = []
    yield started
    stoppers = [threading.Thread(target=front.stop) for front in started]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join()


@pytest.fixture
def make_aws(tmp_path: Path, fronts: list[AwsFront]):
    def make(profile: str = "instant", time_scale: float = 1.0) -> Harness:
        hooks = RecordingHooks()
        log_path = tmp_path / f"calls-{profile}-{time_scale}.jsonl"
        front = AwsFront(hooks=hooks, call_log_path=log_path, profile=profile, time_scale=time_scale)
        front.start()
        fronts.append(front)
        return Harness(front, hooks, log_path)

    return make


@pytest.fixture
def aws(make_aws) -> Harness:
    return make_aws()


def error_code(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if value := predicate():
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


# --- 1. call log -------------------------------------------------------------------------------------

def test_call_log_has_one_line_per_request_and_masks_secrets(aws: Harness) -> None:
    secrets = aws.client("secretsmanager")
    secrets.create_secret(Name="kcn/nodekey", SecretString="s3cr3t-nodekey")
    assert secrets.get_secret_value(SecretId="kcn/nodekey")["SecretString"] == "s3cr3t-nodekey"
    aws.volume(size=3)
    aws.client("sns").create_topic(Name="failover")
    aws.client("sts").get_caller_identity()
    with pytest.raises(ClientError):
        aws.ec2.describe_volumes(VolumeIds=["vol-0000000000000000f"])

    log = aws.log()
    assert [(e["service"], e["action"]) for e in log] == [
        ("secretsmanager", "CreateSecret"),
        ("secretsmanager", "GetSecretValue"),
        ("ec2", "CreateVolume"),
        ("sns", "CreateTopic"),
        ("sts", "GetCallerIdentity"),
        ("ec2", "DescribeVolumes"),
    ]
    assert "s3cr3t" not in aws.log_path.read_text()  # neither the request nor the response
    assert log[0]["params"]["SecretString"] == "***"
    assert log[0]["params"]["Name"] == "kcn/nodekey"
    assert log[2]["params"]["Size"] == "3" and log[2]["params"]["AvailabilityZone"] == ZONE
    assert "Action" not in log[2]["params"]
    assert log[3]["params"] == {"Name": "failover"}
    for entry in log[:-1]:
        assert (entry["status"], entry["error"], entry["fault"], entry["dry_run"]) == (200, None, None, False)
        assert datetime.fromisoformat(entry["time"]).tzinfo is not None
    assert (log[-1]["status"], log[-1]["error"]) == (400, "InvalidVolume.NotFound")


# --- 2. faults ---------------------------------------------------------------------------------------

def test_throttle_fault_fails_the_next_calls_then_lets_them_through(aws: Harness) -> None:
    aws.front.add_fault("CreateVolume", "throttle", 2)
    assert aws.front.pending_faults() == {"CreateVolume": ["throttle", "throttle"]}
    for _ in range(2):
        with pytest.raises(ClientError) as excinfo:
            aws.volume()
        assert error_code(excinfo) == "RequestLimitExceeded"
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    aws.volume()
    assert aws.front.pending_faults() == {}
    assert len(aws.ec2.describe_volumes()["Volumes"]) == 1  # throttled calls did nothing
    assert [e["fault"] for e in aws.log()] == ["throttle", "throttle", None, None]


def test_botocore_retries_throttling_and_server_errors(aws: Harness) -> None:
    ec2 = aws.client("ec2", Config(retries={"max_attempts": 3, "mode": "standard"}))
    aws.front.add_fault("DescribeVolumes", "throttle", 1)
    aws.front.add_fault("DescribeVolumes", "server-error", 1)
    ec2.describe_volumes()
    log = aws.log()
    assert [(e["fault"], e["status"], e["error"]) for e in log] == [
        ("throttle", 400, "RequestLimitExceeded"),
        ("server-error", 503, "Unavailable"),
        (None, 200, None),
    ]


@pytest.mark.parametrize(
    ("service", "call", "kind", "status", "code"),
    [
        ("secretsmanager", lambda c: c.list_secrets(), "throttle", 400, "ThrottlingException"),
        ("secretsmanager", lambda c: c.list_secrets(), "server-error", 500, "InternalServiceError"),
        ("sns", lambda c: c.list_topics(), "throttle", 400, "Throttling"),
        ("sns", lambda c: c.list_topics(), "server-error", 500, "InternalError"),
        ("ec2", lambda c: c.describe_volumes(), "server-error", 503, "Unavailable"),
    ],
)
def test_fault_errors_have_each_service_shape(aws: Harness, service, call, kind, status, code) -> None:
    client = aws.client(service)
    action = {"secretsmanager": "ListSecrets", "sns": "ListTopics", "ec2": "DescribeVolumes"}[service]
    aws.front.add_fault(action, kind, 1)
    with pytest.raises(ClientError) as excinfo:
        call(client)
    assert error_code(excinfo) == code
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    call(client)


def test_drop_fault_performs_the_call_but_closes_the_connection(aws: Harness) -> None:
    aws.front.add_fault("CreateVolume", "drop", 1)
    with pytest.raises(ConnectionClosedError):
        aws.volume(size=7)
    volumes = aws.ec2.describe_volumes()["Volumes"]
    assert [v["Size"] for v in volumes] == [7]
    assert aws.hooks.of("volume_created") == [(volumes[0]["VolumeId"], None, 7)]
    assert aws.log()[0]["fault"] == "drop"


def test_dry_run_consumes_no_fault_and_runs_no_hook(aws: Harness) -> None:
    aws.front.add_fault("CreateVolume", "throttle", 1)
    with pytest.raises(ClientError) as excinfo:
        aws.volume(DryRun=True)
    assert error_code(excinfo) == "DryRunOperation"
    assert aws.hooks.calls == []
    assert aws.front.pending_faults() == {"CreateVolume": ["throttle"]}
    assert aws.ec2.describe_volumes()["Volumes"] == []
    assert (aws.log()[0]["dry_run"], aws.log()[0]["fault"]) == (True, None)
    aws.front.clear_faults()
    assert aws.front.pending_faults() == {}


def test_add_fault_rejects_unknown_kind_and_count(aws: Harness) -> None:
    with pytest.raises(ValueError):
        aws.front.add_fault("CreateVolume", "slow", 1)
    with pytest.raises(ValueError):
        aws.front.add_fault("CreateVolume", "drop", 0)


# --- 3. ClientToken ------------------------------------------------------------------------------

def test_run_instances_retry_with_client_token_returns_the_same_instance(aws: Harness) -> None:
    aws.front.add_fault("RunInstances", "drop", 1)
    launch = {"ImageId": AMI, "MinCount": 1, "MaxCount": 1, "ClientToken": "failover-run-1"}
    with pytest.raises(ConnectionClosedError):
        aws.ec2.run_instances(**launch)
    retried = aws.ec2.run_instances(**launch)

    reservations = aws.ec2.describe_instances()["Reservations"]
    instance_ids = [i["InstanceId"] for r in reservations for i in r["Instances"]]
    assert [i["InstanceId"] for i in retried["Instances"]] == instance_ids
    assert len(instance_ids) == 1
    assert [call[0] for call in aws.hooks.of("instance_launched")] == instance_ids

    with pytest.raises(ClientError) as excinfo:
        aws.ec2.run_instances(**launch, InstanceType="m5.large")
    assert error_code(excinfo) == "IdempotentParameterMismatch"


def test_create_volume_with_client_token_is_idempotent(aws: Harness) -> None:
    first = aws.volume(size=5, ClientToken="data-vol-1")
    assert aws.volume(size=5, ClientToken="data-vol-1") == first
    assert len(aws.ec2.describe_volumes()["Volumes"]) == 1
    with pytest.raises(ClientError) as excinfo:
        aws.volume(size=6, ClientToken="data-vol-1")
    assert error_code(excinfo) == "IdempotentParameterMismatch"
    assert aws.volume(size=5, ClientToken="data-vol-2") != first


def test_botocore_retry_after_a_drop_reuses_its_client_token(aws: Harness) -> None:
    ec2 = aws.client("ec2", Config(retries={"max_attempts": 2, "mode": "standard"}))
    aws.front.add_fault("CreateVolume", "drop", 1)
    volume_id = ec2.create_volume(Size=2, AvailabilityZone=ZONE)["VolumeId"]  # token made by botocore
    assert [v["VolumeId"] for v in aws.ec2.describe_volumes()["Volumes"]] == [volume_id]
    assert [e["fault"] for e in aws.log()] == ["drop", None, None]


# --- 4. Elastic IPs ----------------------------------------------------------------------------------

def test_associate_address_moves_an_address_in_use_and_tells_the_world(aws: Harness) -> None:
    old, new = aws.launch(), aws.launch()
    address = aws.ec2.allocate_address(Domain="vpc")
    ip, allocation = address["PublicIp"], address["AllocationId"]
    aws.ec2.associate_address(AllocationId=allocation, InstanceId=old)
    # No AllowReassociation: AWS moves the address, moto alone would refuse.
    association = aws.ec2.associate_address(AllocationId=allocation, InstanceId=new)["AssociationId"]
    assert aws.ec2.describe_addresses()["Addresses"][0]["InstanceId"] == new
    assert "AllowReassociation" not in aws.log()[-2]["params"]  # logged as the client sent it

    aws.ec2.disassociate_address(AssociationId=association)
    assert aws.hooks.of("address_moved") == [(ip, old), (ip, new), (ip, None)]


def test_associate_address_keeps_an_explicit_allow_reassociation_false(aws: Harness) -> None:
    old, new = aws.launch(), aws.launch()
    allocation = aws.ec2.allocate_address(Domain="vpc")["AllocationId"]
    aws.ec2.associate_address(AllocationId=allocation, InstanceId=old)
    with pytest.raises(ClientError):
        aws.ec2.associate_address(AllocationId=allocation, InstanceId=new, AllowReassociation=False)
    assert aws.ec2.describe_addresses()["Addresses"][0]["InstanceId"] == old


# --- 5. AttachVolume checks -------------------------------------------------------------------------

def test_attach_volume_refuses_a_volume_in_another_zone(aws: Harness) -> None:
    instance_id, volume_id = aws.launch(ZONE), aws.volume(zone=OTHER_ZONE)
    with pytest.raises(ClientError) as excinfo:
        aws.ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    assert error_code(excinfo) == "InvalidVolume.ZoneMismatch"
    assert volume_id in str(excinfo.value) and instance_id in str(excinfo.value)
    assert aws.hooks.of("volume_attached") == []


def test_attach_volume_refuses_a_volume_already_attached(aws: Harness) -> None:
    first, second, volume_id = aws.launch(), aws.launch(), aws.volume()
    aws.ec2.attach_volume(VolumeId=volume_id, InstanceId=first, Device="/dev/sdf")
    with pytest.raises(ClientError) as excinfo:
        aws.ec2.attach_volume(VolumeId=volume_id, InstanceId=second, Device="/dev/sdf")
    assert error_code(excinfo) == "VolumeInUse"
    assert aws.hooks.of("volume_attached") == [(volume_id, first, "/dev/sdf")]


def test_attach_volume_refuses_a_terminated_instance(aws: Harness) -> None:
    instance_id, volume_id = aws.launch(), aws.volume()
    aws.ec2.terminate_instances(InstanceIds=[instance_id])
    with pytest.raises(ClientError) as excinfo:
        aws.ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    assert error_code(excinfo) == "IncorrectInstanceState"


def test_attach_and_detach_volume_tell_the_world(aws: Harness) -> None:
    instance_id, volume_id = aws.launch(), aws.volume()
    aws.ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    aws.ec2.detach_volume(VolumeId=volume_id)
    assert aws.hooks.of("volume_attached") == [(volume_id, instance_id, "/dev/sdf")]
    assert aws.hooks.of("volume_detached") == [(volume_id, instance_id, "/dev/sdf")]
    assert aws.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["State"] == "available"


# --- 6. disk and instance meaning ---------------------------------------------------------------

def test_snapshot_and_volume_from_it_tell_the_world(aws: Harness) -> None:
    volume_id = aws.volume(size=10)
    snapshot_id = aws.ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    # Point in time = the call: the world has captured it before the answer came back.
    assert aws.hooks.of("snapshot_created") == [(snapshot_id, volume_id)]

    with pytest.raises(ClientError) as excinfo:
        aws.volume(size=5, SnapshotId=snapshot_id)
    assert error_code(excinfo) == "InvalidParameterValue"
    restored = aws.volume(size=20, SnapshotId=snapshot_id, zone=OTHER_ZONE)
    assert aws.hooks.of("volume_created")[-1] == (restored, snapshot_id, 20)

    aws.ec2.delete_volume(VolumeId=restored)
    aws.ec2.delete_snapshot(SnapshotId=snapshot_id)
    assert aws.hooks.of("volume_deleted") == [(restored,)]
    assert aws.hooks.of("snapshot_deleted") == [(snapshot_id,)]


def test_delete_volume_refuses_an_attached_volume(aws: Harness) -> None:
    instance_id, volume_id = aws.launch(), aws.volume()
    aws.ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    with pytest.raises(ClientError) as excinfo:
        aws.ec2.delete_volume(VolumeId=volume_id)
    assert error_code(excinfo) == "VolumeInUse"
    assert aws.hooks.of("volume_deleted") == []


def test_instance_lifecycle_tells_the_world(aws: Harness) -> None:
    instance_id = aws.launch()
    private_ip = aws.ec2.describe_instances()["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
    assert aws.hooks.of("instance_launched") == [(instance_id, AMI, private_ip)]
    assert aws.state(instance_id) == "running"  # instant profile

    aws.ec2.stop_instances(InstanceIds=[instance_id])
    assert aws.state(instance_id) == "stopped"
    aws.ec2.start_instances(InstanceIds=[instance_id])
    volume_id = aws.volume()
    aws.ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    aws.ec2.terminate_instances(InstanceIds=[instance_id])
    assert aws.state(instance_id) == "terminated"
    assert aws.hooks.names() == [
        "instance_launched", "instance_running",
        "instance_stopping",
        "instance_running",
        "volume_created", "volume_attached",
        "instance_stopping", "volume_detached", "instance_terminated",
    ]


def test_console_output_comes_from_the_world(aws: Harness) -> None:
    instance_id = aws.launch()
    aws.hooks.console["other"] = "nothing"
    moto_output = aws.ec2.get_console_output(InstanceId=instance_id)["Output"]
    host_keys = "ec2: ssh-ed25519 AAAAC3Nz host\n"
    aws.hooks.console[instance_id] = host_keys
    # The proxy answers base64 as AWS does; botocore decodes it for the caller.
    assert aws.ec2.get_console_output(InstanceId=instance_id)["Output"] == host_keys
    assert moto_output != host_keys


# --- 7. images -----------------------------------------------------------------------------------

def _instance_with_data_volumes(aws: Harness) -> tuple[str, str, str]:
    instance_id, data, scratch = aws.launch(), aws.volume(size=12), aws.volume(size=4)
    aws.ec2.attach_volume(VolumeId=data, InstanceId=instance_id, Device="/dev/sdf")
    aws.ec2.attach_volume(VolumeId=scratch, InstanceId=instance_id, Device="/dev/sdg")
    return instance_id, data, scratch


def test_create_image_carries_attached_volumes_except_no_device(aws: Harness) -> None:
    instance_id, data, _ = _instance_with_data_volumes(aws)
    image_id = aws.ec2.create_image(
        InstanceId=instance_id, Name="kcn-golden", NoReboot=True,
        BlockDeviceMappings=[{"DeviceName": "/dev/sdg", "NoDevice": ""}],
    )["ImageId"]
    assert aws.hooks.of("image_created") == [(image_id, instance_id, {"/dev/sdf": data}, True)]

    image = aws.ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert image["State"] == "available"
    mappings = {m["DeviceName"]: m["Ebs"] for m in image["BlockDeviceMappings"]}
    assert sorted(mappings) == ["/dev/sda1", "/dev/sdf"]
    assert mappings["/dev/sdf"]["VolumeSize"] == 12
    snapshot = aws.ec2.describe_snapshots(SnapshotIds=[mappings["/dev/sdf"]["SnapshotId"]])["Snapshots"][0]
    assert snapshot["VolumeId"] == data
    assert aws.hooks.of("snapshot_created") == []  # the image holds the data, not a loose snapshot

    with pytest.raises(ClientError) as excinfo:
        aws.ec2.create_image(InstanceId=instance_id, Name="kcn-golden")
    assert error_code(excinfo) == "InvalidAMIName.Duplicate"


def test_create_image_tags_the_image_and_every_snapshot_it_makes(aws: Harness) -> None:
    instance_id, data, _ = _instance_with_data_volumes(aws)
    tags = [{"Key": "kaia:kind", "Value": "cn-image"}]
    image_id = aws.ec2.create_image(
        InstanceId=instance_id, Name="kcn-tagged", NoReboot=True,
        TagSpecifications=[{"ResourceType": "image", "Tags": tags}, {"ResourceType": "snapshot", "Tags": tags}],
    )["ImageId"]
    image = aws.ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert image["Tags"] == tags
    snapshot_ids = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]]
    assert len(snapshot_ids) == 3  # root, /dev/sdf, /dev/sdg
    for snapshot in aws.ec2.describe_snapshots(SnapshotIds=snapshot_ids)["Snapshots"]:
        assert snapshot["Tags"] == tags


def test_create_image_reboots_unless_no_reboot(aws: Harness) -> None:
    instance_id = aws.launch()
    aws.ec2.create_image(InstanceId=instance_id, Name="kcn-reboot")
    assert aws.hooks.of("image_created")[0][2:] == ({}, False)


def launched_ip(aws: Harness, instance_id: str) -> str:
    reservations = aws.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return reservations[0]["Instances"][0]["PrivateIpAddress"]


def test_launch_from_image_attaches_its_data_volumes(aws: Harness) -> None:
    instance_id, _, _ = _instance_with_data_volumes(aws)
    image_id = aws.ec2.create_image(InstanceId=instance_id, Name="kcn-golden")["ImageId"]
    image_snapshot = {
        m["DeviceName"]: m["Ebs"]["SnapshotId"]
        for m in aws.ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"]
    }["/dev/sdf"]
    aws.hooks.data_volumes[image_id] = {"/dev/sdf": 12, "/dev/sdg": 4}

    launched = aws.ec2.run_instances(
        ImageId=image_id, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": OTHER_ZONE},
        BlockDeviceMappings=[{"DeviceName": "/dev/sdg", "NoDevice": ""}],
    )["Instances"][0]["InstanceId"]

    volumes = aws.ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [launched]}])
    devices = {v["Attachments"][0]["Device"]: v for v in volumes["Volumes"]}
    assert "/dev/sdg" not in devices  # mapped NoDevice at launch
    volume = devices["/dev/sdf"]
    assert volume["AvailabilityZone"] == OTHER_ZONE
    assert (volume["Size"], volume["SnapshotId"]) == (12, image_snapshot)
    assert aws.hooks.of("volume_created")[-1] == (volume["VolumeId"], f"image:{image_id}:/dev/sdf", 12)
    assert aws.hooks.of("volume_attached")[-1] == (volume["VolumeId"], launched, "/dev/sdf")
    # The data volume is there before the instance boots.
    calls = aws.hooks.calls
    assert (calls.index(("instance_launched", launched, image_id, launched_ip(aws, launched)))
            < calls.index(("volume_attached", volume["VolumeId"], launched, "/dev/sdf"))
            < calls.index(("instance_running", launched)))

    # A volume made from the image's snapshot is known to the world by the image.
    restored = aws.volume(size=12, SnapshotId=image_snapshot)
    assert aws.hooks.of("volume_created")[-1] == (restored, f"image:{image_id}:/dev/sdf", 12)


def test_deregister_image_keeps_or_deletes_its_snapshots(aws: Harness) -> None:
    instance_id, _, _ = _instance_with_data_volumes(aws)
    image_id = aws.ec2.create_image(InstanceId=instance_id, Name="kcn-golden")["ImageId"]
    snapshots = [m["Ebs"]["SnapshotId"] for m in aws.ec2.describe_images(ImageIds=[image_id])["Images"][0]
                 ["BlockDeviceMappings"]]
    assert len(snapshots) == 3
    for snapshot_id in snapshots:
        with pytest.raises(ClientError) as excinfo:
            aws.ec2.delete_snapshot(SnapshotId=snapshot_id)
        assert error_code(excinfo) == "InvalidSnapshot.InUse"

    answer = aws.ec2.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
    assert {r["SnapshotId"]: r["ReturnCode"] for r in answer["DeleteSnapshotResults"]} == dict.fromkeys(
        snapshots, "success")
    assert aws.hooks.of("image_deregistered") == [(image_id,)]
    left = {s["SnapshotId"] for s in aws.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert not left & set(snapshots)
    # the name is free again
    aws.ec2.create_image(InstanceId=instance_id, Name="kcn-golden")


def test_deregister_image_without_flag_frees_its_snapshots(aws: Harness) -> None:
    instance_id, _, _ = _instance_with_data_volumes(aws)
    image_id = aws.ec2.create_image(InstanceId=instance_id, Name="kcn-golden")["ImageId"]
    mappings = aws.ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"]
    aws.ec2.deregister_image(ImageId=image_id)
    for mapping in mappings:
        aws.ec2.delete_snapshot(SnapshotId=mapping["Ebs"]["SnapshotId"])


# --- 8. states that take time ---------------------------------------------------------------------

def test_snapshot_is_pending_with_rising_progress_then_completed(make_aws) -> None:
    aws = make_aws("aws", time_scale=0.005)  # first snapshot of 1 GiB: 0.45 s
    volume_id = aws.volume(size=1)
    created = aws.ec2.create_snapshot(VolumeId=volume_id)
    assert created["State"] == "pending"
    snapshot_id = created["SnapshotId"]

    def describe() -> dict:
        return aws.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]

    progress = []
    while (snapshot := describe())["State"] == "pending":
        progress.append(int(snapshot["Progress"].rstrip("%")))
        time.sleep(0.05)
    assert snapshot["State"] == "completed" and snapshot["Progress"] == "100%"
    assert progress and progress == sorted(progress) and progress[-1] < 100

    with pytest.raises(ClientError) as excinfo:  # a volume needs a completed snapshot
        aws.volume(size=1, SnapshotId=aws.ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"])
    assert error_code(excinfo) == "IncorrectState"


def test_volume_is_creating_then_available(make_aws) -> None:
    aws = make_aws("aws", time_scale=0.1)  # creating: 0.5 s
    instance_id = aws.launch()
    volume_id = aws.volume()
    assert aws.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["State"] == "creating"
    with pytest.raises(ClientError) as excinfo:
        aws.ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    assert error_code(excinfo) == "IncorrectState"
    aws.ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig={"Delay": 0.1})
    aws.ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")


def test_instance_is_pending_then_running(make_aws) -> None:
    aws = make_aws("aws", time_scale=0.05)  # pending 1.5 s
    instance_id = aws.launch()
    assert aws.state(instance_id) == "pending"
    assert aws.ec2.describe_instance_status(InstanceIds=[instance_id])["InstanceStatuses"] == []
    status = aws.ec2.describe_instance_status(InstanceIds=[instance_id], IncludeAllInstances=True)
    assert status["InstanceStatuses"][0]["InstanceState"]["Name"] == "pending"
    with pytest.raises(ClientError) as excinfo:
        aws.ec2.stop_instances(InstanceIds=[instance_id])
    assert error_code(excinfo) == "IncorrectInstanceState"
    assert aws.hooks.of("instance_running") == []

    wait_for(lambda: aws.state(instance_id) == "running")
    # Fired by the timer thread, before "running" showed.
    assert aws.hooks.of("instance_running") == [(instance_id,)]


def test_instance_is_stopping_then_stopped(make_aws) -> None:
    aws = make_aws("aws", time_scale=0.02)  # pending 0.6 s, stopping 1.2 s
    instance_id = aws.launch()
    wait_for(lambda: aws.hooks.of("instance_running"))
    stopped = aws.ec2.stop_instances(InstanceIds=[instance_id])["StoppingInstances"][0]
    assert stopped["CurrentState"] == {"Code": 64, "Name": "stopping"}
    assert aws.hooks.of("instance_stopping") == [(instance_id, True)]  # graceful: no SkipOsShutdown
    assert aws.state(instance_id) == "stopping"
    with pytest.raises(ClientError) as excinfo:
        aws.ec2.start_instances(InstanceIds=[instance_id])
    assert error_code(excinfo) == "IncorrectInstanceState"
    wait_for(lambda: aws.state(instance_id) == "stopped")


def test_instance_terminated_hook_waits_for_shutting_down(make_aws) -> None:
    aws = make_aws("aws", time_scale=0.02)  # pending 0.6 s, shutting-down 1.2 s
    instance_id = aws.launch()
    wait_for(lambda: aws.hooks.of("instance_running"))
    aws.ec2.terminate_instances(InstanceIds=[instance_id])
    assert aws.state(instance_id) == "shutting-down"
    assert aws.hooks.of("instance_terminated") == []
    wait_for(lambda: aws.hooks.of("instance_terminated"))
    assert aws.state(instance_id) == "terminated"


def test_image_is_pending_then_available(make_aws) -> None:
    aws = make_aws("aws", time_scale=0.002)  # root first snapshot 0.6 s + registration 0.12 s
    instance_id = aws.launch()
    image_id = aws.ec2.create_image(InstanceId=instance_id, Name="kcn-slow", NoReboot=True)["ImageId"]
    assert aws.ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] == "pending"
    with pytest.raises(ClientError) as excinfo:
        aws.launch(image_id=image_id)
    assert error_code(excinfo) == "InvalidAMIID.Unavailable"
    wait_for(lambda: aws.ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] == "available")
    aws.launch(image_id=image_id)


def test_rewritten_xml_keeps_the_default_namespace() -> None:
    ns = "http://ec2.amazonaws.com/doc/2016-11-15/"
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<DescribeVolumesResponse xmlns="{ns}"><volumeSet><item>'
            "<volumeId>vol-1</volumeId><status>available</status></item></volumeSet>"
            "</DescribeVolumesResponse>")
    reply = _Reply(200, [], body.encode())
    root = ET.fromstring(reply.body)
    root.find(f"{{{ns}}}volumeSet/{{{ns}}}item/{{{ns}}}status").text = "creating"
    out = _rewritten(reply, root).body.decode()
    assert f'<DescribeVolumesResponse xmlns="{ns}">' in out
    assert "ns0" not in out and "<status>creating</status>" in out


# --- latency profiles ----------------------------------------------------------------------------

def test_latency_profiles() -> None:
    instant = Latency("instant", time_scale=5)
    assert instant.snapshot(500, False) == instant.instance_pending() == instant.image([(8, False)]) == 0
    scaled = Latency("aws", time_scale=0.5)
    assert scaled.snapshot(100, incremental=False) > scaled.snapshot(10, incremental=False)
    assert scaled.snapshot(1000, incremental=True) == scaled.snapshot(1, incremental=True)
    assert scaled.image([(8, False), (100, False)]) > scaled.snapshot(100, False)
    assert Latency("aws", 1.0).instance_pending() == 2 * scaled.instance_pending()
    with pytest.raises(ValueError):
        Latency("fast")
