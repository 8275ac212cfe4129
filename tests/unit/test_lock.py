"""The lock files agree with pyproject.toml: every dependency (runtime, the test and
lint extras, the build backend) is pinned, with hashes, at a version its range admits,
and nothing is pinned for eximhook that pyproject no longer asks for. contrib/install.sh
installs only from the locks; requirements/refresh.sh rewrites them."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from ..support.paths import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# how uv marks a pin that pyproject (or build.in) asked for, alone or among others
_ASKED_BY_US = {"# via eximhook (pyproject.toml)", "#   eximhook (pyproject.toml)",
                "# via -r requirements/build.in", "#   -r requirements/build.in"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _locked(name: str) -> tuple[dict[str, Version], set[str]]:
    """A lock's pins (name -> version) and the names it says pyproject asked for."""
    pins: dict[str, Version] = {}
    direct: set[str] = set()
    current = ""
    lines = (ROOT / "requirements" / name).read_text().splitlines()
    for i, line in enumerate(lines):
        if m := _PIN.match(line):
            current = canonicalize_name(m[1])
            pins[current] = Version(m[2])
            assert lines[i + 1].strip().startswith("--hash=sha256:"), f"{name}: {current} has no hash"
        elif line.strip() in _ASKED_BY_US:
            direct.add(current)
    return pins, direct


def _wanted(extras: tuple[str, ...]) -> list[Requirement]:
    reqs = [*PYPROJECT["project"]["dependencies"], *PYPROJECT["build-system"]["requires"]]
    for extra in extras:
        reqs += PYPROJECT["project"]["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize(("lock", "extras"), [
    pytest.param("runtime.lock", (), id="runtime"),
    pytest.param("dev.lock", ("test", "lint"), id="dev"),
])
def test_lock_matches_pyproject(lock: str, extras: tuple[str, ...]) -> None:
    pins, direct = _locked(lock)
    wanted = _wanted(extras)
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is in pyproject.toml but not in {lock}: bash requirements/refresh.sh"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{lock} pins {name}=={pins[name]}, outside pyproject's {req}: bash requirements/refresh.sh"
    stale = direct - {canonicalize_name(r.name) for r in wanted}
    assert not stale, f"{lock} still pins {sorted(stale)} for eximhook: bash requirements/refresh.sh"


def test_the_dev_lock_installs_the_runtime_versions() -> None:
    """CI tests with the dev lock what admins install with the runtime lock."""
    runtime, _ = _locked("runtime.lock")
    dev, _ = _locked("dev.lock")
    assert {n: dev.get(n) for n in runtime} == runtime


def test_build_backend_floor_is_the_locked_one() -> None:
    """build.in repeats pyproject's [build-system] requires (pip builds eximhook with
    --no-build-isolation from the locked setuptools)."""
    (build,) = PYPROJECT["build-system"]["requires"]
    lines = [ln for ln in (ROOT / "requirements" / "build.in").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines == [build]


def test_no_range_admits_a_known_vulnerable_release() -> None:
    last_vulnerable = {
        "setuptools": "78.1.0",  # CVE-2025-47273: path traversal in PackageIndex
    }
    for req in _wanted(()):
        bad = last_vulnerable.get(canonicalize_name(req.name))
        assert bad is None or not req.specifier.contains(bad, prereleases=True), f"{req} admits {bad}"
