"""Several grid points per forward: ``torch.func.functional_call`` + ``vmap`` over stacked parameters
θ0 + Σ cᵢdᵢ (one row per point). It keeps a GPU busy with a small model; on a CPU one point already fills
the cores and the grouped convolutions vmap makes are slower, so it is the default on CUDA only.

The stacked parameters cost ``points × moved bytes``, so points per forward are capped by
:data:`PARAM_BYTES`. A model vmap cannot batch falls back to the per-point fast path, for good, with a
warning (probed at the start, so the file records the engine that runs; a later failure falls back too).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..data.batches import Batch, cut
from ..losses import accuracy
from . import running
from .fast import FastEngine
from .reference import Workload

__all__ = ["VmapEngine", "PARAM_BYTES"]

log = logging.getLogger("lossmap")

PARAM_BYTES = 1024**3
_PER_POINT = ("channels_last", "first_layer", "onednn_linear", "fuse")  # speed-ups of the per-point forward
_VMAP_ERRORS = (RuntimeError, NotImplementedError, TypeError)


class VmapEngine(FastEngine):
    """Points evaluated ``points_per_forward`` at a time (default: up to 64 within :data:`PARAM_BYTES`)."""

    name = "vmap"

    def __init__(self, work: Workload, points_per_forward: int | None = None, **options: Any) -> None:
        for option in _PER_POINT:
            options.setdefault(option, False)
        super().__init__(work, **options)
        names = {id(p): n for n, p in self.model.named_parameters(remove_duplicate=False)}
        names.update({id(b): n for n, b in self.model.named_buffers(remove_duplicate=False)})
        self._names = [names.get(id(t)) for t in self.user_live]
        moved_bytes = sum(t.numel() * t.element_size() for t in work.origin)
        cap = max(1, PARAM_BYTES // max(moved_bytes, 1))
        self.points_per_forward = int(points_per_forward or min(64, cap))
        self.preferred_chunk = self.points_per_forward
        self.vmap_ok = all(n is not None for n in self._names)
        if not self.vmap_ok:
            self._fall_back("a moved tensor is not a parameter or buffer of the model")
        elif not self._vmaps():
            self._fall_back("the model cannot be vmapped")
        else:
            self.speedups.append("vmap")

    def _vmaps(self) -> bool:
        """Whether the model runs under vmap: two points on two samples of the first batch."""
        ref = self.work.origin[0]
        c = torch.zeros(min(2, self.points_per_forward), len(self.work.directions), dtype=ref.dtype, device=ref.device)
        self.model.eval()
        try:
            with torch.inference_mode():
                self._forward_points(self._stack(c), cut(self.source.first().inputs, 0, 2))
        except _VMAP_ERRORS as exc:
            log.debug("vmap probe failed: %s", exc)
            return False
        return True

    def _fall_back(self, why: str) -> None:
        """One point at a time (the fast path) from here on."""
        log.warning("vmap engine: %s; evaluating one point at a time", why)
        self.vmap_ok = False
        self.speedups = [f for f in self.speedups if f != "vmap"] + ["vmap-fallback"]

    def _forward_points(self, params: dict[str, torch.Tensor], inputs: Any) -> Any:
        """The transformed outputs at several points at once, ``(points, batch, …)``."""
        model, transform = self.model, self.work.output

        def f(p: dict[str, torch.Tensor], x: Any) -> Any:
            return transform(torch.func.functional_call(model, p, (x,)))

        with self.amp():
            return torch.vmap(f, in_dims=(0, None))(params, inputs)

    def _stack(self, c: torch.Tensor) -> dict[str, torch.Tensor]:
        params = {}
        for i, name in enumerate(self._names):
            o = self.work.origin[i]
            view = (-1,) + (1,) * o.dim()
            t = o.unsqueeze(0).expand((c.shape[0],) + tuple(o.shape)).clone()
            for j, d in enumerate(self.work.directions):
                t.add_(c[:, j].reshape(view) * d[i].unsqueeze(0))
            params[name] = t
        return params

    def _batch_values(self, out: torch.Tensor, b: Batch) -> torch.Tensor:
        """Every point's per-example values ``[P, M, batch]`` for one batch; per-example losses and accuracy are
        computed for all points at once."""
        P = out.shape[0]
        t = b.targets
        vectorized = self.work.loss.per_example is not None and isinstance(t, torch.Tensor) and all(
            m is accuracy for m in self.work.metrics.values())
        if not vectorized:
            return torch.stack([self.example_values(out[p], b) for p in range(P)])
        flat = out.reshape((P * out.shape[1],) + tuple(out.shape[2:]))
        tt = t.unsqueeze(0).expand((P,) + tuple(t.shape)).reshape((-1,) + tuple(t.shape[1:]))
        self._stage.set("the loss", b)
        rows = [self.work.loss.per_example(flat, tt).reshape(P, -1)]
        rows += [metric.fn(flat, tt).reshape(P, -1) for metric in self.work.metrics.values()]
        return torch.stack(rows, dim=1).to(torch.float64)

    def _chunk(self, coeffs: np.ndarray, collect: list | None = None) -> np.ndarray:
        ref = self.work.origin[0]
        c = torch.as_tensor(np.asarray(coeffs, dtype=np.float64), device=ref.device).to(ref.dtype)
        params = self._stack(c)
        state = running.start(len(coeffs), self.n_metrics, ref.device)
        rule = self.precision if collect is None else None
        stopped: torch.Tensor | None = None
        self.model.eval()
        with torch.inference_mode():
            for b in self.source:
                self._stage.set("the model's forward (vmap)", b)
                values = self._batch_values(self.widen(self._forward_points(params, b.inputs)), b)
                self.feed(state, values, collect, None if stopped is None else ~stopped)
                if rule is not None:
                    now = self.stops(state)
                    stopped = now if stopped is None else stopped | now
                    if bool(stopped.all()):
                        break
        return running.result(state)

    def _reference_pass(self, collected: list) -> None:
        if not self.vmap_ok:
            super()._reference_pass(collected)
            return
        try:
            self._chunk(np.zeros((1, len(self.work.directions))), collect=collected)
        except _VMAP_ERRORS as exc:  # one the probe at the start did not meet
            collected.clear()
            self._fall_back(f"vmap failed on a later batch ({type(exc).__name__})")
            super()._reference_pass(collected)

    def _many(self, coeffs: np.ndarray) -> np.ndarray:
        if not self.vmap_ok:
            return super()._many(coeffs)
        out = np.empty((len(coeffs), running.n_columns(self.n_metrics)), dtype=np.float64)
        step = self.points_per_forward
        for lo in range(0, len(coeffs), step):
            try:
                out[lo : lo + step] = self._chunk(coeffs[lo : lo + step])
            except _VMAP_ERRORS as exc:  # one the probe at the start did not meet
                self._fall_back(f"vmap failed on a later batch ({type(exc).__name__})")
                out[lo:] = super()._many(coeffs[lo:])
                break
        return out
