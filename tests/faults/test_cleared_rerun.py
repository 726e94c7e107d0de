"""Every step of both failovers fails once for good, and the operator clears it: the same run then goes on and
finishes the job, with nothing made twice.

One run per failover, in rounds. Every task's retries are forced to 0 (``retries=0``), so one fault fails a
step; the faults of a round hit steps of independent branches, and most are ``drop-after`` or an AWS ``drop``:
the step's work is done and only its answer is lost, the half-done try a clear has to cope with. After each
failed round: the failed steps are the expected ones and the report names them, nothing is made twice, no
double signing; then the faults are cleared and the run is cleared and driven on (``clear_and_rerun``).
"""

from __future__ import annotations

import pytest

from faultkit import CLOUD, MAINTENANCE, METAL, Fault, cell_with_airflow, duplicates, full_sweep, made_by_run

pytestmark = [full_sweep, pytest.mark.timeout(1800)]


def aws(dag_id, action, kind="drop", times=10):  # times: more than botocore's own attempts in one task try
    return Fault(dag_id, action, kind, times)


def ssh(dag_id, step, host, match, kind="drop-after"):
    return Fault(dag_id, f"ssh:{host}", kind, 1, match, step)


# (the steps that must fail in this round, the faults that fail them). A failed step stops only what is downstream
# of it: each round also fails what would otherwise run on to the steps of the next rounds.
CLOUD_ROUNDS = [
    (["preflight"], [ssh(CLOUD, "preflight", "pn-aws-1", "kpn version", "drop")]),
    (["fence.fence", "launch.launch", "chain_data.fresh_snapshot.stop_kpnd"],
     [aws(CLOUD, "StopInstances"), aws(CLOUD, "RunInstances"),
      ssh(CLOUD, "chain_data.fresh_snapshot.stop_kpnd", "pn-aws-1", "systemctl stop kpnd")]),
    (["launch.wait_running", "chain_data.fresh_snapshot.create_snapshot"],
     [aws(CLOUD, "GetConsoleOutput", "server-error"), aws(CLOUD, "CreateSnapshot", "server-error", 6)]),
    (["chain_data.fresh_snapshot.start_kpnd", "chain_data.chaindata_snapshot"],  # the PN stays down until the clear
     [ssh(CLOUD, "chain_data.fresh_snapshot.start_kpnd", "pn-aws-1", "systemctl start kpnd", "drop"),
      aws(CLOUD, "CreateTags")]),
    (["chain_data.create_volume"], [aws(CLOUD, "CreateVolume")]),
    (["replace.attach_and_mount"], [ssh(CLOUD, "replace.attach_and_mount", "*", "mount /dev/sdf")]),
    (["replace.prune"], [ssh(CLOUD, "replace.prune", "*", "! -name chaindata")]),
    (["replace.install_keys"], [ssh(CLOUD, "replace.install_keys", "*", "nodekey.kaia-ha.tmp")]),
    (["verify.move_ip"], [aws(CLOUD, "AssociateAddress")]),
    (["verify.start_kcnd"], [ssh(CLOUD, "verify.start_kcnd", "*", "systemctl enable kcnd")]),
    (["verify.in_sync"], [ssh(CLOUD, "verify.in_sync", "*", "kcn attach", "drop")]),
]
METAL_ROUNDS = [
    (["preflight.check_standby", "preflight.check_floating_ip"],
     [ssh(METAL, "preflight.check_standby", "cn-metal-b", "kcnd.conf; printf", "drop"),
      ssh(METAL, "preflight.check_floating_ip", "cn-metal-b", "ip -4 addr show", "drop")]),
    (["fence.fence_over_ssh"], [ssh(METAL, "fence.fence_over_ssh", "cn-metal-a", "systemctl disable kcnd")]),
    (["fence.verify_fenced"], [ssh(METAL, "fence.verify_fenced", "cn-metal-b", "arping -D", "drop")]),
    (["takeover.stop_standby"], [ssh(METAL, "takeover.stop_standby", "cn-metal-b", "systemctl stop kcnd")]),
    (["takeover.replace_identity"], [ssh(METAL, "takeover.replace_identity", "cn-metal-b", "nodekey.kaia-ha.tmp")]),
    (["takeover.move_floating_ip"], [ssh(METAL, "takeover.move_floating_ip", "cn-metal-b", "ip addr add")]),
    (["start.start_standby"], [ssh(METAL, "start.start_standby", "cn-metal-b", "systemctl enable kcnd")]),
]


def reached(fault, pending) -> bool:
    if fault.is_ssh:
        return not fault.pending_in(pending)
    return len(pending["aws"].get(fault.target, [])) < fault.times  # the rest outlasted the step's one try


def drive_in_rounds(cell, runner, dag_id, conf, rounds, matrix, pn_down_when=()):
    """Fail each round's steps, check what is left, clear, go on; the last drive has no fault."""
    run_id, rows = None, []
    for expected, faults in [*rounds, ([], [])]:
        for fault in faults:
            fault.inject(cell)
        if run_id is None:
            run_id, state, states = runner.run(dag_id, conf, retries=0)
        else:
            _, state, states = runner.clear_and_rerun(dag_id, run_id, retries=0)
        status = cell.status()
        missed = [f.row for f in faults if not reached(f, status["pending_faults"])]
        cell.fault("--clear")
        # report: fails with the run
        failed = sorted(t for (t, _), (s, _) in states.items() if s == "failed" and t != "report")
        report = runner.report(dag_id, run_id)
        made = made_by_run(cell, run_id)
        stopped = [n["name"] for n in status["nodes"] if n["service"] == "kpnd" and not n["running"]]
        rows.append({"dag": dag_id, "failed on purpose": ", ".join(expected) or "(none: the last drive)",
                     "run state": str(getattr(state, "value", state)),
                     "report names": ", ".join(report["failed_tasks"]) or "-",
                     "made so far": made, "duplicates": duplicates(made) or "none", "PNs stopped": stopped or "none",
                     "double signing": len(status["double_signing_events"])})
        assert not missed, f"faults never reached: {missed}"
        assert not duplicates(made), made
        assert status["double_signing_events"] == []
        assert stopped == (["pn-aws-1"] if set(expected) & set(pn_down_when) else []), stopped
        if stopped:  # the report leads with it, and the alert says so
            assert report["todo"][0].startswith("URGENT: kpnd on PN pn-aws-1 may still be stopped"), report["todo"]
        leaks, _ = runner.leak_scan.findings()
        assert not leaks, "validator keys leaked:\n  " + "\n  ".join(leaks)
        if expected:
            assert state == "failed" and failed == sorted(expected), (expected, failed)
            assert set(expected) <= set(report["failed_tasks"]), report["failed_tasks"]  # the report says which step
        else:
            assert state == "success", (failed, report["failed_tasks"])
    matrix.extra.setdefault("Cleared re-runs (each step failed once for good, then cleared; "
                            "one run per failover)", []).extend(rows)
    return run_id, states


def test_every_cloud_failover_step_failed_then_cleared_finishes_the_job(tmp_path_factory, matrix):
    with cell_with_airflow(tmp_path_factory, "cleared-cloud") as (cell, runner):
        assert runner.run(MAINTENANCE)[1] == "success"
        validator = cell.node("cn-aws-1")["node_id"]
        cell.break_("cn-aws-1", "kill")
        conf = {"failed_cn": "cn-aws-1", "use_presnapshot": False, "snapshot_pn": "pn-aws-1"}
        run_id, states = drive_in_rounds(cell, runner, CLOUD, conf, CLOUD_ROUNDS, matrix,
                                         pn_down_when=["chain_data.fresh_snapshot.start_kpnd"])
        made = made_by_run(cell, run_id)
        assert (made["instances"] == 1 and made["volumes"] == 1
                and sum(v for k, v in made.items() if "pn-chaindata" in k) == 1), made
        instance = cell.client("ec2").describe_instances(Filters=[{"Name": "tag:kaia:run-id", "Values": [run_id]}])
        live = [n for n in cell.status()["nodes"] if n["node_id"] == validator and n["running"]]
        assert [n["instance_id"] for n in live] == [instance["Reservations"][0]["Instances"][0]["InstanceId"]]
        assert all(tries >= 2 for (t, _), (_, tries) in states.items() if t in {s for r in CLOUD_ROUNDS for s in r[0]})


def test_every_bare_metal_failover_step_failed_then_cleared_finishes_the_job(tmp_path_factory, matrix):
    with cell_with_airflow(tmp_path_factory, "cleared-metal") as (cell, runner):
        from kaia_ha import maintenance
        from kaia_ha.model.inventory import load_inventory

        # the backup a failover needs, as the maintenance DAG makes it
        for metal in load_inventory().cells_of("bare-metal"):
            maintenance.backup_nodekey(metal.name, "test-setup")
        validator = cell.node("cn-metal-a")["node_id"]
        cell.break_("cn-metal-a", "kill")
        drive_in_rounds(cell, runner, METAL, {"failed_cn": "cn-metal-a"}, METAL_ROUNDS, matrix)
        live = [n["name"] for n in cell.status()["nodes"] if n["node_id"] == validator and n["running"]]
        assert live == ["cn-metal-b"] and cell.status()["floating_ips"]["10.50.0.100"] == "cn-metal-b"
        addresses = cell.ssh("cn-metal-b", "ip -4 addr show dev eth0").stdout
        assert addresses.count("inet 10.50.0.100/") == 1  # configured once, however often the step ran
        aside = cell.ssh("cn-metal-b", "sudo ls /var/kcnd/data.keys-aside").stdout.split()
        assert len(aside) == 1  # the standby's own keys kept aside once, by this run
