"""What can be checked of the deployment without Docker (the build machines have no engine): the compose
file parses, every service refers to what exists, every Airflow command is one this Airflow has, the image
is the pinned Airflow, and nothing secret is written in the file."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]
# Made by Docker or the operator at deploy time, not part of the repository.
RUNTIME_DIRS = {"./logs", "./reports", "./secrets", "./inventory.yaml", "./ssh"}


def test_the_official_airflow_3_shape():
    assert {"postgres", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "airflow-worker", "airflow-init"} <= set(SERVICES)
    commands = {name: s.get("command") for name, s in SERVICES.items()}
    assert commands["airflow-apiserver"] == "api-server" and commands["airflow-worker"] == "celery worker"
    assert all(s["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor" for n, s in SERVICES.items()
               if n.startswith("airflow-"))


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_refers_to_what_exists(name):
    service = SERVICES[name]
    for dependency in service.get("depends_on", {}):
        assert dependency in SERVICES, f"{name} depends on an undefined service {dependency}"
    for volume in service.get("volumes", []):
        # ${VAR:-default}: the default, what compose mounts when the operator sets nothing
        source = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", volume).split(":")[0]
        if source.startswith("."):
            assert source in RUNTIME_DIRS or (REPO / source).exists(), (
                f"{name} mounts {source}, which is not in the repository")
        else:
            assert source in COMPOSE.get("volumes", {}), f"{name} uses an undefined volume {source}"
    if "build" in service:
        assert (REPO / service["build"] / "Dockerfile").is_file()


def test_every_airflow_command_is_one_this_airflow_has():
    from airflow.cli.cli_parser import get_parser

    parser = get_parser()
    for name, service in SERVICES.items():
        command = service.get("command")
        if not name.startswith("airflow-") or not isinstance(command, str) or command.startswith("celery"):
            continue  # celery commands come with the Celery provider, which the official image has
        parser.parse_args(command.split())
    init = "\n".join(SERVICES["airflow-init"]["command"])
    for line in init.splitlines():
        if line.strip().startswith("airflow "):
            parser.parse_args(shlex.split(line.strip())[1:])
    assert "pools set kaia_pn_downtime 1" in init


def test_the_image_is_the_pinned_airflow_with_the_project():
    dockerfile = (REPO / "Dockerfile").read_text()
    pinned = re.search(r"^apache-airflow==([\d.]+)", (REPO / "requirements.txt").read_text(), re.M).group(1)
    assert f"FROM apache/airflow:{pinned}-python3.11" in dockerfile
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (REPO / path).exists(), f"Dockerfile copies {path}, which does not exist"


def test_nothing_secret_is_written_in_the_file():
    text = (REPO / "docker-compose.yaml").read_text()
    assert "PRIVATE KEY" not in text and not re.search(r"AKIA[0-9A-Z]{16}", text)
    env = SERVICES["airflow-scheduler"]["environment"]
    assert not [k for k in env if k.startswith("AIRFLOW_CONN_")], "connections come from .env or a secrets backend"
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY"):
        # Shared by every component and required: compose refuses to start without them.
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", env[key]), f"{key} must come from the environment"


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)", line)
        if m:
            pins[m[1].lower().replace("_", "-")] = m[2]
    return pins


def test_every_direct_dependency_is_declared_and_pinned_as_the_constraints_pin_it():
    """What the code imports is declared (a provider upgrade dropping one would otherwise break the DAGs), at the
    version the constraints resolve."""
    runtime, dev, constraints = _pins("requirements.txt"), _pins("requirements-dev.txt"), _pins("constraints.txt")
    imported = {"cryptography", "pydantic", "pyyaml", "paramiko", "botocore", "boto3", "pendulum",
                "apache-airflow-providers-standard", "apache-airflow-providers-amazon", "apache-airflow-providers-ssh",
                "apache-airflow-providers-celery", "psycopg2-binary", "asyncpg", "redis"}
    assert imported - set(runtime) == set()
    declared = {**runtime, **dev}
    assert {name: (pin, constraints.get(name)) for name, pin in declared.items() if constraints.get(name) != pin} == {}


def test_the_image_installs_the_runtime_only():
    """The production image carries no test tool: the simulated AWS, pytest and the browser driver are dev-only."""
    runtime = _pins("requirements.txt")
    assert {"moto", "pytest", "pytest-timeout", "hypothesis", "selenium", "ruff"} & set(runtime) == set()
    assert "-r requirements.txt" in (REPO / "requirements-dev.txt").read_text()
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "requirements-dev" not in dockerfile and "-r /opt/kaia-ha/requirements.txt" in dockerfile
