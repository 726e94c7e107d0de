"""What can be checked of the deployment without Docker (the build machines have no engine): the compose
file parses, every service refers to what exists, every Airflow command is one this Airflow has, the init job
hands the mounted folders to the Airflow user and migrates the database, every long-running service has a
healthcheck and waits for the init job, the options are off by default and valid when set, the image is the
pinned Airflow, and nothing secret is written in the file."""

from __future__ import annotations

import json
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
        if not name.startswith("airflow-") or not isinstance(command, str):
            continue
        parser.parse_args(command.split())  # `celery worker` too: the Celery provider is in requirements.txt
        # The healthchecks that ask Airflow (`airflow jobs check ...`)
        check = service["healthcheck"]["test"][-1].replace("$${HOSTNAME}", "host")
        if check.startswith("airflow "):
            parser.parse_args(shlex.split(check)[1:])
    init = "\n".join(SERVICES["airflow-init"]["command"])
    airflow_lines = [re.sub(r"^(/entrypoint )?airflow ", "", line.strip()) for line in init.splitlines()
                     if re.match(r"(/entrypoint )?airflow ", line.strip())]
    assert airflow_lines
    for line in airflow_lines:
        parser.parse_args(shlex.split(line))
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


# --- compose's variable interpolation, enough of it to check what compose would hand the containers ---

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class MissingVariable(Exception):
    """compose refuses to start: a ${VAR:?message} is unset (or empty)."""


def interpolate(value, env: dict[str, str]):
    """${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} and $$ as compose resolves them."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def resolve(m: re.Match) -> str:
        name, op, arg = m[1], m[2], m[3]
        set_, nonempty = name in env, bool(env.get(name))
        if op in (":?", "?"):
            if not (nonempty if op == ":?" else set_):
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        if op == ":-":
            return env[name] if nonempty else arg
        if op == "-":
            return env[name] if set_ else arg
        return env.get(name, "")

    return _VARIABLE.sub(resolve, value.replace("$$", "\0")).replace("\0", "$")


REQUIRED = {"AIRFLOW_JWT_SECRET": "j", "AIRFLOW_API_SECRET_KEY": "a", "AIRFLOW_FERNET_KEY": "f"}
AIRFLOW_SERVICES = sorted(n for n in SERVICES if n.startswith("airflow-"))
LONG_RUNNING = sorted(n for n in SERVICES if n != "airflow-init")


def _common_mounts(mode: str) -> list[tuple[str, str]]:
    """(host source, container path) of x-airflow-common's bind mounts, read-write ("rw") or read-only ("ro")."""
    mounts = []
    for volume in COMPOSE["x-airflow-common"]["volumes"]:
        source, target, *options = interpolate(volume, {}).split(":")
        if source.startswith(".") and ("ro" in options) == (mode == "ro"):
            mounts.append((source, target))
    return mounts


def _init_script(env: dict[str, str]) -> str:
    script = interpolate(SERVICES["airflow-init"]["command"], env)[-1]
    # the shell variable the script sets the owner in
    uid = re.search(r'^uid="([^"]*)"$', script, re.M)[1]
    return script.replace("${uid}", uid)


@pytest.mark.parametrize("airflow_uid", [None, "1001"])
def test_the_init_job_hands_every_mounted_folder_to_the_user_the_services_run_as(airflow_uid):
    """Docker creates a missing bind-mounted folder as root: the Airflow processes (AIRFLOW_UID:0) could not write
    their logs, the reports or the UI's generated passwords. As in the official file, the init job runs as root and
    chowns them, after the last command it runs as root in them."""
    env = {"AIRFLOW_UID": airflow_uid} if airflow_uid else {}
    init = SERVICES["airflow-init"]
    assert init["user"] == "0:0" and init["entrypoint"] == "/bin/bash" and init["command"][0] == "-c"
    owner = interpolate(SERVICES["airflow-scheduler"]["user"], env)
    assert owner == f"{airflow_uid or 50000}:0"
    assert {interpolate(SERVICES[n]["user"], env) for n in AIRFLOW_SERVICES if n != "airflow-init"} == {owner}
    script = _init_script(env)
    lines = [line.strip() for line in script.splitlines()]
    chowned = {}
    for i, line in enumerate(lines):
        if line.startswith("chown -R "):
            _, _, target, *paths = shlex.split(line)  # chown -R OWNER PATH...
            chowned.update(dict.fromkeys(paths, (target, i)))
    rw = _common_mounts("rw")
    assert {"./logs", "./reports", "./secrets"} <= {source for source, _ in rw}
    for source, path in rw:
        assert path in chowned, f"the init job does not hand {source} ({path}) to the Airflow user"
        assert chowned[path][0] == owner
    last_root_airflow = max(i for i, line in enumerate(lines) if line.startswith("/entrypoint airflow "))
    assert min(i for _, i in chowned.values()) > last_root_airflow
    # The read-only mounts cannot be chowned: they are checked readable as the Airflow user instead.
    assert [p for _, p in _common_mounts("ro")] == ["/opt/kaia-ha/inventory.yaml", "/opt/kaia-ha/ssh"]
    check = re.search(r"^/entrypoint python -c '\n(.*?)^' \"(\d+)\"$", script, re.M | re.S)
    assert check and check[2] == owner.split(":")[0]
    compile(check[1], "airflow-init", "exec")
    assert "os.setuid(int(sys.argv[1]))" in check[1] and "load_inventory()" in check[1]
    assert "/opt/kaia-ha/ssh" in check[1]


def test_the_init_job_migrates_through_the_image_entrypoint_and_fails_on_a_failed_migration():
    """entrypoint: /bin/bash replaces the image's entrypoint, so _AIRFLOW_DB_MIGRATE acts only on a command run
    through /entrypoint (as the official file's `/entrypoint airflow version`). That entrypoint runs
    `airflow db migrate || true`: the check after it makes a failed migration fail the job, so nothing starts."""
    init = SERVICES["airflow-init"]
    assert init["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"
    lines = [line.strip() for line in _init_script({}).splitlines()]
    assert lines[0] == "set -euo pipefail"
    first = lines.index("/entrypoint airflow version")
    check = next(i for i, line in enumerate(lines) if line.startswith("/entrypoint airflow db check-migrations"))
    pool = next(i for i, line in enumerate(lines) if "pools set kaia_pn_downtime" in line)
    assert first < lines.index("unset _AIRFLOW_DB_MIGRATE") < check < pool
    # Every Airflow and Python command goes through the entrypoint (it sets root's PYTHONPATH to the image's
    # packages and waits for the database).
    assert not [line for line in lines if re.match(r"(airflow|python) ", line)]


def test_no_user_is_created_the_fab_way():
    """_AIRFLOW_WWW_USER_CREATE makes the entrypoint run `airflow users create`, which only the FAB auth manager
    has; the SimpleAuthManager's users are AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS."""
    from airflow.cli.cli_parser import get_parser

    env = SERVICES["airflow-init"]["environment"]
    assert not [k for k in env if k.startswith("_AIRFLOW_WWW_USER")]
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
    with pytest.raises(SystemExit):
        get_parser().parse_args(["users", "create", "--username", "admin"])


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_every_long_running_service_has_a_healthcheck_and_waits_for_the_init_job(name):
    service = SERVICES[name]
    assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert service["restart"] == "always"
    if name.startswith("airflow-"):
        depends = service["depends_on"]
        assert depends["airflow-init"] == {"condition": "service_completed_successfully"}
        assert depends["postgres"] == depends["redis"] == {"condition": "service_healthy"}


def test_two_celery_workers():
    worker = SERVICES["airflow-worker"]
    assert worker["command"] == "celery worker" and worker["deploy"]["replicas"] == 2
    assert worker["environment"]["DUMB_INIT_SETSID"] == "0"  # warm shutdown, as in the official file
    assert '"celery@$${HOSTNAME}"' in worker["healthcheck"]["test"][-1]  # each replica pings its own node
    assert [n for n, s in SERVICES.items() if s.get("command") == "celery worker"] == ["airflow-worker"]


# --- the options: commented lines in x-airflow-common's environment, off by default ---

OPTION_KEYS = {"AIRFLOW__LOGGING__REMOTE_LOGGING", "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER",
               "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID", "AIRFLOW__SECRETS__BACKEND", "AIRFLOW__SECRETS__BACKEND_KWARGS"}


def _with_options() -> dict:
    """The compose file with every commented option uncommented."""
    text = (REPO / "docker-compose.yaml").read_text()
    uncommented, n = re.subn(r"^(    )# (AIRFLOW__[A-Z_]+: )", r"\1\2", text, flags=re.M)
    assert n == len(OPTION_KEYS)
    return yaml.safe_load(uncommented)


def test_the_options_are_off_by_default():
    for name in AIRFLOW_SERVICES:
        env = interpolate(SERVICES[name]["environment"], REQUIRED)  # nothing else is required
        assert OPTION_KEYS & set(env) == set()
        assert env["KAIA_HA_REPORT_URL"] == ""  # the durable report store: passed through, empty when unset
    assert interpolate(SERVICES["airflow-worker"]["environment"], {**REQUIRED, "KAIA_HA_REPORT_URL": "s3://b/r"})[
        "KAIA_HA_REPORT_URL"] == "s3://b/r"
    header = (REPO / "docker-compose.yaml").read_text().split("x-airflow-common:")[0]
    for variable in ("KAIA_HA_REMOTE_LOG_FOLDER", "KAIA_HA_REMOTE_LOG_CONN_ID", "KAIA_HA_SECRETS_REGION",
                     "KAIA_HA_REPORT_URL"):
        assert variable in header, f"{variable} is not documented in the file's header"


def test_the_options_are_known_airflow_settings_and_every_airflow_service_gets_them():
    from airflow.configuration import conf

    services = _with_options()["services"]
    for name in AIRFLOW_SERVICES:
        assert OPTION_KEYS <= set(services[name]["environment"]), name
    for key in OPTION_KEYS:
        _, section, option = key.lower().split("__")
        assert conf.has_option(section, option), key


def test_remote_logging_when_set():
    env = _with_options()["services"]["airflow-worker"]["environment"]
    required = {**REQUIRED, "KAIA_HA_SECRETS_REGION": "eu-west-1"}  # option (b)'s, uncommented as well here
    with pytest.raises(MissingVariable, match="KAIA_HA_REMOTE_LOG_FOLDER"):  # on without a bucket: compose refuses
        interpolate(env, required)
    on = interpolate(env, {**required, "KAIA_HA_REMOTE_LOG_FOLDER": "s3://kaia-ha-logs/airflow"})
    assert on["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "true"
    assert on["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"] == "s3://kaia-ha-logs/airflow"  # s3:// picks S3's handler
    example = yaml.safe_load((REPO / "inventory.example.yaml").read_text())
    assert on["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"] == "kaia_aws" == example["cells"][0]["aws_conn_id"]
    role = interpolate(env, {**required, "KAIA_HA_REMOTE_LOG_FOLDER": "s3://b", "KAIA_HA_REMOTE_LOG_CONN_ID": ""})
    assert role["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"] == ""  # no connection: the boto3 chain (instance role)


def test_the_secrets_manager_backend_when_set():
    """The settings build the backend, and it reads an SSH connection with its key, and a variable, from Secrets
    Manager (moto's) under the documented names."""
    import importlib

    import boto3
    from moto import mock_aws

    env = _with_options()["services"]["airflow-scheduler"]["environment"]
    with pytest.raises(MissingVariable, match="KAIA_HA_SECRETS_REGION"):
        interpolate(env, {**REQUIRED, "KAIA_HA_REMOTE_LOG_FOLDER": "s3://b"})
    on = interpolate(env, {**REQUIRED, "KAIA_HA_REMOTE_LOG_FOLDER": "s3://b", "KAIA_HA_SECRETS_REGION": "eu-west-1"})
    kwargs = json.loads(on["AIRFLOW__SECRETS__BACKEND_KWARGS"])
    assert kwargs["connections_prefix"] == "kaia-ha/connections" and kwargs["variables_prefix"] == "kaia-ha/variables"
    module, _, name = on["AIRFLOW__SECRETS__BACKEND"].rpartition(".")
    backend = getattr(importlib.import_module(module), name)(**kwargs)
    key_text = "(the key file's text)\nline 2\n"  # the whole file, line breaks kept (JSON "\n")
    connection = {"conn_type": "ssh", "host": "10.0.1.12", "login": "kaia-ops",
                  "extra": {"private_key": key_text, "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample"}}
    with mock_aws():
        sm = boto3.client("secretsmanager", region_name="eu-west-1")
        sm.create_secret(Name="kaia-ha/connections/ssh_cn_1", SecretString=json.dumps(connection))
        sm.create_secret(Name="kaia-ha/variables/kaia_note", SecretString="hello")
        assert backend.client.meta.region_name == "eu-west-1"
        conn = backend.get_connection("ssh_cn_1")
        assert backend.get_variable("kaia_note") == "hello"
    assert (conn.conn_type, conn.host, conn.login) == ("ssh", "10.0.1.12", "kaia-ops")
    assert conn.extra_dejson["private_key"] == key_text
    assert conn.extra_dejson["host_key"].startswith("ssh-ed25519 ")
    assert backend.config_prefix is None  # no Secrets Manager call for every configuration option


def test_the_compose_file_deploys_the_celery_engine_the_tests_run():
    """The engine suite and ``make drill EXECUTOR=celery`` run ``drill.engine``'s Celery engine: the compose file
    must deploy the same components with the same commands, as many workers, and the same settings (drivers too:
    the engine proves them, the compose file cannot be started here)."""
    from drill.engine import CELERY_COMPONENTS, SHARED_SETTINGS, WORKERS, celery_settings

    airflow = {name: s for name, s in SERVICES.items() if name.startswith("airflow-") and name != "airflow-init"}
    deployed = sorted(s["command"] for s in airflow.values())
    assert deployed == sorted({" ".join(command) for command in CELERY_COMPONENTS.values()})
    worker = next(s for s in airflow.values() if s["command"] == "celery worker")
    assert worker["deploy"]["replicas"] == len(WORKERS)
    expected = celery_settings("postgresql+psycopg2://airflow@127.0.0.1:5432/airflow", "redis://127.0.0.1:6379/0")
    scheme = lambda url: url.split("://", 1)[0]  # noqa: E731
    for name, service in airflow.items():
        env = service["environment"]
        assert set(SHARED_SETTINGS) | set(expected) <= set(env), name
        assert env["AIRFLOW__CORE__EXECUTOR"] == expected["AIRFLOW__CORE__EXECUTOR"]
        for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND",
                    "AIRFLOW__CELERY__BROKER_URL"):
            assert scheme(env[key]) == scheme(expected[key]), (name, key, env[key])
