"""
# Kaia standby enrolment (bare metal): make a repaired or new host the cell's standby

**Trigger this after a standby failover**, when readiness says "<cell> has NO standby", with the host that
should stand by (the repaired old active, or a new host already in the inventory).

1. **Preflight** (changes nothing): the host is a bare-metal CN of the inventory, does not run the validator
   now (live placement), answers over SSH, and its kcnd.conf reads the key from `DATA_DIR/klay`.
2. **Prepare**: kcnd stopped and disabled while it changes (refused if it runs as the validator: fence it
   first); a validator key found where the node reads it is moved aside; the keys set aside by an earlier
   fencing stay aside, or are shredded when you tick *shred keys aside*; `static-nodes.json` lists the cell's
   PNs (as the active lists them); the floating IP is not configured there.
3. **Start**: kcnd enabled and started with the host's OWN identity (with no key it generates a fresh one,
   never the validator's); each PN is told the new node (its `static-nodes.json` and `admin.addPeer`).
4. **Synced**: PN peers, not syncing, near a PN's head, rising, with that identity.
5. **Record the live placement**: the host stands by (with its node ID) and is no longer fenced. Readiness
   then checks it; failing back to it is an ordinary `kaia_cn_failover_standby`.
6. **Report**, also by SNS.

Every step is safe to clear and run again.
"""

from __future__ import annotations

from airflow.sdk import Param, PokeReturnValue, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from kaia_ha import enroll as steps
from kaia_ha.model.inventory import InventoryError, try_load_inventory
from kaia_ha_airflow.dag_defaults import RESCHEDULE_MIN_SECONDS, core_cell_dag, runbook, wait

inventory, INVENTORY_ERROR = try_load_inventory()
HOSTS = [cn.name for cell in (inventory.cells_of("bare-metal") if inventory else []) for cn in cell.cns]


@task(task_id=steps.PREFLIGHT_TASK)
def preflight() -> dict:
    context = get_current_context()
    try:
        return steps.preflight(context["params"], context["run_id"])
    except (steps.FailoverInputError, steps.EnrolError, InventoryError) as exc:  # a retry cannot fix it: fail now
        raise AirflowFailException(str(exc)) from None


@task(task_id=steps.PREPARE_TASK)
def prepare(plan: dict) -> dict:
    try:
        return steps.prepare(plan)
    except steps.EnrolError as exc:
        raise AirflowFailException(str(exc)) from None


@task(task_id=steps.START_TASK)
def start(plan: dict) -> dict:
    return steps.start(plan)


# A fresh node may sync for long: rescheduled, at the interval that avoids the reschedule race.
@task.sensor(task_id=steps.SYNCED_TASK, timeout=1800, **wait(RESCHEDULE_MIN_SECONDS))
def synced(plan: dict, started: dict) -> PokeReturnValue:
    result = steps.synced(plan, started)
    return PokeReturnValue(is_done=result is not None, xcom_value=result)


@task(task_id=steps.RECORD_TASK)
def record_placement(plan: dict, started: dict) -> dict:
    return steps.record_placement(plan, started)


@task(trigger_rule="all_done", retries=0)
def report() -> dict:
    context = get_current_context()
    return steps.report(context["ti"], context["dag_run"], context["ti"].xcom_pull(task_ids=steps.PREFLIGHT_TASK,
                                                                          default=None))


@dag(
    dag_id=steps.DAG_ID,
    schedule=None,
    doc_md=runbook(__doc__, INVENTORY_ERROR),
    **core_cell_dag(tags=["bare-metal", "standby"], retries=3),
    params={
        "host": Param("", type="string", enum=["", *HOSTS], title="Host to enrol as standby",
                      values_display={"": "Choose the host"},
                      description="A bare-metal CN host of the inventory that does not run the validator now.",
                      section="Standby"),
        "shred_keys_aside": Param(False, type="boolean", title="Shred the keys kept aside on it",
                                  description="The validator keys an earlier fencing moved aside on this host "
                                              "(DATA_DIR.keys-aside/). Off: they stay there, root only.",
                                  section="Standby"),
    },
)
def kaia_cn_enroll_standby():
    plan = preflight()
    started = start(plan)
    prepare(plan) >> started
    synced(plan, started) >> record_placement(plan, started) >> report()


kaia_cn_enroll_standby()
