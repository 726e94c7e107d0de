"""Which CN images and PN snapshots to delete: keep the newest N, spare the newest usable one and
anything a failover run is using. Pure: it decides, operators delete."""

from __future__ import annotations

from datetime import datetime, timedelta

from kaia_ha.model import tags as T


def _created(resource: dict) -> datetime:
    value = resource.get("CreationDate") or resource.get("StartTime")
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def plan(resources: list[dict], *, keep: int, usable_state: str, id_key: str, now: datetime,
         min_age: timedelta = timedelta(0)) -> tuple[list[str], list[dict]]:
    """Return ``(ids_to_delete, kept_with_reason)`` for one kind of resource of one cell.

    Only resources in ``usable_state`` are counted or deleted (pending ones are in progress); the newest
    usable one is always kept, as is anything tagged ``kaia:in-use-by`` or younger than ``min_age``.
    """
    usable = sorted((r for r in resources if r.get("State") == usable_state), key=_created, reverse=True)
    delete, kept = [], []
    for index, resource in enumerate(usable):
        rid = resource[id_key]
        in_use = T.tag_dict(resource).get(T.IN_USE_BY)
        if index == 0:
            kept.append({"id": rid, "why": "newest usable"})
        elif in_use:
            kept.append({"id": rid, "why": f"in use by failover run {in_use}"})
        elif index < keep:
            kept.append({"id": rid, "why": f"among the newest {keep}"})
        elif now - _created(resource) < min_age:
            kept.append({"id": rid, "why": f"younger than {min_age}"})
        else:
            delete.append(rid)
    return delete, kept
