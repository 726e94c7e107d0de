"""The layers (README, Layout), read from the source with ``ast``: nothing is imported.

DAG files -> step modules -> shared libraries -> hooks -> the domain model. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"kaia_ha": ROOT / "include" / "kaia_ha", "kaia_ha_airflow": ROOT / "plugins" / "kaia_ha_airflow"}
DAGS = ROOT / "dags"
MODEL = "kaia_ha.model"
HOOKS = "kaia_ha_airflow"
# One module per DAG's task work: they share the libraries (takeover, pn, floating_ip, standby, alerts, report,
# live, dag_ids) and the model, never each other.
STEPS = {f"kaia_ha.{name}" for name in
         ("failover_cloud", "failover_standby", "maintenance", "readiness", "enroll", "watchdog")}
# Top-level names of the project's code outside these packages: the simulated cell, the drill, the repo's tests.
OTHER_PROJECT = ("simcell", "drill", "tests", "bench", "dags")


def _module_name(package: str, base: Path, path: Path) -> str:
    parts = [package, *path.relative_to(base).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    found = {}
    for package, base in PACKAGES.items():
        for path in sorted(base.rglob("*.py")):
            found[_module_name(package, base, path)] = path
    for path in sorted(DAGS.glob("*.py")):
        found[path.stem] = path  # the DAG folder is on sys.path: a DAG file is a top-level module
    return found


SOURCES = _sources()
DAG_MODULES = {name for name, path in SOURCES.items() if path.parent == DAGS}


def _project(target: str) -> bool:
    top = target.split(".")[0]
    return top in PACKAGES or top in OTHER_PROJECT or target in DAG_MODULES


def imports(module: str, source: str, is_package: bool = False) -> list[tuple[str, int]]:
    """(imported project module, line) for every import in ``source``; ``from pkg import name`` is ``pkg.name``
    when that is a module, else ``pkg``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in SOURCES else base, node.lineno))
    return [(target, line) for target, line in out if _project(target)]


def _within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every layering rule ``module`` breaks, each naming the module, the import and its line."""
    found = []
    for target, line in imports(module, source, is_package):
        where = f"{module} imports {target} (line {line})"
        if _within(module, MODEL) and not _within(target, MODEL):
            found.append(f"{where}: the domain model imports nothing of the project outside {MODEL}")
        if _within(module, HOOKS) and not (_within(target, HOOKS) or _within(target, MODEL)):
            found.append(f"{where}: the hooks and operators import only {HOOKS}.* and {MODEL}.*")
        if module in STEPS and target in STEPS - {module}:
            found.append(f"{where}: a step module imports no other step module (put what both need in a shared "
                         "library: takeover, pn, floating_ip, standby, dag_ids, ...)")
        if (_within(module, "kaia_ha") and module not in STEPS and not _within(module, MODEL)
                and target in STEPS):
            found.append(f"{where}: a shared library imports no step module (they are above it)")
        if module not in DAG_MODULES and (target in DAG_MODULES or _within(target, "dags")):
            found.append(f"{where}: nothing under include/ or plugins/ imports a DAG file")
    return found


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_each_module_keeps_to_its_layer(module):
    path = SOURCES[module]
    broken = violations(module, path.read_text(), is_package=path.name == "__init__.py")
    assert not broken, f"{path.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_the_layers_are_all_there():
    """The check reads real modules: the model, the hooks, every step module and the DAG files."""
    assert {f"{MODEL}.inventory", f"{MODEL}.keys", f"{HOOKS}.hooks.kaia_node", *STEPS} <= set(SOURCES)
    assert len(DAG_MODULES) >= 7
    assert "kaia_ha.floating_ip" in {target for target, _ in imports("kaia_ha.enroll",
                                                                     SOURCES["kaia_ha.enroll"].read_text())}


@pytest.mark.parametrize("module, source, rule", [
    ("kaia_ha.enroll", "from kaia_ha.readiness import parse_static_nodes\n", "no other step module"),
    ("kaia_ha.watchdog", "def f():\n    from kaia_ha import failover_cloud\n", "no other step module"),
    ("kaia_ha.model.tags", "from kaia_ha import live\n", "the domain model"),
    ("kaia_ha.model.placement", "from . import inventory\nfrom .. import report\n", "the domain model"),
    ("kaia_ha_airflow.hooks.ec2", "import kaia_ha.takeover\n", "the hooks and operators"),
    ("kaia_ha.takeover", "import kaia_cn_maintenance\n", "imports a DAG file"),
    ("kaia_ha.pn", "from kaia_ha.maintenance import DAG_ID\n", "a shared library imports no step module"),
])
def test_the_check_catches_a_broken_layer(module, source, rule):
    broken = violations(module, source)
    assert broken and all(module in b for b in broken) and any(rule in b for b in broken), broken
