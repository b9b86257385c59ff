"""The first moved layer, cached: when the first module holding moved tensors is a Linear or Conv whose
input does not depend on moved tensors, its output at θ0 + Σ cᵢdᵢ is exactly L(x; θ0) + Σ cᵢ L(x; dᵢ)
(dᵢ's weight and bias parts). Those k+1 outputs are computed once per grid; a point then costs k axpys
over the layer's output instead of the layer.

That trades 2·fan-in FLOPs per output value for k+1 values read from memory, so it pays only for a wide
first layer (a Linear on pixels: yes; the seed CNN's conv1 with fan-in 9: no — measured slower, see the
performance page), hence :data:`MIN_FAN_IN`. Modules before that layer still run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.source import available_bytes

if TYPE_CHECKING:
    from .fast import FastEngine

__all__ = ["FirstLayer", "build_first_layer", "MIN_FAN_IN", "CACHE_BYTES"]

MIN_FAN_IN = 128
CACHE_BYTES = 2 * 1024**3
_AFFINE_FORWARDS = (nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (while caching the first layer's input)."""


class FirstLayer:
    """Cached outputs of the first moved Linear/Conv: ``cache[j] = [L(x_j; θ0), L(x_j; d_1), …]`` per batch j."""

    def __init__(self, module: nn.Module, cache: list[list[torch.Tensor]]) -> None:
        self.module = module
        self.cache = cache
        self.buffers: dict[tuple, torch.Tensor] = {}
        self.current: torch.Tensor | None = None

    def prepare(self, j: int, coeffs: Sequence[float]) -> None:
        """Write L at the point ``coeffs`` for batch ``j`` into a reused buffer (returned by the stub)."""
        z = self.cache[j]
        key = (tuple(z[0].shape), z[0].stride())
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = torch.empty_like(z[0])
        started = False
        for c, zi in zip(coeffs, z[1:]):
            if c != 0.0:
                if started:
                    buf.add_(zi, alpha=float(c))
                else:  # one pass fewer than copy + add
                    torch.add(z[0], zi, alpha=float(c), out=buf)
                    started = True
        if not started:
            buf.copy_(z[0])
        self.current = buf

    def stub(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        assert self.current is not None
        return self.current

    def install(self) -> None:
        self.module.forward = self.stub  # an instance attribute shadows the class's forward

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)
        self.current = None


def _owners(eng: "FastEngine") -> list[nn.Module] | None:
    """The leaf modules that hold the moved tensors (None when a container uses one itself)."""
    moved = {id(t) for t, d in zip(eng.user_live, zip(*eng.work.directions)) if any(bool(x.any()) for x in d)}
    if not moved:
        return None
    owners: dict[int, nn.Module] = {}
    for m in eng.model.modules():
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            if id(t) in moved:
                if any(True for _ in m.children()):
                    return None  # a container uses the tensor itself: order unknown
                owners[id(t)] = m
    if len(owners) != len(moved):
        return None
    return list({id(m): m for m in owners.values()}.values())


def _first_call(eng: "FastEngine", modules: list[nn.Module], coeffs: Sequence[float]) -> tuple[list[nn.Module], torch.Tensor | None]:
    """The order in which ``modules`` are called on the probe batch at ``coeffs``, and the first one's input."""
    calls: list[nn.Module] = []
    seen: dict[str, torch.Tensor] = {}

    def pre(m: nn.Module, args: Any) -> None:
        calls.append(m)
        if len(calls) == 1 and args and isinstance(args[0], torch.Tensor):
            seen["x"] = args[0].detach().clone()

    eng.work.write(coeffs)
    handles = [m.register_forward_pre_hook(pre) for m in modules]
    try:
        with torch.inference_mode():
            eng.forward(eng.source.first().inputs)
    finally:
        for h in handles:
            h.remove()
    return calls, seen.get("x")


def _find(eng: "FastEngine", force: bool) -> nn.Module | None:
    """The first moved module, if it is an affine layer (wide enough unless ``force``) whose input does not move."""
    modules = _owners(eng)
    if modules is None:
        return None
    k = len(eng.work.directions)
    calls, x0 = _first_call(eng, modules, [0.0] * k)
    first = calls[0] if calls else None
    if first is None or x0 is None or sum(c is first for c in calls) != 1:
        return None
    if type(first).forward not in _AFFINE_FORWARDS or "forward" in vars(first):
        return None
    if not force and first.weight[0].numel() < MIN_FAN_IN:
        return None
    _, x1 = _first_call(eng, modules, [1.0] * k)
    return first if x1 is not None and torch.equal(x0, x1) else None


def _parts(eng: "FastEngine", t: torch.Tensor | None) -> list[torch.Tensor | None]:
    """θ0 and the direction parts of one of the layer's tensors (zeros where it does not move)."""
    k = len(eng.work.directions)
    if t is None:
        return [None] * (k + 1)
    index = {id(u): i for i, u in enumerate(eng.user_live)}
    if id(t) in index:
        i = index[id(t)]
        return [eng.work.origin[i]] + [d[i] for d in eng.work.directions]
    return [t.detach()] + [torch.zeros_like(t)] * k


def _affine(first: nn.Module) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    if isinstance(first, nn.Linear):
        return F.linear
    return first._conv_forward  # padding modes included


def _cache(eng: "FastEngine", first: nn.Module, ws: list, bs: list) -> list[list[torch.Tensor]] | None:
    """The layer's k+1 outputs for every batch (its inputs taken at θ0), or None when they do not fit memory."""
    affine = _affine(first)
    grab: dict[str, torch.Tensor] = {}

    def capture(_m: nn.Module, args: Any) -> None:
        grab["x"] = args[0]
        raise _Stop  # the rest of the forward is not needed

    eng.work.write([0.0] * len(eng.work.directions))
    cache: list[list[torch.Tensor]] = []
    handle = first.register_forward_pre_hook(capture)
    try:
        with torch.inference_mode():
            for j, b in enumerate(eng.source):
                grab.clear()
                try:
                    eng.forward(b.inputs)
                except _Stop:
                    pass
                if "x" not in grab:
                    return None
                outs = [affine(grab["x"], w, bb) for w, bb in zip(ws, bs)]
                if j == 0:
                    per_sample = outs[0][0].numel() * outs[0].element_size() if outs[0].dim() > 0 else 0
                    need = per_sample * eng.source.total * len(outs)
                    if need > min(CACHE_BYTES, available_bytes(eng.work.origin[0].device) // 4):
                        return None
                cache.append(outs)
    finally:
        handle.remove()
    return cache


def _agrees(eng: "FastEngine", layer: FirstLayer) -> bool:
    """On the probe batch at the point (1, …, 1): stub + rest of the net == the full net."""
    one = [1.0] * len(eng.work.directions)
    eng.work.write(one)
    inputs = eng.source.first().inputs
    try:
        layer.install()
        with torch.inference_mode():
            layer.prepare(0, one)
            fast = eng.work.output(eng.forward(inputs))
    finally:
        layer.remove()
    with torch.inference_mode():
        ref = eng.work.output(eng.forward(inputs))
    if not isinstance(ref, torch.Tensor) or not isinstance(fast, torch.Tensor):
        return False
    tol = 1e-9 if ref.dtype == torch.float64 else 1e-3
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return fast.shape == ref.shape and float((fast - ref).abs().max()) <= tol * max(scale, 1.0)


def build_first_layer(eng: "FastEngine", force: bool = False) -> FirstLayer | None:
    """The cached first layer of ``eng``'s model, or None where it is not exact or does not pay."""
    eng.model.eval()
    first = _find(eng, force)
    if first is None:
        return None
    ws, bs = _parts(eng, first.weight), _parts(eng, first.bias)
    if isinstance(first, nn.Conv2d) and eng.overrides:
        ws = [w.contiguous(memory_format=torch.channels_last) for w in ws]
    cache = _cache(eng, first, ws, bs)
    if cache is None:
        return None
    layer = FirstLayer(first, cache)
    ok = _agrees(eng, layer)
    eng.work.write([0.0] * len(eng.work.directions))
    return layer if ok else None
