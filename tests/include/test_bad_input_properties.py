"""Bad input, generated: trigger params of both failovers and inventory files mutated from the example are
refused before anything reaches AWS or a host, by a message that names the field."""

from __future__ import annotations

import copy
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaia_ha import failover_cloud, failover_standby, live
from kaia_ha.model.inventory import NODE_ID, InventoryError, parse_inventory

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory.example.yaml"
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def example_inventory(monkeypatch):
    monkeypatch.setenv("KAIA_HA_INVENTORY", str(EXAMPLE))


@pytest.fixture
def no_aws_no_ssh(monkeypatch):
    """Any hook built or backup read is a call to AWS or a host: the spy fails the test."""

    def spy(*args, **kwargs):
        raise AssertionError("AWS or SSH was used before the input was checked")

    for module in (failover_cloud, failover_standby):
        for name in ("CoreCellEC2Hook", "KaiaNodeHook", "load_backup", "notify"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, spy)
    monkeypatch.setattr(live, "store", spy)  # the live placement is read from S3


# ----- trigger params ------------------------------------------------------------------------------------
not_bool = st.one_of(st.integers(), st.text(max_size=8), st.none(), st.lists(st.booleans(), max_size=2),
                     st.floats(allow_nan=True))
not_a_name = st.one_of(st.text(max_size=12), st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))
bad_age = st.one_of(st.integers(max_value=0), st.floats(max_value=0), st.just(float("nan")), st.just(float("inf")),
                    st.text(max_size=6), st.booleans(), st.none(), st.lists(st.integers(), max_size=2))

CLOUD_OK = {"failed_cn": "cn-1"}
CLOUD_BAD = {  # field -> values it must refuse
    "failed_cn": not_a_name.filter(lambda v: v != "cn-1"),
    "warmup": st.one_of(st.text(max_size=12), st.integers(), st.none())
                .filter(lambda v: v not in failover_cloud.WARMUP),
    "max_snapshot_age_hours": bad_age,
    "snapshot_pn": not_a_name.filter(lambda v: v not in ("auto", "pn-1", "pn-2")
                                     and v not in ("", None, 0, [], {}, False)),
    "use_presnapshot": not_bool, "fence": not_bool, "dry_run": not_bool,
}
METAL_OK = {"failed_cn": "cn-a"}
METAL_BAD = {
    "failed_cn": not_a_name.filter(lambda v: v != "cn-a"),
    "standby_cn": not_a_name.filter(lambda v: v not in ("cn-b",) and bool(v)),
    "fence_failed_active": not_bool, "host_known_dead": not_bool, "dry_run": not_bool,
}


def bad_conf(ok: dict, bad: dict):
    """A valid conf with one field wrong or (failed_cn) missing: ``(conf, the field)``."""
    wrong = st.sampled_from(sorted(bad)).flatmap(lambda f: bad[f].map(lambda v: (ok | {f: v}, f)))
    missing = st.just(({k: v for k, v in ok.items() if k != "failed_cn"}, "failed_cn"))
    return st.one_of(wrong, missing)


def refused(call, field: str) -> str:
    with pytest.raises((failover_cloud.FailoverInputError, failover_standby.FailoverInputError)) as exc:
        call()
    message = str(exc.value)
    assert message.startswith(f"{field}: "), message
    return message


@FAST
@given(case=bad_conf(CLOUD_OK, CLOUD_BAD))
def test_cloud_failover_refuses_bad_params_before_any_call(no_aws_no_ssh, case):
    conf, field = case
    refused(lambda: failover_cloud.preflight(conf, "run-x", datetime.now(timezone.utc)), field)


@FAST
@given(case=bad_conf(METAL_OK, METAL_BAD))
def test_bare_metal_failover_refuses_bad_params_before_any_call(no_aws_no_ssh, case):
    conf, field = case
    refused(lambda: failover_standby.validate(conf, "run-x"), field)


def test_the_good_params_pass_the_same_checks(no_aws_no_ssh):
    """The property above is not vacuous: the valid base passes the checks (and then meets the spy)."""
    with pytest.raises(AssertionError, match="before the input was checked"):
        failover_standby.validate(METAL_OK, "run-x")
    with pytest.raises(AssertionError, match="before the input was checked"):
        failover_cloud.preflight(CLOUD_OK | {"snapshot_pn": "pn-2"}, "run-x", datetime.now(timezone.utc))


@pytest.fixture(scope="module")
def trigger_forms():
    """The DAGs' trigger forms (Params), as the UI and the REST API check them."""
    import os

    from airflow.dag_processing.dagbag import DagBag

    os.environ["KAIA_HA_INVENTORY"] = str(EXAMPLE)
    forms = {}
    for dag_id in (failover_cloud.DAG_ID, failover_standby.DAG_ID):
        bag = DagBag(dag_folder=str(REPO / "dags" / f"{dag_id}.py"))
        assert bag.import_errors == {}, bag.import_errors
        forms[dag_id] = bag.get_dag(dag_id).params
    return forms


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.one_of(st.tuples(st.just(failover_cloud.DAG_ID), bad_conf(CLOUD_OK, CLOUD_BAD)),
                      st.tuples(st.just(failover_standby.DAG_ID), bad_conf(METAL_OK, METAL_BAD))))
def test_the_trigger_forms_refuse_wrong_types_and_choices_naming_the_param(trigger_forms, case):
    from airflow.sdk.exceptions import ParamValidationError

    dag_id, (conf, field) = case
    if field not in conf:
        return  # a missing field takes the form's default; the step checks above refuse the empty choice
    form = copy.deepcopy(trigger_forms[dag_id])
    try:
        form.update(conf)
        form.validate()
    except ParamValidationError as exc:
        assert f"param {field}:" in str(exc), str(exc)
    else:  # what the form lets through, the step checks above refuse: NaN or infinite hours, and the forms'
        # empty "choose the failed CN" entry
        assert ((field == "max_snapshot_age_hours" and not math.isfinite(conf[field]))
                or (field == "failed_cn" and conf[field] == "")), conf


# ----- inventory files -----------------------------------------------------------------------------------
def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def leaves(node, path: str = ""):
    """(path as the error prints it, parent, key) of every mapping entry."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else key
            yield here, node, key
            yield from leaves(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from leaves(value, f"{path}[{i}]")


def not_matching(pattern: str):
    return st.one_of(st.text(max_size=20), st.integers()).filter(
        lambda v: not (isinstance(v, str) and re.fullmatch(pattern, v)))


not_a_string = st.one_of(st.integers(), st.lists(st.integers(), max_size=2),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))
BAD_VALUES = {  # the inventory's fields -> values each must refuse
    "version": st.integers().filter(lambda v: v != 1), "scheme": not_matching(r"cloud|bare-metal"),
    "role": not_matching(r"active|standby"),
    "name": not_matching(r"[a-z0-9][a-z0-9-]{0,62}"), "node_id": not_matching(NODE_ID[1:-1]),
    "instance_id": not_matching(r"i-[0-9a-f]{8,17}"), "data_volume_id": not_matching(r"vol-[0-9a-f]{8,17}"),
    "elastic_ip_allocation_id": not_matching(r"eipalloc-[0-9a-f]{8,17}"),
    "subnet_id": not_matching(r"subnet-[0-9a-f]{8,17}"),
    "data_device": not_matching(r"/dev/[a-z0-9]+"), "sns_topic_arn": not_matching(r"arn:aws[a-z-]*:sns:.*"),
    "data_dir": st.from_regex(r"[a-z.][a-z/]{0,10}", fullmatch=True),
    "conf_path": st.from_regex(r"[a-z.][a-z/]{0,10}", fullmatch=True),
    "ssh_conn_id": st.one_of(st.just(""), not_a_string), "nodekey_secret_id": st.one_of(st.just(""), not_a_string),
    "ssh_conn_template": st.one_of(st.just(""), not_a_string),
    "security_group_ids": st.one_of(st.just([]), st.integers()),
    "keep_images": st.one_of(st.integers(max_value=0), st.from_regex(r"[a-z]{1,5}", fullmatch=True)),
    "keep_snapshots": st.one_of(st.integers(max_value=0), st.from_regex(r"[a-z]{1,5}", fullmatch=True)),
    "image_max_age_hours": st.one_of(st.floats(max_value=0, allow_nan=False),
                                     st.from_regex(r"[a-z]{1,5}", fullmatch=True)),
    "address": st.sampled_from(["10.0.0.100", "10.0.0.300/24", "eth0", "10.0.0.100/99"]),
    "cns": st.just([]), "pns": st.just([]), "cells": st.just([]),
}
# the cloud ids and sections are required by scheme: every one in the example is needed
REQUIRED = {"cells", "name", "scheme", "cns", "pns", "role", "ssh_conn_id", "nodekey_secret_id", "subnet_id",
            "security_group_ids", "ssh_conn_template", "address", "instance_id", "data_device", "data_volume_id",
            "elastic_ip_allocation_id", "launch", "floating_ip"}


@st.composite
def broken_inventory(draw):
    """The example with one thing wrong: ``(data, the field path the error must name)``."""
    data = example()
    entries = list(leaves(data))
    how = draw(st.sampled_from(["wrong value", "missing", "unknown field", "duplicate name"]))
    if how == "wrong value":
        path, parent, key = draw(st.sampled_from([e for e in entries if e[2] in BAD_VALUES]))
        parent[key] = draw(BAD_VALUES[key])
    elif how == "missing":
        path, parent, key = draw(st.sampled_from([e for e in entries if e[2] in REQUIRED]))
        del parent[key]
    elif how == "unknown field":
        path, parent, _ = draw(st.sampled_from([e for e in entries if isinstance(e[1][e[2]], dict)]))
        key = draw(st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True).filter(lambda k: k not in parent[_]))
        parent[_][key] = "x"
        path = f"{path}.{key}"
    else:
        named = [e for e in entries if e[2] == "name"]
        (_, first, _k), (path, second, _k2) = sorted(draw(st.lists(st.sampled_from(named), min_size=2, max_size=2,
                                                                   unique_by=lambda e: e[0])),
                                                    key=lambda e: named.index(e))
        second["name"] = first["name"]
    return data, path


@settings(max_examples=150, deadline=None)
@given(case=broken_inventory())
def test_a_broken_inventory_is_refused_naming_the_field(case):
    data, path = case
    with pytest.raises(InventoryError) as exc:
        parse_inventory(yaml.safe_dump(data), source="inv.yaml")
    message = str(exc.value)
    assert message.startswith("inv.yaml: invalid inventory"), message
    # The field itself, or (a missing section or list) the path down to it.
    assert re.search(rf"^  {re.escape(path)}(\.|\[|:)", message, re.M), (path, message)
