"""The live placement's one home: read it, change it (conditionally, once per run), show it.

Each change is a new object ``<cell>/placement-<generation>.json`` written create-only in the inventory's
``state.url`` (S3 in production): the newest generation is the placement now, the older ones are its
history. A writer names the generation it started from, so two runs that both act on generation 4 cannot
both write generation 5: one wins, the other fails with PlacementConflict. A retry of the same run finds
its own change and writes nothing.

Operators read and correct it with:
  python -m kaia_ha.live show [CELL] [--json]
  python -m kaia_ha.live history CELL
  python -m kaia_ha.live record CELL --why "what you changed and why" < placement.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from kaia_ha.model.inventory import Cell, load_inventory
from kaia_ha.model.placement import Change, Placement, initial
from kaia_ha.over_cells import shared
from kaia_ha_airflow.hooks.kaia_node import KaiaNodeHook
from kaia_ha_airflow.hooks.state import AlreadyExists, StateStore


class PlacementConflict(RuntimeError):
    """Another run changed the placement since this one read it: this run's change was not recorded."""


def store() -> StateStore:
    state = load_inventory().state
    if state is None:  # one machine only: documented in the README
        home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
        return StateStore(f"file://{home / 'kaia-ha-state'}")
    return shared(("state", state.url, state.aws_conn_id, state.region),
                  lambda: StateStore(state.url, state.aws_conn_id, state.region))


def _name(cell: str, generation: int) -> str:
    return f"{cell}/placement-{generation:06d}.json"


def history(cell: Cell, st: StateStore | None = None) -> list[Placement]:
    st = st or store()
    return [Placement.model_validate(st.get(name)) for name in st.names(cell.name) if name.endswith(".json")]


def current(cell: Cell, st: StateStore | None = None) -> Placement:
    """The placement now: the newest recorded generation, else the inventory's (generation 0)."""
    st = st or store()
    names = [n for n in st.names(cell.name) if n.endswith(".json")]
    return Placement.model_validate(st.get(names[-1])) if names else initial(cell)


def for_run(cell: Cell, dag_id: str, run_id: str, st: StateStore | None = None) -> Placement:
    """The placement a run acts on: the current one, or, when this very run recorded the current generation (its
    preflight cleared and run again after the end), the one before its change: a cleared run redoes its own
    failover, never a new one of the node it put in place."""
    st = st or store()
    placement = current(cell, st)
    if placement.change and (placement.change.dag_id, placement.change.run_id) == (dag_id, run_id):
        earlier = st.get(_name(cell.name, placement.generation - 1)) if placement.generation > 1 else None
        return Placement.model_validate(earlier) if earlier else initial(cell)
    return placement


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def update(cell: Cell, change: Callable[[Placement], Placement], *, dag_id: str, run_id: str, why: str,
           since: int | None = None, st: StateStore | None = None) -> Placement:
    """Record ``change(placement now)`` as the next generation, once per (dag_id, run_id).

    ``since``: the generation the run acted on (read at its preflight); if another run changed the placement
    after it, this run's view is stale and nothing is written.
    """
    st = st or store()
    for _ in range(2):  # the second pass only answers a write whose reply was lost
        placement = current(cell, st)
        if placement.change and (placement.change.dag_id, placement.change.run_id) == (dag_id, run_id):
            return placement  # a retry: recorded already
        if since is not None and placement.generation != since:
            by = placement.change
            raise PlacementConflict(
                f"the placement of {cell.name} changed after this run read it (generation {since} -> "
                f"{placement.generation}"
                + (f", by {by.dag_id} run {by.run_id} at {by.at}: {by.why}" if by else "")
                + "). This run's change was NOT "
                f"recorded; now: {placement.summary()}. Check with `python -m kaia_ha.live show {cell.name}`")
        proposed = change(placement)
        new = proposed.model_copy(update={"generation": placement.generation + 1, "change": Change(
            dag_id=dag_id, run_id=run_id, at=now(), why=why, before=placement.summary(), after=proposed.summary())})
        try:
            st.create(_name(cell.name, new.generation), new.model_dump(mode="json"))
            return new
        except AlreadyExists:
            since = placement.generation  # whoever wrote it: the next pass tells a lost reply from a rival
    raise PlacementConflict(f"the placement of {cell.name} changed while this run wrote it; nothing recorded")


def active_node(cell: Cell, placement: Placement, **kw) -> KaiaNodeHook:
    """SSH to the node that runs the validator now (the host key learned at its failover, when there is one)."""
    active = placement.active
    if placement.scheme == "bare-metal":
        return KaiaNodeHook(cell.cn(active.host), **kw)
    if active.private_ip:
        return KaiaNodeHook(cell.validator, ssh_conn_id=active.ssh_conn_id, remote_host=active.private_ip,
                            host_key=active.host_key, **kw)
    return KaiaNodeHook(cell.validator, **kw)


# ----- the operator's command line ----------------------------------------------------------------------------
def _show(placement: Placement) -> str:
    lines = [f"{placement.cell} (generation "
             f"{placement.generation}{', from the inventory' if not placement.generation else ''}):",
             f"  validator {placement.validator} runs on {placement.active.host}"
             + (f" ({placement.active.instance_id}, {placement.active.private_ip or 'inventory address'})"
                if placement.active.instance_id else "")]
    if placement.scheme == "bare-metal":
        lines.append("  standby: "
                     + (", ".join(s.host for s in placement.standbys) or "NONE: enrol one (kaia_cn_enroll_standby)"))
    for f in placement.fenced:
        lines.append(f"  fenced: {f.instance_id or f.host} by {f.dag_id} run {f.run_id} at {f.at} ({f.how})")
    if placement.change:
        c = placement.change
        lines.append(f"  last change: {c.at} by {c.dag_id} run {c.run_id}: {c.why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaia_ha.live", description="Show or correct the live placement.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    show = sub.add_parser("show")
    show.add_argument("cell", nargs="?")
    show.add_argument("--json", action="store_true")
    hist = sub.add_parser("history")
    hist.add_argument("cell")
    rec = sub.add_parser("record", help="write a corrected placement (JSON on stdin) as the next generation")
    rec.add_argument("cell")
    rec.add_argument("--why", required=True)
    args = parser.parse_args(argv)
    logging.getLogger("airflow.providers.amazon").setLevel(logging.WARNING)  # no connection chatter on the terminal
    inventory = load_inventory()
    cells = [inventory.cell(args.cell)] if getattr(args, "cell", None) else inventory.cells
    if args.cmd == "show":
        placements = [current(c) for c in cells]
        print(json.dumps([p.model_dump(mode="json") for p in placements], indent=2) if args.json
              else "\n\n".join(_show(p) for p in placements))
    elif args.cmd == "history":
        for p in history(cells[0]):
            c = p.change
            print(f"{p.generation:4d}  {c.at if c else '-'}  {c.dag_id if c else '-'} {c.run_id if c else ''}\n"
                  f"      {c.before if c else ''} -> {p.summary()}\n      {c.why if c else ''}")
    else:
        wanted = Placement.model_validate(json.load(sys.stdin))
        if wanted.cell != cells[0].name:
            parser.error(f"cell: the JSON is for {wanted.cell!r}, not {cells[0].name!r}")
        user = os.environ.get("USER", "an operator")
        new = update(cells[0], lambda _: wanted, dag_id="by hand", run_id=f"{user}@{now()}", why=args.why)
        print(_show(new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
