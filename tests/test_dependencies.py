"""The declared dependency ranges are the tested ones.

``tests/constraints-min.txt`` pins the oldest release of each dependency; ``make test-min`` runs the
suite against it. These tests keep the pins and pyproject.toml's lower bounds equal, allow an upper
bound only where a release is known to remove an API prefgame uses, and, under ``make test-min``
(``PREFGAME_MIN_VERSIONS=1``), check that the oldest releases are the ones installed.
"""

from __future__ import annotations

import os
import tomllib
from importlib.metadata import requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

CONSTRAINTS = Path(__file__).parent / "constraints-min.txt"
PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"
# name -> why it has an upper bound; empty: no release is known to remove an API prefgame uses
UPPER_BOUNDS: dict[str, str] = {}
# packages of optional extras that prefgame's own code imports (not tools such as pytest): pinned too, with
# one lower bound in every extra that lists them (peft: the `dev` extra for its tests and the `peft` extra)
PINNED_EXTRAS = {"peft": ("dev", "peft")}


def pins() -> dict[str, Version]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            out[name.strip().lower()] = Version(pinned.strip())
    return out


def declared() -> dict[str, Requirement]:
    """prefgame's own (non-extra) requirements, as installed."""
    reqs = [Requirement(r) for r in requires("prefgame") or []]
    return {r.name.lower(): r for r in reqs if r.marker is None}


def extra_requirements() -> dict[str, list[Requirement]]:
    """The optional extras as pyproject.toml declares them (the file, not an installed copy's metadata)."""
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    return {extra: [Requirement(r) for r in reqs] for extra, reqs in extras.items()}


def test_every_dependency_has_a_lower_bound_equal_to_its_pin() -> None:
    deps, pinned = declared(), pins()
    assert set(deps) | set(PINNED_EXTRAS) == set(pinned), (
        "tests/constraints-min.txt and pyproject.toml list different packages"
    )
    for name, req in deps.items():
        lower = [s for s in req.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{name}: one lower bound (>=) expected, got {req.specifier}"
        assert Version(lower[0].version) == pinned[name], f"{name}: pyproject says {lower[0]}, pin {pinned[name]}"
        upper = [s for s in req.specifier if s.operator in ("<", "<=", "==", "~=", "!=")]
        assert not upper or name in UPPER_BOUNDS, f"{name}: upper bound {req.specifier} without a known reason"


@pytest.mark.skipif(os.environ.get("PREFGAME_MIN_VERSIONS") != "1", reason="runs under make test-min")
def test_the_oldest_declared_releases_are_installed() -> None:
    for name, pinned in pins().items():
        assert Version(Version(version(name)).base_version) == pinned, f"{name} {version(name)} is not {pinned}"


def test_pinned_extras_have_their_pin_as_lower_bound_in_every_extra() -> None:
    extras, pinned = extra_requirements(), pins()
    for name, listed_in in PINNED_EXTRAS.items():
        for extra in listed_in:
            (req,) = [r for r in extras[extra] if r.name.lower() == name]
            lower = [s for s in req.specifier if s.operator == ">="]
            assert len(lower) == 1 and Version(lower[0].version) == pinned[name], f"{extra}: {req} (pin {pinned[name]})"
            assert all(s.operator == ">=" for s in req.specifier), f"{extra}: {req} has an upper bound"
