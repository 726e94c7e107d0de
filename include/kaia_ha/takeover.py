"""What every failover does, whichever the scheme: fetch the failed CN's keys, install them where the
node will actually read them, prove it on disk, wait for an honest sync, and write the report.

Used by the cloud failover (a CN launched from the image) and the bare-metal failover (the standby):
one implementation of the identity, sync and reporting pieces.
"""

from __future__ import annotations

import logging
import shlex
import time

from airflow.providers.amazon.aws.hooks.secrets_manager import SecretsManagerHook
from airflow.sdk.exceptions import AirflowFailException

from kaia_ha.model import compat
from kaia_ha.model.health import SyncVerdict, assess_sync
from kaia_ha.model.inventory import CN, Cell
from kaia_ha.model.keys import KeyBackup
from kaia_ha.report import table, timeline, write
from kaia_ha_airflow.hooks.kaia_node import HostUnreachable, KaiaNodeHook
from kaia_ha_airflow.iam import needs

log = logging.getLogger(__name__)

# Top-level files that shadow klay/ (the node reads DATA_DIR/<name> first) or carry another node's state.
SHADOWING = ("nodekey", "bls-nodekey", "static-nodes.json", "trusted-nodes.json", "nodes", "chaindata")


class TakeoverError(RuntimeError):
    """A failover step found something unsafe or wrong; the message says what and what to do."""


class FailoverInputError(ValueError):
    """Bad trigger input; raised before anything changes. The message names the field."""


def refuse_unknown_params(conf: dict, known: tuple[str, ...]) -> None:
    """A misspelt key (``dryrun``) would otherwise be ignored and the run do what the operator did not ask."""
    unknown = sorted(set(conf) - set(known))
    if unknown:
        raise FailoverInputError(f"{unknown[0]}: not a parameter of this DAG (misspelt?); its parameters are "
                                 f"{list(known)}")


class Refused(TakeoverError, AirflowFailException):
    """A check found what no retry can change (a skipped step, a wrong key, a missing mount): the task
    fails at once, so the operator reads why in seconds instead of after every retry."""


@needs("secretsmanager:GetSecretValue")
def load_backup(cell: Cell, cn: CN) -> KeyBackup:
    """The failed CN's keys from Secrets Manager, checked against the inventory's node ID."""
    client = SecretsManagerHook(aws_conn_id=cell.aws_conn_id, region_name=cell.region).conn
    try:
        text = client.get_secret_value(SecretId=cn.nodekey_secret_id)["SecretString"]
    except client.exceptions.ResourceNotFoundException:
        raise TakeoverError(
            f"no nodekey backup of {cn.name} in Secrets Manager ({cn.nodekey_secret_id}): run kaia_cn_maintenance "
            "while the CN is healthy; without it the replacement cannot take the validator's identity"
        ) from None
    backup = KeyBackup.from_secret_string(text, cn.nodekey_secret_id)
    if cn.node_id and backup.node_id != cn.node_id:
        raise TakeoverError(
            f"the backup in {cn.nodekey_secret_id} is node {backup.node_id[:16]}…, the inventory expects "
            f"{cn.node_id[:16]}… for this CN: refusing to give the replacement a different identity"
        )
    return backup


def aside_dir(data_dir: str, run_id: str) -> str:
    """Where a run keeps a node's own key files: beside DATA_DIR, one folder per run (root only, 0600 files)."""
    return f"{data_dir.rstrip('/')}.keys-aside/{''.join(c if c.isalnum() else '_' for c in run_id)}"


def keep_aside(node: KaiaNodeHook, run_id: str) -> str | None:
    """Move the node's own key files out of DATA_DIR (for a later fail-back), mode 0600. Idempotent.

    Never overwrites: a file already kept aside by an earlier try stays as it is; a different file found later under
    the same name (a key kcnd generated when someone started it by hand) goes beside it with a suffix, and a copy of
    what is aside already is removed. Every key file leaves DATA_DIR.
    """
    data_dir = node.node.data_dir
    aside = aside_dir(data_dir, run_id)
    flag = compat.nodekey_file(node.conf().get("ADDITIONAL", ""))  # a key read from outside DATA_DIR goes aside too
    files = [p for p in node.existing([f"{data_dir}/{n}" for n in ("nodekey", "bls-nodekey")]
                                      + [f"{data_dir}/klay/{n}" for n in ("nodekey", "bls-nodekey")]
                                      + ([flag] if flag else []))]
    if not files:
        return None
    moves = " && ".join(
        f"{{ if [ ! -e {shlex.quote(dst)} ]; then mv {shlex.quote(p)} {shlex.quote(dst)}; elif cmp -s {shlex.quote(p)} "
        f"{shlex.quote(dst)}; "
        f"then rm -f {shlex.quote(p)}; else mv {shlex.quote(p)} {shlex.quote(dst)}.$(date +%s%N); fi; }}"
        for p in files
        for dst in [aside + "/"
                    + (p[len(data_dir) + 1:] if p.startswith(data_dir + "/") else p.lstrip("/")).replace("/", "_")]
    )
    script = f"umask 077 && mkdir -p {shlex.quote(aside)} && {moves} && chmod 600 {shlex.quote(aside)}/*"
    node.run(f"sudo sh -c {shlex.quote(script)}")
    return aside


def remove_shadowing(node: KaiaNodeHook, names: tuple[str, ...] = SHADOWING) -> list[str]:
    """Delete top-level files that would win over klay/ (nodekey, bls-nodekey, static-nodes.json...).

    :param names: which ones; a standby keeps its own static-nodes.json (its PN list) and chain data, so
        only the key files are removed there.
    """
    data_dir = node.node.data_dir
    found = node.existing([f"{data_dir}/{name}" for name in names])
    if found:
        node.run("sudo rm -rf " + " ".join(shlex.quote(p) for p in found))
    return found


def install_identity(node: KaiaNodeHook, backup: KeyBackup, shadowing: tuple[str, ...] = SHADOWING) -> dict:
    """Write the backup's keys to DATA_DIR/klay (0600, atomic), with nothing left to shadow them,
    then prove on disk that the node will read exactly these keys.

    :param shadowing: the top-level names removed first (``remove_shadowing``).
    """
    data_dir = node.node.data_dir
    removed = remove_shadowing(node, shadowing)
    node.run("sudo sh -c "
             f"{shlex.quote(f'mkdir -p {shlex.quote(data_dir)}/klay && chmod 700 {shlex.quote(data_dir)}/klay')}")
    node.write_key(f"{data_dir}/klay/nodekey", backup.nodekey)
    if backup.bls is not None:
        node.write_key(f"{data_dir}/klay/bls-nodekey", backup.bls)
    else:  # no backup of it: remove any other node's, so the node derives it from this nodekey
        node.run(f"sudo rm -f {shlex.quote(data_dir + '/klay/bls-nodekey')}")
    return {"removed_shadowing": removed, **verify_identity_on_disk(node, backup)}


def verify_identity_on_disk(node: KaiaNodeHook, backup: KeyBackup) -> dict:
    """The key files the node will read (path precedence) parse and are the backup's."""
    data_dir = node.node.data_dir
    nodekey, path = node.read_key("nodekey")
    if nodekey is None or path != f"{data_dir}/klay/nodekey":
        raise TakeoverError(f"{node.node.name}: the node would read its nodekey from {path or 'nowhere'}, not "
                            f"{data_dir}/klay/nodekey")
    if nodekey.node_id != backup.node_id:
        raise TakeoverError(f"{node.node.name}: {path} holds node {nodekey.node_id[:16]}…, expected "
                            f"{backup.node_id[:16]}…")
    bls, bls_path = node.read_key("bls-nodekey")
    if backup.bls is not None and bls != backup.bls:
        raise TakeoverError(
            f"{node.node.name}: the bls-nodekey the node would read ({bls_path or 'none'}) is not the failed CN's: "
            "its blocks would carry the wrong BLS key"
        )
    if backup.bls is None and bls is not None:
        raise TakeoverError(f"{node.node.name}: a stale bls-nodekey remains at {bls_path}; remove it so it is derived "
                            "again")
    mode = node.run(f"sudo stat -c %a {shlex.quote(path)}").stdout.strip()
    if mode != "600":
        raise TakeoverError(f"{node.node.name}: {path} has mode {mode}, expected 600")
    return {"node_id": nodekey.node_id, "nodekey_path": path, "bls_nodekey": bls_path, "mode": mode}


def pn_head(cell: Cell) -> int:
    """The highest head among the cell's reachable PNs: the reference for "in sync"."""
    heads = []
    for pn in cell.pns:
        try:
            heads.append(KaiaNodeHook(pn).probe().block)
        except Exception as exc:  # one PN down must not hide that the CN is in sync with another
            log.warning("%s: no head (%s)", pn.name, exc)
    if not heads:
        raise TakeoverError(f"no PN of {cell.name} answers: cannot judge whether the CN is in sync")
    return max(heads)


def peers_needed(cell: Cell, validator: bool) -> tuple[str, ...]:
    """One rule for both schemes. Every node needs PN peers. The validator (a replacement or promoted standby
    running the backup's key) also needs CN peers where the network has other CNs: PNs hand it blocks even
    when the other validators refuse it (its IP not the registered one), and then it is not in consensus."""
    return ("pn", "cn") if validator and cell.network_has_other_cns else ("pn",)


def sync_check(node: KaiaNodeHook, cell: Cell, backup: KeyBackup | None, interval: float = 2.0, *,
               expected_node_id: str | None = None) -> SyncVerdict:
    """The honest check (kaia_ha.model.health): two probes ``interval`` apart against the cell's PN head.

    The expected identity is the backup's (node ID and BLS key): the node must then be the validator
    (``peers_needed``). Without a backup (a standby running its own key), ``expected_node_id`` if given.
    """
    first = node.probe()
    time.sleep(interval)
    last = node.probe()
    return assess_sync(first, last, pn_head(cell), expected_node_id=backup.node_id if backup else expected_node_id,
                       expected_bls_public_key=backup.bls_public_key if backup else None,
                       need_peer_types=peers_needed(cell, validator=backup is not None))


# ----- fencing ------------------------------------------------------------------------------------------------
def answers_ssh(node: KaiaNodeHook, attempts: int = 3, pause: float = 2.0, command: str = "true") -> tuple[bool, str]:
    """Whether the host answers over SSH, tried a few times (one dropped session must not look like a dead
    host): ``(True, the command's stdout)`` or ``(False, why not)``."""
    detail = ""
    for attempt in range(attempts):
        try:
            return True, node.run(command, timeout=15, check=False).stdout
        except HostUnreachable as exc:
            detail = str(exc)
            node.close()
            if attempt + 1 < attempts:
                time.sleep(pause)
    return False, detail


def fence_kcnd(node: KaiaNodeHook, run_id: str) -> dict:
    """Make a failed CN whose host answers unable to sign again, and prove it. Idempotent.

    kcnd is disabled at boot, the init script's auto-restart is switched off (AUTO_RESTART_NODE=0), kcnd is
    stopped, and its key files are moved aside (kept, 0600, see ``keep_aside``): if anyone starts kcnd there
    later it comes up as a NEW node with a generated key, never as the validator.
    """
    cn = node.node
    conf = shlex.quote(cn.conf_path)
    node.run(f"sudo systemctl disable {cn.service} "
             f"&& sudo sed -i 's/^AUTO_RESTART_NODE=.*/AUTO_RESTART_NODE=0/' {conf}")
    stopped = node.stop_service()
    aside = keep_aside(node, run_id)
    flag = compat.nodekey_file(node.conf().get("ADDITIONAL", ""))
    keys = " ".join(shlex.quote(p)
                    for p in node.key_paths("nodekey") + node.key_paths("bls-nodekey") + ([flag] if flag else []))
    script = (f"systemctl is-active {cn.service}; systemctl is-enabled {cn.service}; . {conf}; echo "
              f"AUTO_RESTART_NODE=${{AUTO_RESTART_NODE:-0}}; for p in {keys}; do [ -e $p ] && echo $p; done; true")
    state, enabled, restart, *left = node.run(f"sudo bash -c {shlex.quote(script)}").stdout.split()
    if state == "active" or enabled == "enabled" or restart != "AUTO_RESTART_NODE=0" or left:
        raise TakeoverError(f"{cn.name}: not fenced: {cn.service} {state}, {enabled} at boot, {restart}, key files "
                            f"left {left}")
    return {"service": state, "autostart": enabled, "clean_stop": stopped["clean"],
            "keys_aside": aside or aside_dir(cn.data_dir, run_id)}


# ----- the report --------------------------------------------------------------------------------------------
def failover_report(ti, dag_run, *, title: str, synced_task: str, facts: dict, todo: list[str],
                    checks: list[dict] | None = None, dry_run: bool = False, urgent: list[str] = ()) -> dict:
    """Postmortem-ready: timeline (every step's start, end, try), RTO from trigger to synced, facts, the
    final sync checks (``SyncVerdict.checks``), to-do; ``urgent`` lines go above the result. Synced means
    the synced task ended in success (a sensor's poke that found it not yet in sync also records a step,
    but its task did not succeed)."""
    steps, states = timeline(ti, dag_run.dag_id, dag_run.run_id)
    started = dag_run.start_date.timestamp() if dag_run.start_date else (steps[0]["start"] if steps else time.time())
    synced = next((r for r in steps
                   if r["task"] == synced_task and r.get("outcome") == "success" and r.get("state") == "success"), None)
    failed = sorted(t for t, s in states.items() if s in ("failed", "upstream_failed"))
    report = {
        "dag_id": dag_run.dag_id, "run_id": dag_run.run_id, "ok": (dry_run or synced is not None) and not failed,
        "dry_run": dry_run,
        "rto_seconds": round(synced["end"] - started, 1) if synced else None, "failed_tasks": failed,
        "facts": facts, "checks": checks or [], "todo": todo,
        "timeline": [r | {"t_start": round(r["start"] - started, 1), "t_end": round(r["end"] - started, 1)}
                     for r in steps],
    }
    lines = [f"# {title}: {dag_run.run_id}", ""] + [f"**{u}**" for u in urgent] + [
             "Result: " + (("DRY RUN, preflight passed; nothing was changed" if report["ok"]
                            else "DRY RUN, preflight FAILED: " + ", ".join(failed))
                           if dry_run else "OK, validator back in sync" if report["ok"] else "FAILED: "
                           + (", ".join(failed) or "not in sync")),
             f"RTO (trigger to synced): {report['rto_seconds']} s", "", "## Facts", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    if checks:
        lines += ["", "## Checks", "", table([c | {"ok": "ok" if c["ok"] else "FAILED"} for c in checks],
                                             ["name", "ok", "detail"])]
    lines += ["", "## The operator must still", ""] + [f"- {t}" for t in todo]
    lines += ["", "## Timeline (seconds from the run's start)", "",
              table(report["timeline"], ["task", "try", "t_start", "t_end", "seconds", "state", "outcome"])]
    text = "\n".join(lines)
    report["files"] = write(dag_run.dag_id, dag_run.run_id, report, text)
    log.info("Failover report (%s):\n%s", report["files"]["markdown"], text)
    return report
