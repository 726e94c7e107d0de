"""The cloud failover in the `aws` latency profile: EC2 and EBS take their time (instances pending and
stopping, volumes creating), and the DAG waits on them without holding a worker slot, then ends in sync.

The cell is kept (maintenance: key backup, image, pre-taken snapshot) in the instant profile, as a
well-kept core cell would have been long before the incident; the latency switches to `aws` for the
failover itself.
"""

from __future__ import annotations

DAG_ID = "kaia_cn_failover_cloud"
SCALE = 0.05  # a 30 s pending takes 1.5 s: long enough for every wait to see the transitional states


def test_a_failover_with_aws_latencies_waits_for_each_transition_and_ends_in_sync(own_cell_airflow):
    from simcell.aws import latency

    cell, runner = own_cell_airflow
    validator = cell.node("cn-aws-1")
    cell.cli("latency", "--profile", "aws", "--time-scale", str(SCALE))
    cell.break_("cn-aws-1", "kill")
    run_id, state, states = runner.run(DAG_ID, {"failed_cn": "cn-aws-1"})
    assert state == "success", {k: v for k, v in states.items() if v[0] != "success"}
    report = runner.report(DAG_ID, run_id)
    at = {step["task"]: step for step in report["timeline"]}

    def span(first: str, last: str) -> float:
        return at[last]["t_end"] - at[first]["t_start"]

    # The waits lasted as long as AWS took: the DAG did not race past a stopping or a pending instance.
    # The fence's stop is the one without the OS shutdown (the default).
    assert span("fence.fence", "fence.wait_stopped") >= 0.9 * latency.INSTANCE_STOPPING_SKIP_OS_S * SCALE
    assert "without the OS shutdown" in report["facts"]["fence stop"]
    assert span("launch.launch", "launch.wait_running") >= 0.9 * latency.INSTANCE_PENDING_S * SCALE
    assert report["rto_seconds"] > latency.INSTANCE_PENDING_S * SCALE
    live = [n for n in cell.status()["nodes"] if n["node_id"] == validator["node_id"] and n["running"]]
    assert len(live) == 1 and live[0]["ip"] == validator["ip"]
    assert cell.status()["double_signing_events"] == []
