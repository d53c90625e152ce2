"""Registries of variants that register themselves: self-play algorithms
(:mod:`prefgame.train.selfplay.registry`) and preference-model kinds (:mod:`prefgame.models.kinds`).

A registry is a dict from name to a record with a ``name``; each variant's module adds its record with
:func:`register`, and :func:`load_package` imports every module of the variants' package so that all
of them are registered, then orders the dict.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

Spec = TypeVar("Spec")


def register(table: dict[str, Any], spec: Spec, what: str) -> Spec:
    """Add ``spec`` under its name; a second, different record of the same name is an error."""
    name = spec.name  # type: ignore[attr-defined]
    if name in table and table[name] is not spec:
        raise ValueError(f"{what} {name!r} is registered twice")
    table[name] = spec
    return spec


def load_package(package: ModuleType, table: dict[str, Any], order: Callable[[tuple[str, Any]], Any]) -> dict:
    """Import every module of ``package`` (each registers itself in ``table``), then order ``table`` by
    ``order`` over its (name, record) items, whatever the import order."""
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    ordered = sorted(table.items(), key=order)
    table.clear()
    table.update(ordered)
    return table
