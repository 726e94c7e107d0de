"""EC2 stops as the simulated AWS gives them their meaning (moto stops at once and ignores the parameters): a graceful
stop shuts the OS down (the node closes its database) and takes about a minute, SkipOsShutdown is a power-off in
seconds (the node dies), and a stop that hangs stays `stopping` until a stop with Force."""

from __future__ import annotations

import json
import time


def data_volume_clean(cell, instance_id: str) -> bool:
    ec2 = cell.client("ec2")
    instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    mapping = instance["BlockDeviceMappings"]
    volume = next(m["Ebs"]["VolumeId"] for m in mapping if m["DeviceName"] == "/dev/sdf")
    return json.loads((cell.state_dir / "ebs" / "volumes" / volume / "klay" / "chaindata" / "misc" / "CURRENT.json")
                      .read_text())["clean"]


def stopped_after(cell, instance_id: str, timeout: float = 30) -> float:
    ec2, started = cell.client("ec2"), time.monotonic()
    cell.wait_for(lambda: ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
                  ["State"]["Name"] == "stopped", timeout=timeout, what=f"{instance_id} stopped")
    return time.monotonic() - started


def test_graceful_stop_skip_os_shutdown_and_a_hung_stop_that_only_force_ends(fresh_cell):
    cell = fresh_cell
    ec2 = cell.client("ec2")
    cell.cli("latency", "--profile", "aws", "--time-scale", "0.05")  # graceful 3 s, without the OS 0.25 s, forced 0.5 s
    graceful, skipped, hung = (cell.node(n)["instance_id"] for n in ("pn-aws-2", "cn-aws-1", "pn-aws-1"))

    ec2.stop_instances(InstanceIds=[graceful])
    assert stopped_after(cell, graceful) > 2 and data_volume_clean(cell, graceful)

    ec2.stop_instances(InstanceIds=[skipped], SkipOsShutdown=True)
    assert stopped_after(cell, skipped) < 2 and not data_volume_clean(cell, skipped)

    cell.fault(f"stuck-stop:{hung}")
    ec2.stop_instances(InstanceIds=[hung], SkipOsShutdown=True)
    time.sleep(3)
    assert ec2.describe_instances(InstanceIds=[hung])["Reservations"][0]["Instances"][0]["State"]["Name"] == "stopping"
    ec2.stop_instances(InstanceIds=[hung], Force=True)
    forced = time.monotonic()

    def state() -> str:
        return ec2.describe_instances(InstanceIds=[hung])["Reservations"][0]["Instances"][0]["State"]["Name"]

    # Force repeated faster than the forced stop takes (a caller polling every second at AWS's pace): the stop
    # still ends, as on AWS, instead of starting over at each request.
    while state() == "stopping" and time.monotonic() - forced < 10:
        ec2.stop_instances(InstanceIds=[hung], Force=True)
        time.sleep(0.1)
    assert state() == "stopped" and time.monotonic() - forced < 5
