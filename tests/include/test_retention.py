from __future__ import annotations

from datetime import datetime, timedelta, timezone

from kaia_ha.model.retention import plan

NOW = datetime(2026, 11, 25, tzinfo=timezone.utc)


def snap(i, state="completed", in_use=None):
    tags = [{"Key": "kaia:in-use-by", "Value": in_use}] if in_use else []
    return {"SnapshotId": f"snap-{i}", "State": state, "StartTime": NOW - timedelta(days=i), "Tags": tags}


def test_keeps_the_newest_n_and_deletes_the_rest():
    delete, kept = plan([snap(i) for i in range(5)], keep=3, usable_state="completed", id_key="SnapshotId", now=NOW)
    assert delete == ["snap-3", "snap-4"]
    assert kept[0] == {"id": "snap-0", "why": "newest usable"}


def test_never_deletes_the_newest_usable_in_use_or_pending():
    resources = [snap(0, state="pending"), snap(1), snap(2, in_use="run-7"), snap(3), snap(4)]
    delete, kept = plan(resources, keep=1, usable_state="completed", id_key="SnapshotId", now=NOW)
    assert delete == ["snap-3", "snap-4"]
    assert {"id": "snap-1", "why": "newest usable"} in kept
    assert any(k["id"] == "snap-2" and "run-7" in k["why"] for k in kept)
