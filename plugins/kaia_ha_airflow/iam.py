"""The IAM actions the code needs, declared once where AWS is called, and the policy generated from them.

As Cloud Custodian's actions carry their ``permissions``, every function, method or class that calls AWS itself
carries ``@needs("service:Action", ...)``; what only calls such a piece declares nothing (its callee does). The
policy is the union over every module of the project's packages, so it cannot drift from the code; a test checks
that it covers every call the DAGs made against the simulated core cell, and that the committed file is this.

    python -m kaia_ha_airflow.iam > iam-policy.json
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from collections.abc import Callable
from typing import TypeVar

PACKAGES = ("kaia_ha_airflow", "kaia_ha")
_ACTION = re.compile(r"^(ec2|s3|secretsmanager|sns):[A-Z][A-Za-z]+$")
DECLARED: dict[str, tuple[str, ...]] = {}  # "module.qualname" -> its actions, filled as modules are imported

T = TypeVar("T", bound=Callable)


def needs(*actions: str) -> Callable[[T], T]:
    """Declare the IAM actions a function or class calls AWS with (``iam_actions`` on it, and the registry)."""
    bad = [a for a in actions if not _ACTION.match(a)]
    if bad or not actions:
        raise ValueError(f"IAM actions must read service:Action (ec2, s3, secretsmanager, sns); got {bad or 'none'}")

    def mark(obj: T) -> T:
        obj.iam_actions = actions
        DECLARED[f"{obj.__module__}.{obj.__qualname__}"] = actions
        return obj

    return mark


def declared_actions() -> dict[str, set[str]]:
    """``{service: {Action, ...}}`` over every module of the project's packages (imported here: nothing slow runs
    at import)."""
    for name in PACKAGES:
        package = importlib.import_module(name)
        for module in pkgutil.walk_packages(package.__path__, f"{name}."):
            importlib.import_module(module.name)
    found: dict[str, set[str]] = {}
    for actions in DECLARED.values():
        for action in actions:
            service, verb = action.split(":")
            found.setdefault(service, set()).add(verb)
    return found


def policy() -> dict:
    """An identity policy for the role the Airflow workers use. Resources are ``*``: scope them to your
    account's core cells with tag conditions (``aws:ResourceTag/kaia:cell``) where your security team
    asks; Describe* calls cannot be scoped."""
    statements = [
        {"Sid": f"KaiaHa{service.capitalize()}", "Effect": "Allow",
         "Action": sorted(f"{service}:{a}" for a in actions), "Resource": "*"}
        for service, actions in sorted(declared_actions().items())
    ]
    return {"Version": "2012-10-17", "Statement": statements}


if __name__ == "__main__":  # run as a script, this module is not the one the decorators register in
    print(json.dumps(importlib.import_module("kaia_ha_airflow.iam").policy(), indent=2))
