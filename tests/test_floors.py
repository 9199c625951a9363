"""The dependency floors pyproject.toml declares are the versions CI's floors job installs.

``.ci/floors`` installs ``.ci/floors.txt`` (with torch at the pin of the README's commands)
and runs the tests listed in ``.ci/floors-tests.txt``; a floor raised or lowered in one
place and not the other would make the declared floor untested.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _declared_floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    floors = {}
    for requirement in requirements:
        if requirement.startswith("tangents"):
            continue  # the package's own extras
        match = re.fullmatch(r"([A-Za-z0-9_-]+)(\[[a-z,]+\])?>=([0-9.]+)", requirement)
        assert match, f"{requirement!r}: every dependency is declared as name>=floor"
        name, _, version = match.groups()
        assert floors.setdefault(name, version) == version, f"{name}: two different floors"
    return floors


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name] = version
    return pins


def test_floors_file_pins_exactly_the_declared_floors():
    declared = _declared_floors()
    pinned = _pins(ROOT / ".ci" / "floors.txt")
    # torch is installed by the README's own pin (torch==2.13.0), not from floors.txt
    assert declared.pop("torch") == "2.13.0"
    assert "torch==2.13.0" in (ROOT / ".ci" / "floors").read_text()
    # dask[distributed] brings distributed at the same version
    assert pinned.pop("distributed") == declared["dask"]
    # a dependency of matplotlib, pinned as of matplotlib's floor (see floors.txt)
    assert pinned.pop("pyparsing") == "3.1.4"
    assert pinned == declared


def test_floors_job_runs_existing_tests():
    listed = (ROOT / ".ci" / "floors-tests.txt").read_text().split()
    assert listed, "the floors job must run some tests"
    missing = [name for name in listed if not (ROOT / name.split("::")[0]).exists()]
    assert not missing, f"floors-tests.txt names files that do not exist: {missing}"
