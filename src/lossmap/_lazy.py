"""A package's public names, each imported from its module on first use (a module ``__getattr__``, PEP 562).

Example:
    >>> __getattr__, __dir__ = lazy_names("json", {}, {"JSONEncoder": "encoder"})  # in a package's __init__.py
    >>> __getattr__("JSONEncoder").__name__, __dir__()
    ('JSONEncoder', ['JSONEncoder'])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, namespace: dict[str, Any], exports: dict[str, str],
               loaded: Callable[[str], None] | None = None) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose names load on first use.

    Args:
        package: the package's name (``__name__``).
        namespace: its ``globals()``: a loaded name is stored there, so later lookups do not come back.
        exports: public name → the submodule (relative to ``package``) that defines it.
        loaded: called with each name once it is loaded (e.g. to register something that goes with it).

    Returns:
        tuple: ``(__getattr__, __dir__)``, to assign in the package's ``__init__.py``.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        if loaded is not None:
            loaded(name)
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
