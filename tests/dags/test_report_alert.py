"""An alert that cannot be sent never hides the run's verdict: the report is written and logged, and the report
task's error is still the verdict, saying that the alert was not sent (here: the SNS topic is gone)."""

from __future__ import annotations

DAG_ID = "kaia_cn_failover_standby"


def test_the_verdict_survives_an_sns_failure(fresh_cell, tmp_path, capfd):
    from cellkit import AirflowRunner

    sns = fresh_cell.client("sns")
    for topic in sns.list_topics()["Topics"]:  # the inventory's topic is gone: Publish answers NotFound
        sns.delete_topic(TopicArn=topic["TopicArn"])
    with AirflowRunner(fresh_cell, tmp_path) as runner:
        # A cell with no key backup yet: the preflight finds it missing, so the verdict is a failure.
        run_id, state, states = runner.run(DAG_ID, {"failed_cn": "cn-metal-a", "dry_run": True})
        report = runner.report(DAG_ID, run_id)
    assert state == "failed" and states[("preflight.check_backup", -1)][0] == "failed"
    assert report["ok"] is False and "preflight.check_backup" in report["failed_tasks"]
    assert "Result: DRY RUN, preflight FAILED" in runner.log_text  # the report, logged
    assert "the SNS alert was NOT sent" in runner.log_text
    printed = capfd.readouterr()
    lines = (printed.out + printed.err).splitlines()
    error = [line for line in lines if line.startswith("kaia_ha.takeover.TakeoverError: ")]
    # The report task's error, as its log shows it: the verdict, then that the alert was not sent.
    assert error and "failover not complete" in error[-1] and "the SNS alert was NOT sent" in error[-1]
