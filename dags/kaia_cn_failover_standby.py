"""
# Kaia CN failover (bare metal, Active-Standby): the standby takes over the failed active

**Trigger this when the active CN of a bare-metal core cell has failed.** Choose the failed CN and press
*Trigger*. The defaults are the safe choice: fence the failed active, no dry run. Use *dry run* first if
you are unsure: it runs the preflight and changes nothing.

What it does (the Kaia docs' Active-Standby failover, with what the node's source adds):

1. **Preflight** (changes nothing): the parameters against the inventory; the failed CN's nodekey
   backup (its node ID must be the inventory's); the standby answers, its kcnd.conf reads the key from
   `DATA_DIR/klay`, and it is in sync with its own identity (PN peers, not syncing, near a PN's head,
   rising); whether the failed host answers; the floating IP and the site's commands to move it.
2. **Fence the failed active.** If its host answers over SSH: kcnd stopped, disabled at boot,
   `AUTO_RESTART_NODE=0`, its key files moved aside, the floating IP released there. If it does not
   answer, the run **asks you** (*Required actions*, task `confirm_down`) to confirm it is down, unless
   you set *host known dead*. Either way it then checks that no other host answers ARP for the floating
   IP. **Never two live nodes with one key**: they double-sign.
3. **Stop kcnd on the standby**, and prove the stop was clean.
4. **Replace the identity**: the standby's own `nodekey` and `bls-nodekey` are kept aside (for a later
   fail-back) in `DATA_DIR.keys-aside/<run>`; the failed CN's `nodekey` and `bls-nodekey` are written to
   `DATA_DIR/klay` (0600); a top-level nodekey that would shadow them is removed; checked on disk.
5. **Move the floating IP** with the inventory's commands (default `ip addr add` + gratuitous ARP
   `arping -U`; with `floating_ip.gateway` set, also the default route's source address, so that
   outbound connections leave from the floating IP as the other operators' firewalls expect).
6. **Start kcnd and verify**: the keys on disk and the IP checked once more, then the running node's
   `admin.nodeInfo.id` must be the failed CN's, its BLS key the backup's, with PN and CN peers, not
   syncing, near a PN's head, rising.
7. **Record the live placement** (only once the standby is verified in sync): the standby is the active
   now, the failed host is fenced, and the cell has no standby until one is enrolled with
   `kaia_cn_enroll_standby` (readiness alerts until then). Nobody edits the inventory.
8. **Report**: timeline, RTO, the checks, and what you must still do. Also sent by SNS.

## If it fails
The `report` task log says which step failed and why. Fix the cause and **Clear** the failed task
(with *Downstream*): every step first checks what is already done (the fenced host, the keys aside,
the key installed, the IP configured, kcnd running as the validator) and never does it twice.
Nothing on the standby changes before fencing is confirmed.

- `verify_fenced` failed on ARP: another host still answers for the floating IP. The failed active
  may be up with its SSH cut. Power it off (BMC/IPMI, PDU) or unplug it, then clear the task.
- `start_standby` names the missing piece (a stale `bls-nodekey`, a top-level nodekey, the IP not
  moved): the earlier step did not do its work; clear that step.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, PokeReturnValue, TaskGroup, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from kaia_ha import failover_standby as steps
from kaia_ha.model.inventory import InventoryError, try_load_inventory
from kaia_ha_airflow.dag_defaults import core_cell_dag, local, runbook, wait

inventory, INVENTORY_ERROR = try_load_inventory()
METAL = inventory.cells_of("bare-metal") if inventory else []
ACTIVES = [cell.validator.name for cell in METAL]
STANDBYS = [cn.name for cell in METAL for cn in cell.cns]  # which of them stands by now is live placement


@task(task_id=local(steps.VALIDATE_TASK))
def validate() -> dict:
    context = get_current_context()
    try:
        return steps.validate(context["params"], context["run_id"])
    except (steps.FailoverInputError, InventoryError) as exc:  # a retry cannot fix bad input: fail now
        raise AirflowFailException(str(exc)) from None


@task(task_id=local(steps.CHECK_BACKUP_TASK))
def check_backup(plan: dict) -> dict:
    return steps.check_backup(plan)


@task(task_id=local(steps.CHECK_STANDBY_TASK))
def check_standby(plan: dict) -> dict:
    return steps.check_standby(plan)


@task(task_id=local(steps.CHECK_FAILED_ACTIVE_TASK))
def check_failed_active(plan: dict) -> dict:
    return steps.check_failed_active(plan)


@task
def check_floating_ip(plan: dict) -> dict:
    return steps.check_floating_ip(plan)


@task.short_circuit(ignore_downstream_trigger_rules=False)
def proceed(plan: dict) -> bool:
    return not plan["dry_run"]


@task.branch(task_id="plan")
def fence_path(plan: dict) -> str:
    return steps.fence_path(plan)


@task(task_id=local(steps.FENCE_OVER_SSH))
def fence_over_ssh(plan: dict) -> dict:
    return steps.fence_over_ssh(plan)


@task(task_id=local(steps.DECLARED_DOWN))
def declared_down(plan: dict) -> dict:
    return steps.declared_down(plan)


# Runs after whichever fence path ran. The plan is pulled rather than passed: as an upstream, the preflight's
# success would satisfy the trigger rule on its own, and a dry run (nothing fenced) would run this.
@task(task_id=local(steps.VERIFY_FENCED_TASK), trigger_rule="none_failed_min_one_success")
def verify_fenced() -> dict:
    return steps.verify_fenced(get_current_context()["ti"].xcom_pull(task_ids=steps.VALIDATE_TASK))


@task(task_id=local(steps.STOP_STANDBY_TASK))
def stop_standby(plan: dict) -> dict:
    return steps.stop_standby(plan)


@task(task_id=local(steps.REPLACE_IDENTITY_TASK))
def replace_identity(plan: dict) -> dict:
    return steps.replace_identity(plan)


@task(task_id=local(steps.MOVE_FLOATING_IP_TASK))
def move_floating_ip(plan: dict) -> dict:
    return steps.move_floating_ip(plan)


@task(task_id=local(steps.START_STANDBY_TASK))
def start_standby(plan: dict) -> dict:
    return steps.start_standby(plan)


@task.sensor(task_id=local(steps.SYNCED_TASK), timeout=600, **wait(1))
def standby_synced(plan: dict) -> PokeReturnValue:
    try:
        synced = steps.standby_synced(plan)
    except steps.TakeoverError as exc:  # a wrong key or a dead kcnd: waiting cannot fix it
        raise AirflowFailException(str(exc)) from None
    return PokeReturnValue(is_done=synced is not None, xcom_value=synced)


@task(task_id=local(steps.RECORD_TASK))
def record_placement(plan: dict) -> dict:
    return steps.record_placement(plan, get_current_context()["ti"])


@task(trigger_rule="all_done", retries=0)
def report() -> dict:
    context = get_current_context()
    return steps.report(context["ti"], context["dag_run"],
                        context["ti"].xcom_pull(task_ids=steps.VALIDATE_TASK, default=None))


@dag(
    dag_id=steps.DAG_ID,
    schedule=None,
    doc_md=runbook(__doc__, INVENTORY_ERROR),
    **core_cell_dag(tags=["failover", "bare-metal"], retries=3),
    params={
        # No CN is preselected: the operator must name the failed one (an empty choice fails the preflight).
        "failed_cn": Param("", type="string", enum=["", *ACTIVES], title="Validator whose CN failed",
                           values_display={"": "Choose the validator"},
                           description="The validator whose active CN failed (the host that runs it now, from the live "
                                       "placement). A standby takes over its nodekey, bls-nodekey and floating IP.",
                           section="What failed"),
        "standby_cn": Param("", type="string", enum=["", *STANDBYS], title="Standby to promote",
                            values_display={"": "The cell's standby now (live placement)"},
                            description="Only if the cell has several standbys: the one that takes over. It must be "
                                        "in sync.",
                            section="What failed"),
        "fence_failed_active": Param(True, type="boolean", title="Fence the failed active",
                                     description="If its host answers over SSH: stop kcnd there, disable it, release "
                                                 "the floating IP and move its keys aside. Turn off only if you did "
                                                 "this by hand; the run still refuses to continue while kcnd runs "
                                                 "there.", section="What failed"),
        "host_known_dead": Param(False, type="boolean", title="The failed host is known to be dead",
                                 description="Only when its host does not answer: you have made sure it is powered off "
                                             "or cut off and cannot come back with kcnd running. Off: the run stops "
                                             "and asks you to confirm it (Required actions).", section="What failed"),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Run the preflight checks only; nothing is changed. The report says what would "
                                     "happen.",
                         section="Run"),
    },
)
def kaia_cn_failover_standby():
    final = report()
    with TaskGroup("preflight", tooltip="checks only: nothing changes"):
        plan = validate()
        checks = [check_backup(plan), check_standby(plan), check_failed_active(plan), check_floating_ip(plan)]
        go = proceed(plan)
        checks >> go
    with TaskGroup("fence", tooltip="the failed active can never sign again"):
        path = fence_path(plan)
        confirm_down = ApprovalOperator(
            task_id=local(steps.CONFIRM_DOWN),
            subject="Is {{ params.failed_cn }} down for good? The standby takes over its key once you approve",
            body=(
                "**{{ params.failed_cn }} does not answer over SSH** "
                f"({{{{ ti.xcom_pull(task_ids='{steps.CHECK_FAILED_ACTIVE_TASK}')['detail'] }}}}), "
                "so this run cannot stop kcnd there.\n\n"
                "**Approve** only if you have made sure it cannot sign again: powered off (BMC/IPMI, PDU) or cut from "
                "the network, and it will not come back at boot with kcnd and the floating IP. The run then checks "
                "that no other host answers ARP for the floating IP before the standby takes over.\n\n"
                "**Reject** stops the failover; nothing is changed."
            ),
            response_timeout=timedelta(hours=2),  # not a pendulum Duration: the task runner cannot send one
        )
        fenced = verify_fenced()
        go >> path >> [fence_over_ssh(plan), declared_down(plan), confirm_down] >> fenced
    with TaskGroup("takeover", tooltip="the standby gets the failed active's identity and IP"):
        moved = move_floating_ip(plan)
        fenced >> stop_standby(plan) >> replace_identity(plan) >> moved
    with TaskGroup("start", tooltip="kcnd started and verified as the validator"):
        # The live placement follows only once the new active is verified in sync (never a dry or failed run).
        moved >> start_standby(plan) >> standby_synced(plan) >> record_placement(plan) >> final


kaia_cn_failover_standby()
