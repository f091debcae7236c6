"""The torch floor in requirements.txt is the version CI installs and tests, and the one running here meets it; CI
also tests the newest torch, and runs README's test commands, the slow tests' too, on both."""
import re
import tomllib

import torch

from conftest import ROOT


def test_the_torch_floor_is_the_tested_version():
    floor = re.search(r"^torch>=([\d.]+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    pinned = re.search(r"pip install --quiet torch==([\d.]+)", (ROOT / ".ci" / "run").read_text()).group(1)
    assert pinned.startswith(floor)  # CI tests the floor itself
    version = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert version >= tuple(int(part) for part in floor.split(".")[:2])


def test_ci_runs_the_tests_again_on_an_unpinned_torch_in_a_venv_of_its_own():
    script = (ROOT / ".ci" / "run").read_text()
    venv = re.search(r'python -m venv "\$(\w+)"', script).group(1)
    install = re.search(rf'"\${venv}/bin/python" -m pip install .*', script).group(0)
    assert re.search(r"\btorch\b(?![=<>~])", install) and "requirements-dev.txt" in install  # unpinned: the newest
    assert f'"${venv}/bin/python" -m pytest' in script


def test_readme_ci_and_the_slow_marker_agree():
    """`python -m pytest` leaves out the tests marked slow; README gives that command and `-m slow`'s, and CI runs
    both, as README writes them, on each torch it tests."""
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-m 'not slow'" in options["addopts"]
    assert any(marker.startswith("slow: ") for marker in options["markers"])
    tests = [path.read_text(encoding="utf-8") for path in (ROOT / "tests").glob("test_*.py")]
    assert any(re.search(r"^@pytest\.mark\.slow\b", text, re.M) for text in tests)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"^ {4}(python -m pytest\b.*?)\s*(?:#.*)?$", readme, re.M)
    assert sorted(commands) == ["python -m pytest", "python -m pytest -m slow"]
    script = (ROOT / ".ci" / "run").read_text()
    venv = re.search(r'python -m venv "\$(\w+)"', script).group(1)
    ran = re.findall(r"^(python|\"\$\w+/bin/python\") (-m pytest\b.*)$", script, re.M)
    pythons = ("python", f'"${venv}/bin/python"')
    assert sorted(ran) == sorted((python, command.removeprefix("python ")) for python in pythons
                                 for command in commands)
