"""How long the simulated AWS takes to make a resource ready.

moto makes every resource ready at once; the front layer (``simcell.aws.proxy``) shows the
transitional state (``pending``, ``creating``, ``stopping`` ...) for as long as this module says.

Profiles:

- ``instant``: every duration is 0 (the state is final as soon as the call returns; the hooks of a
  transition, e.g. ``instance_running``, still fire, synchronously).
- ``aws``: the figures below, each multiplied by ``time_scale`` (e.g. 0.01 for a demo).

Figures of the ``aws`` profile, in seconds:

| Transition                                     | Seconds                  | Basis                   |
|------------------------------------------------|--------------------------|-------------------------|
| snapshot ``pending``, first of a volume        | 60 + 30 per GiB          | estimate from [1][2][3] |
| snapshot ``pending``, incremental (the volume  | 300                      | estimate from [1][2]    |
| already has a completed snapshot)              |                          |                         |
| volume ``creating``                            | 5                        | estimate, see [4]       |
| instance ``pending`` (launch, start)           | 30                       | measurements [5][6]     |
| instance ``stopping``                          | 60                       | estimate from [7]       |
| instance ``stopping`` with ``SkipOsShutdown``  | 5                        | estimate from [9]       |
| instance ``stopping`` with ``Force``           | 10                       | estimate from [7][9]    |
| instance ``shutting-down``                     | 60                       | estimate from [8]       |
| image ``pending``                              | 60 + its slowest snapshot| estimate from [2]       |

[1] AWS, "Create Amazon EBS snapshots",
    https://docs.aws.amazon.com/ebs/latest/userguide/ebs-creating-snapshot.html : a snapshot stays
    pending until its data is copied, which "can take several hours to complete, depending on the
    number of modified blocks".
[2] AWS re:Post, "Why is my EC2 AMI or EBS snapshot creation slow?",
    https://repost.aws/knowledge-center/ebs-snapshot-ec2-ami-creation-slow : a volume without an
    earlier snapshot has every block dirty (the first snapshot is a full copy); later ones copy only
    changed blocks; an EBS-backed AMI is one snapshot per volume.
[3] AWS publishes no rate. Users report ~45 min for a first snapshot
    (https://serverdevworker.com/17225bf91) and ~2.5 h for a 100 GB AMI (a Stack Overflow answer,
    mirrored at https://kaijuan.co/qa/19074756); 30 s/GiB (~34 MiB/s) puts 100 GiB at ~50 min and
    1 TiB at ~8.5 h ("several hours"). Incremental: a fixed 5 min stands for "a few changed blocks".
[4] AWS publishes no figure. A volume made from a snapshot is usable before its data is loaded
    ("Initialize Amazon EBS volumes", https://docs.aws.amazon.com/ebs/latest/userguide/initalize-volume.html),
    so its size does not count.
[5] C. Percival, "EC2 boot time benchmarking",
    https://www.daemonology.net/blog/2021-08-12-EC2-boot-time-benchmarking.html : pending->running 4.9 s,
    then 22.8 s until sshd answers (c5.xlarge). The world starts sshd at ``instance_running``, so
    ``pending`` covers both.
[6] brevdev/ec2-coldboot-research (GitHub): pending->running 16.4-16.6 s on current instance types.
[7] AWS, "Stop and start your instance",
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Stop_Start.html : without a clean shutdown
    "within a few minutes" EC2 forces it; a clean systemd shutdown takes well under that.
[9] AWS, "StopInstances" (EC2 API reference) and "Stop and start your instance":
    ``SkipOsShutdown`` "bypasses the graceful OS shutdown" (no operating system shutdown is attempted, so the
    stop is the hypervisor's power-off, seconds rather than a systemd shutdown); ``Force`` ends an instance
    stuck in ``stopping`` ("forces the instances to stop ... the instances do not have an opportunity to flush
    file system caches"). AWS publishes no durations for either: 5 s and 10 s are estimates.
[8] AWS, "Troubleshoot instance termination (shutting down)",
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/TroubleshootingInstancesShuttingDown.html :
    shutting-down "longer than a few minutes" is a delay.
"""

from __future__ import annotations

from collections.abc import Iterable

PROFILES = ("instant", "aws")

FIRST_SNAPSHOT_BASE_S = 60.0
FIRST_SNAPSHOT_S_PER_GIB = 30.0
INCREMENTAL_SNAPSHOT_S = 300.0
VOLUME_CREATING_S = 5.0
INSTANCE_PENDING_S = 30.0
INSTANCE_STOPPING_S = 60.0
INSTANCE_STOPPING_SKIP_OS_S = 5.0
INSTANCE_STOPPING_FORCED_S = 10.0
STUCK_S = 7 * 24 * 3600.0  # a stop that hangs (the `stuck-stop` fault): only Force ends it
INSTANCE_SHUTTING_DOWN_S = 60.0
IMAGE_REGISTER_S = 60.0


class Latency:
    """Durations (seconds, already scaled) of the transitions the front layer models."""

    def __init__(self, profile: str = "instant", time_scale: float = 1.0) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown latency profile {profile!r}, expected one of {PROFILES}")
        if time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        # instant = every figure times 0: one code path for both profiles.
        self.scale = 0.0 if profile == "instant" else time_scale

    def snapshot(self, size_gib: int, incremental: bool) -> float:
        if incremental:
            return INCREMENTAL_SNAPSHOT_S * self.scale
        return (FIRST_SNAPSHOT_BASE_S + FIRST_SNAPSHOT_S_PER_GIB * size_gib) * self.scale

    def volume_creating(self) -> float:
        return VOLUME_CREATING_S * self.scale

    def instance_pending(self) -> float:
        return INSTANCE_PENDING_S * self.scale

    def instance_stopping(self, skip_os_shutdown: bool = False) -> float:
        return (INSTANCE_STOPPING_SKIP_OS_S if skip_os_shutdown else INSTANCE_STOPPING_S) * self.scale

    def instance_forced_stop(self) -> float:
        return INSTANCE_STOPPING_FORCED_S * self.scale

    def instance_shutting_down(self) -> float:
        return INSTANCE_SHUTTING_DOWN_S * self.scale

    def image(self, snapshots: Iterable[tuple[int, bool]]) -> float:
        """``snapshots``: ``(size_gib, incremental)`` of every volume in the image."""
        slowest = max((self.snapshot(size, incr) for size, incr in snapshots), default=0.0)
        return IMAGE_REGISTER_S * self.scale + slowest
