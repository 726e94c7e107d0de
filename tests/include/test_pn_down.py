"""When does a report say a PN may have been left down? (The teardown normally prevents it.)"""

from __future__ import annotations

import pytest

from kaia_ha.pn import kpnd_left_stopped


@pytest.mark.parametrize(("stop", "start", "down"), [
    ("success", "success", False),      # the normal run
    (None, None, False),                # a pre-taken snapshot: no PN was touched
    ("skipped", "skipped", False),      # dry run
    ("upstream_failed", "success", False),  # never stopped
    ("success", "failed", True),        # the teardown failed for good
    ("success", "upstream_failed", True),
    ("failed", "failed", True),         # a failed stop may have stopped it
    ("success", None, True),            # the teardown never ran
])
def test_a_pn_is_reported_down_when_this_run_stopped_it_and_did_not_start_it(stop, start, down):
    states = {k: v for k, v in (("stop", stop), ("start", start)) if v is not None}
    assert kpnd_left_stopped(states, "stop", "start") is down
