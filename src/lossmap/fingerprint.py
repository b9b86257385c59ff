"""Fingerprints that a resumed run compares: the data samples and the user's functions."""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import types
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .evaluate import Batch

__all__ = ["feed", "batches_hash", "callable_identity"]


def feed(h: "hashlib._Hash", obj: Any) -> None:
    """Add ``obj`` (tensors by content, containers item by item, plain values by repr) to the hash ``h``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        for key in sorted(obj, key=str):
            h.update(f"K{key}|".encode())
            feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}|".encode())
        for item in obj:
            feed(h, item)
    elif isinstance(obj, (int, float, str, bool)) or obj is None:
        h.update(f"V{obj!r}|".encode())
    elif isinstance(obj, np.ndarray):
        feed(h, torch.from_numpy(np.ascontiguousarray(obj)))
    else:  # an object of the user's: its type and, where it is not just an address, its repr
        text = repr(obj)
        h.update(f"O{type(obj).__name__}|{'' if ' at 0x' in text else text}|".encode())


def batches_hash(batches: Sequence[Batch] | None) -> str:
    """A hash of the samples of cached batches (empty for None)."""
    if batches is None:
        return ""
    h = hashlib.sha256()
    for b in batches:
        feed(h, b.raw)
    return h.hexdigest()


def callable_identity(fn: Callable | None) -> str | None:
    """A best-effort identity of a user's function, as resuming compares it: ``"module.qualname sha256:<hex>"``,
    the hash taken over its source (the lambda's own expression for a lambda), or over its bytecode and
    constants where there is no source; a ``functools.partial`` adds its arguments, a callable object its
    class's source. Builtins and the like have only their name. None (the default) stays None.

    Only what the source says is seen: a changed closure variable, global or object state gives the same
    identity."""
    if fn is None:
        return None
    name, text = _callable_text(fn, depth=0)
    if text is None:
        return name
    return f"{name} sha256:{hashlib.sha256(text).hexdigest()}"


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__qualname__
    return f"{module}.{qual}" if isinstance(module, str) and module else str(qual)


def _callable_text(fn: Any, depth: int) -> tuple[str, bytes | None]:
    """``(name, what to hash)`` of a callable; what to hash is None when nothing but the name is known."""
    if depth > 8:  # a partial of a partial of …: enough
        return type(fn).__qualname__, None
    if isinstance(fn, functools.partial):
        inner, text = _callable_text(fn.func, depth + 1)
        h = hashlib.sha256(b"partial|" + inner.encode() + b"|" + (text or b""))
        for arg in fn.args:
            _feed_arg(h, arg, depth)
        for key in sorted(fn.keywords):
            h.update(f"K{key}|".encode())
            _feed_arg(h, fn.keywords[key], depth)
        return f"functools.partial({inner})", h.hexdigest().encode()
    if isinstance(fn, types.MethodType):  # a bound method: its function (the class is in the qualname)
        return _callable_text(fn.__func__, depth + 1)
    if isinstance(fn, (types.FunctionType, type)):
        return _qualname(fn), _source(fn)
    if isinstance(fn, (types.BuiltinFunctionType, types.MethodWrapperType, types.WrapperDescriptorType,
                       types.MethodDescriptorType, types.ClassMethodDescriptorType)):
        return _qualname(fn), None
    code = getattr(fn, "__code__", None)
    if isinstance(code, types.CodeType):  # a function-like object (e.g. a compiled or wrapped function)
        return _qualname(fn), _source(fn)
    cls = type(fn)  # a callable object: its class
    return _qualname(cls), _source(cls)


def _feed_arg(h: "hashlib._Hash", arg: Any, depth: int) -> None:
    if callable(arg) and not isinstance(arg, (torch.Tensor, type)):
        name, text = _callable_text(arg, depth + 1)
        h.update(f"F{name}|".encode() + (text or b"") + b"|")
    else:
        feed(h, arg)


def _source(obj: Any) -> bytes | None:
    """The source of a function or class (a lambda's own expression, not the lines around it), or else its
    bytecode and constants; None for neither (e.g. a class defined in C)."""
    text = _lambda_expression(obj) if getattr(obj, "__name__", None) == "<lambda>" else None
    if text is None:
        try:
            text = inspect.getsource(obj)
        except Exception:  # noqa: BLE001 - no file (an interactive session, exec), a C class, …
            text = None
    if text is not None:
        return b"S" + text.encode()
    code = getattr(obj, "__code__", None) or getattr(getattr(obj, "__call__", None), "__code__", None)
    return b"C" + _code_text(code) if isinstance(code, types.CodeType) else None


def _lambda_expression(fn: Any) -> str | None:
    """The text of the lambda expression ``fn`` was made from, found in its file; None when it cannot be told."""
    try:
        lines, lnum = inspect.findsource(fn)
        source = "".join(lines)
        tree = ast.parse(source)
    except Exception:  # noqa: BLE001 - no source, or a file that does not parse as a whole
        return None
    found = [n for n in ast.walk(tree) if isinstance(n, ast.Lambda) and n.lineno == lnum + 1]
    if len(found) > 1:  # several on one line: the one whose body holds every position of fn's code
        spots = [(p[0], p[2], p[1], p[3]) for p in fn.__code__.co_positions() if None not in p and p[2] != p[3]] \
            if hasattr(fn.__code__, "co_positions") else []

        def holds(n: ast.Lambda) -> bool:
            body = n.body
            return bool(spots) and all(
                (body.lineno, body.col_offset) <= (l0, c0) and (l1, c1) <= (body.end_lineno, body.end_col_offset)
                for l0, c0, l1, c1 in spots
            )

        found = sorted((n for n in found if holds(n)), key=lambda n: len(ast.get_source_segment(source, n) or ""))[:1]
    return ast.get_source_segment(source, found[0]) if len(found) == 1 else None


def _code_text(code: types.CodeType) -> bytes:
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        parts.append(_code_text(const) if isinstance(const, types.CodeType) else repr(const).encode())
    return b"|".join(parts)
