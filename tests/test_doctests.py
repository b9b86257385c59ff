"""The examples in the docstrings run (those marked ``# doctest: +SKIP`` excepted), and every object of the
API reference (docs/api/*.md) documents its arguments, what it returns, and shows an example."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest
import yaml

import lossmap

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["lossmap", *sorted(m.name for m in pkgutil.walk_packages(lossmap.__path__, "lossmap.")
                              if not m.name.endswith("__main__"))]  # importing that one runs the command line


@pytest.mark.slow
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def test_the_doctest_runner_catches_a_wrong_example():
    """What the check above relies on: a wrong result fails, a skipped example does not run."""
    def wrong():
        """>>> 1 + 1
        3
        >>> raise SystemExit  # doctest: +SKIP
        """
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(wrong, "wrong", globs={}):
        runner.run(test, out=lambda _: None)
    assert (runner.failures, runner.tries) == (1, 1)


def reference_objects() -> list[tuple[str, object, list | None]]:
    """``(identifier, object, members shown)`` of everything the API pages render with ``::: identifier``."""
    found = []
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("::: "):
                continue
            ident = line[4:].strip()
            block = []
            for follow in lines[i + 1:]:
                if follow.startswith("    ") or not follow.strip():
                    block.append(follow[4:])
                else:
                    break
            options = (yaml.safe_load("\n".join(block)) or {}).get("options", {})
            module_name, _, attr = ident.rpartition(".")
            try:
                obj = importlib.import_module(ident)
            except ModuleNotFoundError:
                obj = getattr(importlib.import_module(module_name), attr)
            members = options.get("members")
            if inspect.ismodule(obj):
                for member in members or []:
                    found.append((f"{ident}.{member}", getattr(obj, member), None))
            else:
                found.append((ident, obj, members if isinstance(members, list) else None))
    return found


def _needs(func) -> tuple[bool, bool]:
    """(documents arguments, documents a return value) that ``func``'s signature calls for."""
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.name not in ("self", "cls")]
    ret = sig.return_annotation
    returns = ret is not inspect.Signature.empty and ret not in (None, "None")
    return bool(params), returns


def _problems(ident: str, obj, members: list | None = None) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    out = []
    if inspect.isclass(obj):
        if "Examples:" not in doc:
            out.append(f"{ident}: no Examples: section")
        init_params = [] if issubclass(obj, BaseException) else list(inspect.signature(obj).parameters.values())
        if init_params and "Args:" not in doc:
            out.append(f"{ident}: no Args: section for its constructor")
        for name, member in vars(obj).items():
            if name.startswith("_") or not inspect.isfunction(getattr(member, "__func__", member)):
                continue
            if members is not None and name not in members:
                continue
            func = getattr(member, "__func__", member)
            mdoc = inspect.getdoc(func) or ""
            args, returns = _needs(func)
            if not mdoc or (args and "Args:" not in mdoc) or (returns and "Returns:" not in mdoc):
                out.append(f"{ident}.{name}: needs a docstring with {'Args:, ' if args else ''}{'Returns:' if returns else ''}")
    elif inspect.isfunction(obj):
        args, returns = _needs(obj)
        for section, wanted in (("Args:", args), ("Returns:", returns), ("Examples:", True)):
            if wanted and section not in doc:
                out.append(f"{ident}: no {section} section")
        if "Returns:" in doc and not re.search(r"Returns:\n\s+[\w.\[\], |()]+: ", doc):
            out.append(f"{ident}: Returns: should start with the type ('type: description')")
    return out


def test_every_reference_object_has_args_returns_and_an_example():
    objects = reference_objects()
    assert len(objects) >= 40
    problems = [p for ident, obj, members in objects for p in _problems(ident, obj, members)]
    assert problems == [], "\n".join(problems)


def test_the_completeness_check_catches_a_bare_function():
    def bare(x: int) -> int:
        """Twice x."""
        return 2 * x

    assert len(_problems("bare", bare)) == 3
