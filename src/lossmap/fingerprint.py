"""Fingerprints that a resumed run compares: the data samples and the user's functions."""

from __future__ import annotations

import functools
import hashlib
import inspect
import types
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .space import feed_bytes

__all__ = ["feed", "callable_identity", "qualified_name"]


def feed(h: "hashlib._Hash", obj: Any) -> None:
    """Add ``obj`` (tensors by content, containers item by item, plain values by repr) to the hash ``h``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        feed_bytes(h, t)
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
        _feed_array(h, obj)
    else:  # an object of the user's: its type and, where it is not just an address, its repr
        text = repr(obj)
        h.update(f"O{type(obj).__name__}|{'' if ' at 0x' in text else text}|".encode())


def _feed_array(h: "hashlib._Hash", a: np.ndarray) -> None:
    """Numbers as a tensor's bytes (piecewise); other fixed-size values (text, dates) by their bytes;
    object arrays item by item."""
    if a.dtype.hasobject:
        h.update(f"A{a.shape}|".encode())
        for item in a.ravel():
            feed(h, item)
        return
    try:
        t = torch.from_numpy(np.ascontiguousarray(a))
    except TypeError:  # a dtype torch has no tensor for
        h.update(f"N{a.dtype.str}{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
        return
    feed(h, t)


def callable_identity(fn: Callable | None) -> str | None:
    """A best-effort identity of a user's function, as resuming compares it: ``"module.qualname sha256:<hex>"``,
    the hash taken over its source (a lambda's bytecode), or over its bytecode and
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


def qualified_name(fn: Any) -> str:
    """A readable name of a user's callable: ``module.qualname``, ``functools.partial(...)``, or its class."""
    return _callable_text(fn, depth=0)[0]


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
    from .losses import Metric

    if isinstance(fn, Metric):  # a declared metric: its function and direction
        inner, text = _callable_text(fn.fn, depth + 1)
        return f"Metric({inner})", (text or b"") + f"|higher={fn.higher_is_better}".encode()
    cls = type(fn)  # a callable object: its class, and for a module (an nn loss) its settings and tensors
    if isinstance(fn, torch.nn.Module):
        h = hashlib.sha256(_source(cls) or b"")
        feed(h, {k: v for k, v in vars(fn).items() if not k.startswith("_") and isinstance(v, (int, float, str, bool, type(None)))})
        feed(h, dict(fn.state_dict()))
        return _qualname(cls), h.hexdigest().encode()
    return _qualname(cls), _source(cls)


def _feed_arg(h: "hashlib._Hash", arg: Any, depth: int) -> None:
    if callable(arg) and not isinstance(arg, (torch.Tensor, type)):
        name, text = _callable_text(arg, depth + 1)
        h.update(f"F{name}|".encode() + (text or b"") + b"|")
    else:
        feed(h, arg)


def _source(obj: Any) -> bytes | None:
    """The source of a function or class, or else its bytecode, names and constants; None for neither (e.g. a
    class defined in C). A lambda is always taken by its bytecode: its source lines also hold the code around
    it (the call it is passed to), which must not count."""
    text = None
    if getattr(obj, "__name__", None) != "<lambda>":
        try:
            text = inspect.getsource(obj)
        except Exception:  # noqa: BLE001 - no file (an interactive session, exec), a C class, …
            text = None
    if text is not None:
        return b"S" + text.encode()
    code = getattr(obj, "__code__", None) or getattr(getattr(obj, "__call__", None), "__code__", None)
    return b"C" + _code_text(code) if isinstance(code, types.CodeType) else None


def _code_text(code: types.CodeType) -> bytes:
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        parts.append(_code_text(const) if isinstance(const, types.CodeType) else repr(const).encode())
    return b"|".join(parts)
