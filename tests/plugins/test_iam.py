"""IAM actions are declared once, with ``@needs`` where AWS is called, and the committed policy is made from them."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from kaia_ha_airflow import iam
from kaia_ha_airflow.hooks.ec2 import CoreCellEC2Hook


def test_a_malformed_action_is_refused_where_it_is_declared():
    with pytest.raises(ValueError, match="service:Action"):
        iam.needs("ec2:describeInstances")
    with pytest.raises(ValueError, match="service:Action"):
        iam.needs()


def test_every_hook_method_that_calls_ec2_declares_its_actions():
    calling = [name for name, fn in inspect.getmembers(CoreCellEC2Hook, inspect.isfunction)
               if fn.__module__ == CoreCellEC2Hook.__module__
               and any(c in inspect.getsource(fn) for c in ("self.conn.", "self.once."))]
    assert len(calling) >= 15
    assert [name for name in calling if not getattr(getattr(CoreCellEC2Hook, name), "iam_actions", None)] == []


def test_the_committed_policy_is_the_declared_one():
    committed = json.loads((Path(__file__).resolve().parents[2] / "iam-policy.json").read_text())
    assert iam.policy() == committed, "regenerate: python -m kaia_ha_airflow.iam > iam-policy.json"
    actions = {a for statement in committed["Statement"] for a in statement["Action"]}
    assert {"ec2:StopInstances", "ec2:DetachVolume", "s3:PutObject", "secretsmanager:GetSecretValue",
            "sns:Publish"} <= actions
