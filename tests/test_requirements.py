"""The torch floor in requirements.txt is the version CI installs and tests, and the one running here meets it; CI
also tests the newest torch."""
import re

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
    assert script.count("-m pytest") == 2 and f'"${venv}/bin/python" -m pytest' in script
