"""The cloud failover done by hand, in the Kaia docs' order, one step after another (the baseline).

    source scripts/airflow-env.sh && . .simcell/env && .venv/bin/python bench/sequential_failover.py cn-aws-1

The same step functions the DAG runs (``kaia_ha.failover_cloud``, ``kaia_ha.maintenance``), called in
the docs' order without the DAG's parallelism: preflight (the operator looks up the IDs), fence (the
DAG does it, so the baseline does too), stop kpnd on a PN, snapshot, start kpnd, launch a CN from the
image, wait running, wait for the snapshot, create a volume from it, wait available, attach and mount,
prune (checks DATA_DIR), copy the nodekey, move the Elastic IP, start kcnd, wait until in sync.
Every wait polls every POLL seconds, the DAG's sensor interval, so only the order differs.
"""

from __future__ import annotations

import datetime
import sys
import time

POLL = 5.0  # the DAG's sensors poke (or their triggers poll) every 5 s


def wait(what: str, check, poll: float = POLL, timeout: float = 3600):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout} s")
        time.sleep(poll)


def run(failed_cn: str, poll: float = POLL) -> dict:
    """Fail over ``failed_cn`` step by step; ``{"rto_seconds", "timeline": [{task, t_start, t_end, seconds}]}``."""
    from kaia_ha import failover_cloud as steps
    from kaia_ha import pn
    from kaia_ha_airflow.hooks.ec2 import CoreCellEC2Hook

    t0 = time.time()
    timeline = []

    def timed(task: str, fn, *args):
        start = time.time()
        value = fn(*args)
        end = time.time()
        timeline.append({"task": task, "t_start": round(start - t0, 2), "t_end": round(end - t0, 2),
                         "seconds": round(end - start, 2)})
        return value

    run_id = "sequential-" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    plan = timed("preflight", steps.preflight, {"failed_cn": failed_cn, "use_presnapshot": False}, run_id,
                 datetime.datetime.now(datetime.timezone.utc))
    ec2 = CoreCellEC2Hook(aws_conn_id="kaia_aws", region_name="us-east-1").conn

    def state(instance_id: str) -> str:
        return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]

    timed("fence", steps.fence, plan)
    timed("wait_stopped", wait, "stopped", lambda: state(plan["failed_instance_id"]) == "stopped", poll)
    timed("confirm_fenced", steps.confirm_fenced, plan)
    timed("stop_kpnd", pn.stop_pn, plan["cell"], plan["snapshot_pn"])
    snapshot = timed("create_snapshot", lambda: ec2.create_snapshot(
        VolumeId=plan["pn_volume_id"], Description="Kaia PN chain data (sequential failover)",
        TagSpecifications=[{"ResourceType": "snapshot",
                            "Tags": [{"Key": k, "Value": v} for k, v in plan["snapshot_tags"].items()]}],
    )["SnapshotId"])
    timed("start_kpnd", pn.start_pn, plan["cell"], plan["snapshot_pn"])
    instance_id = timed("launch", steps.launch, plan)
    host = timed("wait_running", wait, "running, with its host key",
                 lambda: steps.running_host(plan, instance_id), poll)
    timed("wait_snapshot", wait, "snapshot completed",
          lambda: ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["State"] == "completed", poll)
    chosen = timed("chaindata_snapshot", steps.chaindata_snapshot, plan, snapshot)
    volume_id = timed("create_volume", steps.create_volume, plan, chosen)
    timed("volume_available", wait, "volume available",
          lambda: ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["State"] == "available", poll)
    timed("attach_and_mount", steps.attach_and_mount, plan, host, volume_id)
    timed("prune", steps.prune, plan, host)
    timed("install_keys", steps.install_keys, plan, host)
    timed("move_ip", steps.move_ip, plan, host)
    timed("start_kcnd", steps.start_kcnd, plan, host)
    timed("in_sync", wait, "in sync", lambda: steps.in_sync(plan, host), poll)
    return {"rto_seconds": timeline[-1]["t_end"], "timeline": timeline, "snapshot_id": snapshot,
            "instance_id": instance_id}


if __name__ == "__main__":
    result = run(sys.argv[1] if len(sys.argv) > 1 else "cn-aws-1")
    for s in result["timeline"]:
        print(f"{s['t_start']:>8} -> {s['t_end']:>8}  {s['seconds']:>7}s  {s['task']}")
    print(f"RTO {result['rto_seconds']} s")
