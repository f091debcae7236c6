"""The torch floor in requirements.txt is the version CI installs and tests, and the one running here meets it."""
import re

import torch

from conftest import ROOT


def test_the_torch_floor_is_the_tested_version():
    floor = re.search(r"^torch>=([\d.]+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    pinned = re.search(r"pip install --quiet torch==([\d.]+)", (ROOT / ".ci" / "run").read_text()).group(1)
    assert pinned.startswith(floor)  # CI tests the floor itself
    version = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert version >= tuple(int(part) for part in floor.split(".")[:2])
