"""Low-loss curves between two fixed models (Garipov et al. 2018, "Loss Surfaces, Mode Connectivity,
and Fast Ensembling of DNNs").

A curve φ(t), t ∈ [0, 1], runs from A (t = 0) to B (t = 1) through one trainable bend θ:

* ``bezier``: the quadratic Bezier curve φ(t) = (1 − t)²A + 2t(1 − t)θ + t²B;
* ``polychain``: the two segments A → θ (t ≤ ½) and θ → B (t ≥ ½).

θ starts at the midpoint (A + B)/2 (the straight line) and is trained to minimize E_{t ~ U(0,1)} of
the loss: each batch draws ``t_samples`` values of t (stratified, see :func:`draw_t`: the average is
unbiased and its variance small) and averages the loss over them. The model is run with ``torch.func.functional_call`` on the curve's
point, so any module works without rewriting its layers, and the model itself is never written to.

Batch norm: as Garipov et al., training runs in train mode, so batch-norm layers normalize with the
statistics of each batch; their running statistics are updated only in a scratch copy (A's buffers),
which is discarded. The running statistics of a point of the curve are not meaningful: evaluate the
curve with batch-norm statistics recomputed at each t. ``train_mode=False`` runs in eval mode (batch
norm with A's running statistics, dropout off).

Every point of a curve is a point of the plane through A, B and θ:
φ(t) = A + c1(t)·(θ − A) + c2(t)·(B − A) with (c1, c2) from :func:`curve_coefficients`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ..errors import LossmapError
from ..space import select_tensors
from .check import as_state, check_states, fit_state

__all__ = ["Curve", "curve_coefficients", "train_curve", "draw_t", "CURVE_KINDS", "LR_SCHEDULES"]

CURVE_KINDS = ("bezier", "polychain")
LR_SCHEDULES = ("garipov", "constant")


def curve_coefficients(kind: str, t):
    """``(c1, c2)`` with φ(t) = A + c1·(θ − A) + c2·(B − A).

    Bezier: c1 = 2t(1 − t), c2 = t². Polygonal chain: c1 = 2t, c2 = 0 for t ≤ ½ and
    c1 = 2 − 2t, c2 = 2t − 1 for t > ½.

    Args:
        kind: ``"bezier"`` or ``"polychain"``.
        t: a float or an array of floats in [0, 1].

    Returns:
        tuple: ``(c1, c2)``, floats for a float ``t``, arrays for an array.

    Example:
        >>> curve_coefficients("bezier", 0.5)
        (0.5, 0.25)
    """
    if kind not in CURVE_KINDS:
        raise LossmapError(f"curve kind {kind!r} is not known: use one of {', '.join(CURVE_KINDS)}")
    scalar = np.ndim(t) == 0
    t = np.asarray(t, dtype=np.float64)
    if kind == "bezier":
        c1, c2 = 2.0 * t * (1.0 - t), t * t
    else:
        c1 = np.where(t <= 0.5, 2.0 * t, 2.0 - 2.0 * t)
        c2 = np.where(t <= 0.5, 0.0, 2.0 * t - 1.0)
    return (float(c1), float(c2)) if scalar else (c1, c2)


def _weights(kind: str, t: float) -> tuple[float, float, float]:
    """(w_A, w_θ, w_B) of φ(t) = w_A·A + w_θ·θ + w_B·B (exactly A at t = 0 and B at t = 1)."""
    if kind == "bezier":
        return (1.0 - t) ** 2, 2.0 * t * (1.0 - t), t * t
    if t <= 0.5:
        return 1.0 - 2.0 * t, 2.0 * t, 0.0
    return 0.0, 2.0 - 2.0 * t, 2.0 * t - 1.0


def _point(kind: str, t: float, a: Mapping, bend: Mapping, b: Mapping) -> dict[str, torch.Tensor]:
    wa, wt, wb = _weights(kind, float(t))
    return {n: wa * a[n] + wt * bend[n] + wb * b[n] for n in a}


@dataclass
class Curve:
    """A trained curve: endpoints ``A``, ``B`` and ``bend`` (θ) as ``{name: tensor}`` of the moved
    parameters, the mean training loss of each epoch, and the settings it was trained with."""

    kind: str
    A: dict[str, torch.Tensor]
    B: dict[str, torch.Tensor]
    bend: dict[str, torch.Tensor]
    losses: list[float] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def coefficients(self, t):
        """``(c1, c2)`` with φ(t) = A + c1·(θ − A) + c2·(B − A); see :func:`curve_coefficients`."""
        return curve_coefficients(self.kind, t)

    def point(self, t: float) -> dict[str, torch.Tensor]:
        """φ(t) as ``{name: tensor}`` (new tensors; exactly A at t = 0 and B at t = 1)."""
        with torch.no_grad():
            return _point(self.kind, t, self.A, self.bend, self.B)


def _lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """Garipov et al.'s schedule: full rate for the first half, then linearly down to 1 % at 90 % of
    the epochs, then 1 %."""
    if schedule == "constant":
        return 1.0
    x = epoch / epochs
    return 1.0 if x <= 0.5 else 1.0 - (x - 0.5) / 0.4 * 0.99 if x <= 0.9 else 0.01


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    return obj


def _check_settings(kind, epochs, lr, optimizer, lr_schedule, t_samples) -> None:
    if kind not in CURVE_KINDS:
        raise LossmapError(f"curve kind {kind!r} is not known: use one of {', '.join(CURVE_KINDS)}")
    if optimizer not in ("sgd", "adam"):
        raise LossmapError(f"optimizer {optimizer!r} is not known: use 'sgd' or 'adam'")
    if lr_schedule not in LR_SCHEDULES:
        raise LossmapError(f"lr_schedule {lr_schedule!r} is not known: use one of {', '.join(LR_SCHEDULES)}")
    if not (isinstance(epochs, int) and epochs >= 1):
        raise LossmapError(f"epochs={epochs!r}: train the curve for at least 1 epoch")
    if not (lr > 0):
        raise LossmapError(f"lr={lr!r}: use a positive learning rate")
    if not (isinstance(t_samples, int) and t_samples >= 1):
        raise LossmapError(f"t_samples={t_samples!r}: draw at least 1 value of t per batch")


def _endpoints(model: nn.Module, state_a, state_b, tensor_filter) -> tuple[dict, dict, dict]:
    """A's and B's moved parameters on the model's device and dtype, and the scratch copy of every
    other tensor (from A) that the forward needs."""
    sa, sb = as_state(state_a), as_state(state_b)
    check_states(model, sa, sb)
    sa, sb = fit_state(model, sa), fit_state(model, sb)
    live = select_tensors(model, include_buffers=False, tensor_filter=tensor_filter)
    own = model.state_dict(keep_vars=True)
    moved_ids = {id(t) for t in live.values()}
    a = {n: sa[n].detach().clone() for n in live}
    b = {n: sb[n].detach().clone() for n in live}
    rest = {k: sa[k].detach().clone() for k, t in own.items() if k not in live and id(t) not in moved_ids}
    return a, b, rest


def draw_t(k: int, gen: torch.Generator) -> list[float]:
    """``k`` values of t whose mean loss is an unbiased estimate of E_{t ~ U(0,1)}.

    One value: a plain uniform draw. An even number: [0, 1] is cut into k/2 equal slices and each
    slice gets a mirrored pair (u and 1 − u across the slice), which cancels the linear part of the
    loss within each slice (error ~ k^(−5/2) for a smooth loss). An odd number: one uniform draw in
    each of k equal slices (error ~ k^(−3/2)).

    Args:
        k: how many values (≥ 1).
        gen: the torch generator to draw from.

    Returns:
        list[float]: the values of t, ascending.

    Example:
        >>> len(draw_t(4, torch.Generator().manual_seed(0)))
        4
    """
    if k % 2:
        u = torch.rand(k, generator=gen, dtype=torch.float64)
        return ((torch.arange(k, dtype=torch.float64) + u) / k).tolist()
    m = k // 2
    u = torch.rand(m, generator=gen, dtype=torch.float64)
    j = torch.arange(m, dtype=torch.float64)
    return torch.stack([(j + u) / m, (j + 1 - u) / m], 1).reshape(-1).tolist()


@contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's global generators (which dropout draws from) forked and seeded for the block, and
    restored after."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(int(seed))
        for d in devices:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(int(seed))
        yield


def _batch_loss(model: nn.Module, curve: Curve, rest: Mapping, ts: list[float], batch: Any, loss_fn: Callable) -> torch.Tensor:
    """The loss on one batch, averaged over the points φ(t) for t in ``ts`` (differentiable in the bend)."""
    try:
        x, y = batch[0], batch[1]
    except (TypeError, IndexError, KeyError) as exc:
        raise LossmapError(f"a batch of the data is {type(batch).__name__}, not (inputs, target): yield pairs") from exc
    device = next(iter(curve.A.values())).device
    args = tuple(_to(x, device)) if isinstance(x, (tuple, list)) else (_to(x, device),)
    y = _to(y, device)
    total = 0.0
    for t in ts:
        out = functional_call(model, {**rest, **_point(curve.kind, t, curve.A, curve.bend, curve.B)}, args)
        loss = loss_fn(out, y)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise LossmapError(
                f"loss_fn returned {type(loss).__name__} of shape {tuple(getattr(loss, 'shape', ()))}: "
                "return the mean loss as a scalar tensor"
            )
        total = total + loss
    return total / len(ts)


def _epoch(model: nn.Module, curve: Curve, rest: Mapping, data: Iterable, loss_fn: Callable,
           opt: torch.optim.Optimizer, draw: Callable[[], list[float]]) -> float:
    """One pass over the data, one optimizer step per batch; the mean batch loss."""
    total, count = 0.0, 0
    for batch in data:
        loss = _batch_loss(model, curve, rest, draw(), batch, loss_fn)
        if not torch.isfinite(loss.detach()):
            raise LossmapError(f"the curve's training loss became {float(loss.detach())} in epoch {len(curve.losses) + 1}: lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, count = total + float(loss.detach()), count + 1
    if count == 0:
        raise LossmapError("the training data yielded no batch: pass a non-empty data set")
    return total / count


def train_curve(
    model: nn.Module,
    state_a: nn.Module | Mapping[str, torch.Tensor],
    state_b: nn.Module | Mapping[str, torch.Tensor],
    data: Iterable,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    *,
    kind: str = "bezier",
    epochs: int = 10,
    lr: float = 0.01,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    lr_schedule: str = "garipov",
    t_samples: int = 1,
    seed: int = 0,
    train_mode: bool = True,
    tensor_filter: str | None = None,
) -> Curve:
    """Train the bend of a curve from A to B on ``data``.

    Args:
        model: the architecture (never written to; its modes are restored).
        state_a: model A (state dict or module), the curve's start.
        state_b: model B, the curve's end.
        data: a re-iterable of ``(inputs, target)`` batches (``inputs`` a tensor or a tuple of the
            forward's arguments), e.g. a ``DataLoader``; one pass is one epoch.
        loss_fn: ``loss_fn(output, target) -> scalar tensor``.
        kind: ``"bezier"`` or ``"polychain"``.
        epochs: passes over ``data``.
        lr: base learning rate.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        momentum: SGD momentum.
        weight_decay: the optimizer's weight decay on the bend.
        lr_schedule: ``"garipov"`` (full rate for half the epochs, linear decay to 1 % at 90 %, then
            1 %) or ``"constant"``.
        t_samples: values of t per batch (stratified, :func:`draw_t`), the loss averaged over them.
        seed: seeds the draws of t (a ``torch.Generator``) and, in a fork of torch's global
            generators, dropout.
        train_mode: run the model in train mode (batch statistics in batch norm, dropout on).
        tensor_filter: shell patterns of the parameters on the curve (default: all parameters);
            the others stay at A's values.

    Returns:
        Curve: the endpoints, the trained bend and the per-epoch mean training loss.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(2, 1)
        >>> a, b = {k: v + 1 for k, v in net.state_dict().items()}, net.state_dict()
        >>> data = [(torch.randn(8, 2), torch.randn(8, 1))]
        >>> curve = train_curve(net, a, b, data, nn.functional.mse_loss, epochs=2)
        >>> sorted(curve.bend)
        ['bias', 'weight']
    """
    _check_settings(kind, epochs, lr, optimizer, lr_schedule, t_samples)
    a, b, rest = _endpoints(model, state_a, state_b, tensor_filter)
    settings = dict(epochs=epochs, lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                    lr_schedule=lr_schedule, t_samples=t_samples, seed=int(seed), train_mode=train_mode,
                    tensor_filter=tensor_filter)
    curve = Curve(kind=kind, A=a, B=b, bend={n: (0.5 * (a[n] + b[n])).requires_grad_(True) for n in a}, settings=settings)
    params = list(curve.bend.values())
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    modes = {m: m.training for m in model.modules()}
    try:
        model.train(train_mode)
        with _seeded_rng(seed, params[0].device):
            for epoch in range(epochs):
                for group in opt.param_groups:
                    group["lr"] = lr * _lr_factor(lr_schedule, epoch, epochs)
                curve.losses.append(_epoch(model, curve, rest, data, loss_fn, opt, lambda: draw_t(t_samples, gen)))
    finally:
        for m, mode in modes.items():
            m.training = mode
    curve.bend = {n: t.detach() for n, t in curve.bend.items()}
    return curve
