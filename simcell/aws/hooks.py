"""The seam between the AWS front layer and the simulated world (hosts, disks, network).

The front layer (``simcell.aws.proxy``) decides *when* something happens (after moto answered, after a
latency-profile delay); the world decides *what* it means on disk and on the network. Every hook is
called from the proxy's threads and must be quick; none may raise for a resource it does not know
(the proxy may see resources the world never created, e.g. made directly in moto by a test).
"""

from __future__ import annotations

from typing import Protocol


class WorldHooks(Protocol):
    # --- EBS -------------------------------------------------------------------------------------
    def snapshot_created(self, snapshot_id: str, volume_id: str) -> None:
        """Point in time: capture the volume's files *now* (at the CreateSnapshot call)."""

    def volume_created(self, volume_id: str, snapshot_id: str | None, size_gib: int) -> None:
        """A new volume: a copy of the snapshot's files, or empty."""

    def volume_attached(self, volume_id: str, instance_id: str, device: str) -> None:
        """The volume is now visible to the instance's OS as ``device``."""

    def volume_detached(self, volume_id: str, instance_id: str, device: str) -> None: ...

    def volume_deleted(self, volume_id: str) -> None: ...

    def snapshot_deleted(self, snapshot_id: str) -> None: ...

    # --- EC2 instances -------------------------------------------------------------------------------
    def instance_launched(self, instance_id: str, image_id: str, private_ip: str) -> None:
        """RunInstances returned (state pending): make the host's root files from the image."""

    def instance_user_data(self, instance_id: str, text: str) -> None:
        """RunInstances carried user data: cloud-init runs its ``bootcmd`` at boot, before services start."""

    def instance_running(self, instance_id: str) -> None:
        """pending -> running (or stopped -> running): boot the host (sshd, enabled services)."""

    def instance_stopping(self, instance_id: str) -> None:
        """The OS shuts down: services get SIGTERM, then the host (sshd) goes away."""

    def instance_terminated(self, instance_id: str) -> None: ...

    def console_output(self, instance_id: str) -> str | None:
        """What GetConsoleOutput shows (cloud-init prints the SSH host keys there), or None."""

    # --- Images ----------------------------------------------------------------------------------------
    def image_created(
        self, image_id: str, instance_id: str, included_devices: dict[str, str], no_reboot: bool
    ) -> None:
        """CreateImage: capture the root files and each included data volume ``{device: volume_id}``.

        A device mapped ``NoDevice`` in the request is NOT in ``included_devices``. With
        ``no_reboot`` False the instance is rebooted (its services restart).
        """

    def image_deregistered(self, image_id: str) -> None: ...

    def image_data_volumes(self, image_id: str) -> dict[str, int]:
        """``{device: size_gib}`` of the data volumes the image carries (launched with it)."""

    # --- Elastic IPs -----------------------------------------------------------------------------------
    def address_moved(self, public_ip: str, instance_id: str | None) -> None:
        """The Elastic IP now routes to ``instance_id`` (None: disassociated)."""
