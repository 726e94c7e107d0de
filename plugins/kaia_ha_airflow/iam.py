"""The IAM policy the DAGs need, generated from what the code declares.

Every piece that calls AWS names its actions where it is defined: ``IAM_ACTIONS`` on the hooks and
operators, an ``IAM: ...`` line in the docstring of the plain helpers. This module gathers every
``service:Action`` written in the project's sources, so the policy cannot drift from the code; a test
checks it covers every call the DAGs made against the simulated core cell.

    python -m kaia_ha_airflow.iam > iam-policy.json
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("plugins/kaia_ha_airflow", "include/kaia_ha", "dags")
_ACTION = re.compile(r"\b(ec2|s3|secretsmanager|sns):([A-Z][a-z]+[A-Za-z]*)\b(?!\*)")


def declared_actions(root: Path = _ROOT) -> dict[str, set[str]]:
    """``{service: {Action, ...}}`` of every action named in the sources."""
    found: dict[str, set[str]] = {}
    for folder in SOURCES:
        for path in sorted((root / folder).rglob("*.py")):
            for service, action in _ACTION.findall(path.read_text()):
                found.setdefault(service, set()).add(action)
    return found


def policy(root: Path = _ROOT) -> dict:
    """An identity policy for the role the Airflow workers use. Resources are ``*``: scope them to your
    account's core cells with tag conditions (``aws:ResourceTag/kaia:cell``) where your security team
    asks; Describe* calls cannot be scoped."""
    statements = [
        {"Sid": f"KaiaHa{service.capitalize()}", "Effect": "Allow",
         "Action": sorted(f"{service}:{a}" for a in actions), "Resource": "*"}
        for service, actions in sorted(declared_actions(root).items())
    ]
    return {"Version": "2012-10-17", "Statement": statements}


if __name__ == "__main__":
    print(json.dumps(policy(), indent=2))
