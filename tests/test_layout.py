"""Dependencies point one way: the library packages never import a script, and what builds on the scripts
(experiments/, the other scripts) calls only their main(argv)."""
import ast

import pytest

from conftest import ROOT

SCRIPTS = {path.stem for path in ROOT.glob("*.py")}  # train, sample, bench, bench_peft, plot
LIBRARY = ("model", "prefix", "baselines", "data", "metrics", "common", "runs", "benchmarks")
USERS = sorted(ROOT.glob("experiments/*.py")) + sorted(ROOT.glob("*.py")) + sorted(ROOT.glob("scripts/*.py"))


def scripts_used(path):
    """(script, name) for every use of a script in the file: `import train` then `train.x`, or `from train import x`
    (x is None for a script module used other than by an attribute)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported, uses = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.asname or alias.name for alias in node.names if alias.name in SCRIPTS}
        elif isinstance(node, ast.ImportFrom) and node.module in SCRIPTS and node.level == 0:
            uses += [(node.module, alias.name) for alias in node.names]
    attributes = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported:
            uses.append((node.value.id, node.attr))
        elif isinstance(node, ast.Name) and node.id in imported and id(node) not in attributes \
                and isinstance(node.ctx, ast.Load):
            uses.append((node.id, None))  # e.g. passed on whole: what it is used for cannot be told
    return imported, uses


def test_the_scripts_and_packages_are_what_this_test_thinks():
    assert {"train", "sample", "bench", "bench_peft", "plot"} <= SCRIPTS
    assert all((ROOT / package / "__init__.py").is_file() for package in LIBRARY)


@pytest.mark.parametrize("package", LIBRARY)
def test_no_library_module_imports_a_script(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        imported, uses = scripts_used(path)
        assert not imported and not uses, f"{path.relative_to(ROOT)} imports the script(s) {imported or uses}"


def test_what_builds_on_a_script_calls_only_its_main():
    for path in USERS:
        _, uses = scripts_used(path)
        internals = [f"{script}.{name}" for script, name in uses if name not in ("main", None)]
        assert not internals, f"{path.relative_to(ROOT)} reaches into a script: {internals}"


def test_the_check_sees_a_script_used_beyond_its_main(tmp_path):
    offender = tmp_path / "offender.py"
    offender.write_text("import train\nfrom sample import score\ntrain.main([])\ntrain.build_method(None)\n")
    _, uses = scripts_used(offender)
    assert set(uses) == {("sample", "score"), ("train", "main"), ("train", "build_method")}
