"""EC2 and EBS calls of the core-cell DAGs that the Amazon provider's EC2Hook does not wrap.

Every method that calls EC2 names the IAM actions it needs (``@needs``; ``kaia_ha_airflow.iam`` makes the policy).
Creation calls that have no ClientToken (CreateImage, CreateSnapshot) go through ``create_once``:
botocore's own retry would repeat them blindly after a dropped connection and make a duplicate, so
they are sent once per attempt and each attempt first looks for what an earlier one made (by tags).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from functools import cached_property

import botocore.config
import botocore.exceptions
from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook

from kaia_ha.model import tags as T
from kaia_ha_airflow.iam import needs

log = logging.getLogger(__name__)

RETRYABLE_CODES = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "InternalError", "Unavailable",
                   "ServiceUnavailable", "InternalFailure"}
NOT_FOUND_CODES = {"InvalidAMIID.NotFound", "InvalidAMIID.Unavailable", "InvalidSnapshot.NotFound",
                   "InvalidVolume.NotFound",
                   "InvalidInstanceID.NotFound"}


def error_code(exc: Exception) -> str | None:
    if isinstance(exc, botocore.exceptions.ClientError):
        return exc.response.get("Error", {}).get("Code")
    return None


def is_transient(exc: Exception) -> bool:
    """Throttling, a 5xx, or a connection that dropped before we saw the answer."""
    if isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        return True
    return error_code(exc) in RETRYABLE_CODES


def create_once(find: Callable[[], dict | None], create: Callable[[], dict], what: str, attempts: int = 6,
                base_delay: float = 1.0) -> tuple[dict, bool]:
    """Create a resource that has no ClientToken at most once: ``(resource, created_now)``."""
    for attempt in itertools.count(1):
        existing = find()
        if existing:
            return existing, False
        try:
            return create(), True
        except Exception as exc:
            if not is_transient(exc) or attempt >= attempts:
                raise
            delay = base_delay * 2 ** (attempt - 1)
            log.warning("%s: %s on attempt %d; looking for it again in %.0fs", what,
                        error_code(exc) or type(exc).__name__, attempt, delay)
            time.sleep(delay)


class CoreCellEC2Hook(EC2Hook):
    """``EC2Hook`` (client API) with the image and snapshot calls a core cell needs."""

    def __init__(self, *args, **kwargs):
        kwargs["api_type"] = "client_type"
        super().__init__(*args, **kwargs)

    @property
    def config(self) -> botocore.config.Config:
        """The connection's botocore config; without a retry policy of its own, botocore's standard mode. The legacy
        default retries EC2's RequestLimitExceeded only with HTTP 503: a throttled Describe* then failed the task at
        once, and a preflight of five throttled reads ran out of task retries (found by the fault matrix)."""
        config = super().config
        if config.retries is None:
            config = config.merge(botocore.config.Config(retries={"mode": "standard", "max_attempts": 8}))
        return config

    @cached_property
    def once(self):
        """A client that never retries by itself: for calls without a ClientToken (see ``create_once``)."""
        return self.get_client_type(config=botocore.config.Config(retries={"total_max_attempts": 1,
                                                                           "mode": "standard"}))

    # ----- find ------------------------------------------------------------------------------------------
    @needs("ec2:DescribeImages")
    def find_images(self, tags: dict[str, str]) -> list[dict]:
        """Images owned by this account with all ``tags``, newest first."""
        images = self.conn.describe_images(Owners=["self"], Filters=T.filters(tags))["Images"]
        return sorted(images, key=lambda i: i.get("CreationDate", ""), reverse=True)

    @needs("ec2:DescribeSnapshots")
    def find_snapshots(self, tags: dict[str, str]) -> list[dict]:
        """Snapshots owned by this account with all ``tags``, newest first."""
        pages = self.conn.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], Filters=T.filters(tags))
        snapshots = [s for page in pages for s in page["Snapshots"]]
        return sorted(snapshots, key=lambda s: s["StartTime"], reverse=True)

    @needs("ec2:DescribeInstances")
    def find_instances(self, tags: dict[str, str], states: tuple[str, ...]) -> list[dict]:
        """Instances with all ``tags`` in one of ``states``."""
        filters = T.filters(tags) + [{"Name": "instance-state-name", "Values": list(states)}]
        pages = self.conn.get_paginator("describe_instances").paginate(Filters=filters)
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    # ----- create ----------------------------------------------------------------------------------------
    @needs("ec2:CreateImage", "ec2:CreateTags", "ec2:DescribeImages")
    def create_image(self, *, instance_id: str, name: str, exclude_devices: list[str], tags: dict[str, str],
                     no_reboot: bool, description: str = "") -> tuple[str, bool]:
        """CreateImage without the listed devices (mapped NoDevice); found again by its unique name."""

        def find():
            found = self.conn.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]
            return found[0] if found else None

        def create():
            try:
                return self.once.create_image(
                    InstanceId=instance_id, Name=name, Description=description, NoReboot=no_reboot,
                    BlockDeviceMappings=[{"DeviceName": d, "NoDevice": ""} for d in exclude_devices],
                    TagSpecifications=[{"ResourceType": "image", "Tags": T.tag_list(tags)},
                                       {"ResourceType": "snapshot", "Tags": T.tag_list(tags)}],
                )
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) == "InvalidAMIName.Duplicate":  # an earlier attempt made it after all
                    return find()
                raise

        image, created = create_once(find, create, f"CreateImage {name}")
        return image["ImageId"], created

    @needs("ec2:CreateSnapshot", "ec2:CreateTags")
    def create_snapshot(self, *, volume_id: str, tags: dict[str, str], description: str) -> tuple[dict, bool]:
        """CreateSnapshot of a volume, once per run (found again by its run tags)."""
        match = {**tags, T.SOURCE_VOLUME: volume_id}

        def find():
            found = self.find_snapshots(match)
            return found[0] if found else None

        def create():
            return self.once.create_snapshot(
                VolumeId=volume_id, Description=description,
                TagSpecifications=[{"ResourceType": "snapshot", "Tags": T.tag_list(match)}],
            )

        return create_once(find, create, f"CreateSnapshot {volume_id}")

    # ----- delete ----------------------------------------------------------------------------------------
    @needs("ec2:DeregisterImage", "ec2:DeleteSnapshot")
    def deregister_image(self, image_id: str) -> bool:
        """Deregister an image and delete its snapshots; NotFound counts as done."""
        try:
            self.conn.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
            return True
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in NOT_FOUND_CODES:
                return False
            raise

    @needs("ec2:DeleteSnapshot")
    def delete_snapshot(self, snapshot_id: str) -> bool:
        """Delete a snapshot; NotFound counts as done."""
        try:
            self.conn.delete_snapshot(SnapshotId=snapshot_id)
            return True
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in NOT_FOUND_CODES:
                return False
            raise

    # ----- failover -----------------------------------------------------------------------------------
    @needs("ec2:DescribeInstances")
    def instance(self, instance_id: str) -> dict:
        return self.conn.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]

    @needs("ec2:RunInstances", "ec2:CreateTags")
    def launch_instance(self, *, image_id: str, launch, client_token: str, tags: dict[str, str],
                        user_data: str = "") -> str:
        """RunInstances with a ClientToken: a retry gets the same instance back (tags on create need CreateTags)."""
        config = {
            "ImageId": image_id, "MinCount": 1, "MaxCount": 1, "InstanceType": launch.instance_type,
            "SubnetId": launch.subnet_id, "SecurityGroupIds": list(launch.security_group_ids),
            "ClientToken": client_token,
            "TagSpecifications": [{"ResourceType": "instance", "Tags": T.tag_list(tags)}],
        }
        if launch.key_name:
            config["KeyName"] = launch.key_name
        if user_data:
            config["UserData"] = user_data
        return self.conn.run_instances(**config)["Instances"][0]["InstanceId"]

    @needs("ec2:CreateVolume", "ec2:CreateTags")
    def create_volume(self, *, snapshot_id: str, zone: str, size: int, client_token: str, tags: dict[str, str],
                      initialization_rate: int | None = None) -> str:
        """CreateVolume from a snapshot with a ClientToken."""
        args = {"SnapshotId": snapshot_id, "AvailabilityZone": zone, "Size": size, "VolumeType": "gp3", "Iops": 9000,
                "ClientToken": client_token, "TagSpecifications": [{"ResourceType": "volume",
                                                                    "Tags": T.tag_list(tags)}]}
        if initialization_rate:
            args["VolumeInitializationRate"] = initialization_rate
        return self.conn.create_volume(**args)["VolumeId"]

    @needs("ec2:AttachVolume", "ec2:DescribeVolumes")
    def attach_volume(self, *, volume_id: str, instance_id: str, device: str) -> str:
        """Attach unless it is already attached there (a retry)."""
        volume = self.conn.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
        for attachment in volume.get("Attachments", []):
            if attachment["InstanceId"] == instance_id and attachment["Device"] == device:
                return "already attached"
            raise RuntimeError(f"volume {volume_id} is attached to {attachment['InstanceId']} "
                               f"at {attachment['Device']}")
        self.conn.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device=device)
        return "attached"

    @needs("ec2:DescribeAddresses")
    def address(self, allocation_id: str) -> dict:
        return self.conn.describe_addresses(AllocationIds=[allocation_id])["Addresses"][0]

    @needs("ec2:AssociateAddress")
    def move_address(self, *, allocation_id: str, instance_id: str) -> dict:
        """Associate the Elastic IP with the instance, moving it if in use (AllowReassociation, passed
        explicitly: moto and some SDKs default it to false)."""
        if self.address(allocation_id).get("InstanceId") != instance_id:
            self.conn.associate_address(AllocationId=allocation_id, InstanceId=instance_id, AllowReassociation=True)
        return self.address(allocation_id)

    @needs("ec2:StopInstances")
    def stop_instance(self, instance_id: str, *, skip_os_shutdown: bool = False, force: bool = False) -> str:
        """StopInstances unless already stopped (or stopping, unless ``force``): ``skip_os_shutdown`` powers off without
        the OS's shutdown, ``force`` ends a stop that hangs."""
        state = self.instance(instance_id)["State"]["Name"]
        if state in ("pending", "running") or (force and state == "stopping"):
            self.conn.stop_instances(InstanceIds=[instance_id], SkipOsShutdown=skip_os_shutdown, Force=force)
        return state

    @needs("ec2:GetConsoleOutput")
    def host_key_from_console(self, instance_id: str, key_type: str = "ssh-ed25519") -> str | None:
        """The instance's SSH host key as cloud-init printed it on the console: learned over the EC2 API,
        which is authenticated, instead of trusting whatever answers on first connect."""
        # botocore decodes it
        text = self.conn.get_console_output(InstanceId=instance_id, Latest=True).get("Output") or ""
        inside = text.split("-----BEGIN SSH HOST KEY KEYS-----", 1)[-1].split("-----END SSH HOST KEY KEYS-----", 1)[0]
        for line in inside.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == key_type:
                return f"{parts[0]} {parts[1]}"
        return None

    @needs("ec2:DetachVolume")
    def detach_for_good(self, instance_id: str, device: str, tags: dict[str, str]) -> str | None:
        """Detach the volume at ``device`` of a stopped instance and tag it (kept, never deleted); None when nothing is
        attached there (an earlier try did it)."""
        mapping = next((m for m in self.instance(instance_id).get("BlockDeviceMappings", [])
                        if m["DeviceName"] == device), None)
        if mapping is None or "Ebs" not in mapping:
            return None
        volume_id = mapping["Ebs"]["VolumeId"]
        self.tag(volume_id, tags)  # first: a try that dies after the detach still leaves the volume findable
        self.conn.detach_volume(VolumeId=volume_id, InstanceId=instance_id, Device=device)
        return volume_id

    @needs("ec2:CreateTags")
    def tag(self, resource_id: str, tags: dict[str, str]) -> None:
        self.conn.create_tags(Resources=[resource_id], Tags=T.tag_list(tags))
