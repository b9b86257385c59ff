"""The objective: this model, these tensors, this data, this loss — the one object every analysis uses.

An :class:`Objective` owns the model (on the evaluation device and dtype; the user's model itself when it
already lives there, a converted copy otherwise — the user's model is never changed), the tensors that move
(all parameters by default), the data as a :class:`~lossmap.data.source.Source` (cached or streamed) and the
loss and metrics (:mod:`lossmap.losses`). It gives

* the engines that evaluate the metrics at θ0 + Σ cᵢdᵢ (:meth:`workload`, :meth:`engine`), which
  :func:`lossmap.compute` drives over a grid;
* the mean loss over the whole data set, its gradient and Hessian-vector products at any θ (:meth:`value`,
  :meth:`value_and_grad`, :meth:`hvp`), with batches weighted by their size, batch norm and dropout in
  evaluation mode — what curvature and connectivity analyses build on;
* per-example losses (:meth:`per_example`) — what standard errors build on.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from lossmap.objective import Objective
    >>> model = nn.Linear(3, 2)
    >>> data = (torch.randn(8, 3), torch.randn(8, 2))
    >>> obj = Objective(model, data)                  # floating targets: nn.MSELoss()'s value
    >>> abs(obj.value() - nn.MSELoss()(model(data[0]), data[1]).item()) < 1e-6
    True
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .data.source import Source, make_source
from .engine import Engine, Workload, make_engine
from .engine.diagnose import Stage, diagnose
from .errors import LossmapError
from .losses import Loss, Metric, OutputTransform, accuracy_applies, resolve_loss, resolve_metrics
from .losses import output_transform as as_output_transform
from .space import check_finite, select_tensors

__all__ = ["Objective", "HVP_METHODS"]

log = logging.getLogger("lossmap")

Params = dict[str, torch.Tensor]
HVP_METHODS = ("auto", "forward-over-reverse", "double-backward")


def _placed(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> nn.Module:
    """``model`` itself when every tensor is on ``device`` in ``dtype``; else a converted copy."""
    tensors = list(model.parameters()) + list(model.buffers())
    same = all(t.device == device and (dtype is None or not t.is_floating_point() or t.dtype == dtype) for t in tensors)
    return model if same else copy.deepcopy(model).to(device=device, dtype=dtype)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


class Objective:
    """The mean loss of ``model`` on ``data`` as a function of the selected tensors (see the module docstring).

    Args:
        model (nn.Module): any ``nn.Module``; θ0 is its current state.
        data (Any): a Dataset, a DataLoader, an iterable of ``(inputs, targets)`` batches or an
            ``(inputs, targets)`` pair.
        loss_fn (Any): ``loss_fn(output, target)`` returning the batch mean (an ``nn`` loss, a function, or a
            name: ``"cross-entropy"``, ``"nll"``, ``"mse"``, ``"l1"``, ``"module:function"``); None chooses from
            the targets (class indices → cross-entropy, floats → MSE).
        metrics (Mapping[str, Any] | None): ``{name: fn(output, target)}`` or :class:`~lossmap.losses.Metric`;
            None: accuracy for class targets.
        output_transform (Any): picks the tensor the loss takes from the model's output (``"logits"``, ``0``,
            a function).
        forward (Callable | None): ``forward(model, batch) -> output`` instead of ``model(inputs)``.
        tensor_filter (str | Sequence[str] | None): move only the tensors whose names match these glob patterns.
        include_buffers (bool): move floating-point buffers too.
        device (str | torch.device): where to evaluate.
        dtype (torch.dtype | None): the evaluation precision (None: the model's).
        batch_size (int): samples per forward.
        samples (int | None): use the first ``samples`` samples (None: all).
        cache (str): ``auto`` (cache on the device within ``memory_budget``, else stream), ``device`` or ``stream``.
        memory_budget (int | str | None): bytes (or ``"2GB"``) the cached data may take; None: a quarter of the
            free memory.
        allow_nondeterministic (bool): accept shuffled or randomly augmented data (with a warning) instead of
            refusing it.
        bn (str): batch-norm statistics ``frozen`` or ``recompute`` at every landscape point.
        bn_data (Any): the data that re-estimates them (None: the evaluation data).
        theta0 (dict[str, torch.Tensor] | None): θ0 for the selected tensors when the caller already holds a
            copy (it is not copied again).

    Attributes:
        names (list[str]): the selected tensors' names, in model order.
        theta0 (dict[str, torch.Tensor]): θ0 of the selected tensors.

    Examples:
        >>> import torch, lossmap
        >>> from torch import nn
        >>> torch.manual_seed(0) and None
        >>> net = nn.Linear(3, 1)
        >>> x, y = torch.randn(32, 3), torch.randn(32, 1)
        >>> obj = lossmap.Objective(net, (x, y))
        >>> value, grad = obj.value_and_grad()
        >>> sorted(grad), tuple(grad["weight"].shape)
        (['bias', 'weight'], (1, 3))
        >>> abs(value - nn.MSELoss()(net(x), y).item()) < 1e-6
        True
    """

    def __init__(
        self, model: nn.Module, data: Any, loss_fn: Any = None, *, metrics: Mapping[str, Any] | None = None,
        output_transform: Any = None, forward: Callable | None = None, tensor_filter: str | Sequence[str] | None = None,
        include_buffers: bool = False, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
        batch_size: int = 256, samples: int | None = None, cache: str = "auto", memory_budget: int | str | None = None,
        allow_nondeterministic: bool = False, bn: str = "frozen", bn_data: Any = None, theta0: Params | None = None,
    ) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise LossmapError("device 'cuda' was asked for but CUDA is not available: use --device cpu")
        self.model = _placed(model, self.device, dtype)
        self.live = select_tensors(self.model, include_buffers, tensor_filter)
        self.names = list(self.live)
        self.theta0 = dict(theta0) if theta0 is not None else {n: t.detach().clone() for n, t in self.live.items()}
        check_finite(self.theta0)
        common = dict(batch_size=batch_size, device=self.device, dtype=dtype, cache=cache, memory_budget=memory_budget,
                      allow_nondeterministic=allow_nondeterministic)
        self.source: Source = _read(lambda: make_source(data, samples=samples, **common))
        self.bn, self.bn_source = bn, None
        if bn_data is not None:
            self.bn_source = _read(lambda: make_source(bn_data, samples=None, **common))
        target = self.source.first().targets
        self.loss: Loss = resolve_loss(loss_fn, target)
        self.metrics: dict[str, Metric] = resolve_metrics(metrics, target)
        self._default_metrics = metrics is None
        self.output: OutputTransform = as_output_transform(output_transform)
        self.forward = forward
        self._hvp_method = "auto"

    # -- evaluation at θ0 + Σ cᵢdᵢ (the landscape engines) ------------------------------------------
    @property
    def metric_names(self) -> list[str]:
        return ["loss", *self.metrics]

    def workload(self, directions: Sequence[Mapping[str, torch.Tensor]], autocast: torch.dtype | None = None) -> Workload:
        """What an engine needs to evaluate θ0 + Σ cᵢdᵢ for these directions (dicts over :attr:`names`)."""
        live = list(self.live.values())
        dirs = [[d[n].to(device=t.device, dtype=t.dtype) for n, t in self.live.items()] for d in directions]
        return Workload(
            model=self.model, live=live, origin=[self.theta0[n] for n in self.names], directions=dirs,
            source=self.source, loss=self.loss, metrics=self.metrics, output=self.output, forward=self.forward,
            bn=self.bn, bn_source=self.bn_source, autocast=autocast,
        )

    def engine(self, directions: Sequence[Mapping[str, torch.Tensor]], engine: str = "auto",
               autocast: torch.dtype | None = None, **options: Any) -> Engine:
        """A checked engine: the first batch has gone through the model and the loss (a mistake in the model,
        data or loss raises one clear :class:`LossmapError` here), then the fastest engine that applies."""
        work = self.workload(directions, autocast)
        if self._default_metrics and self.metrics:  # accuracy, where the output is (batch, classes) scores
            out = Engine(dataclasses.replace(work, metrics={})).probe()
            if not accuracy_applies(out, self.source.first().targets):
                log.info("no accuracy: the output the loss takes is not one row of class scores per example")
                self.metrics = {}
                work = self.workload(directions, autocast)
        Engine(work).probe()
        return make_engine(work, engine, **options)

    # -- the mean loss, its gradient and Hessian-vector products -------------------------------------
    def _params(self, theta: Mapping[str, torch.Tensor] | None) -> Params:
        if theta is None:
            return dict(self.theta0)
        missing = [n for n in self.names if n not in theta]
        if missing:
            raise LossmapError(f"theta lacks tensors {', '.join(missing[:4])}: give one tensor per name in objective.names")
        return {n: theta[n].to(device=self.device, dtype=self.theta0[n].dtype) for n in self.names}

    def _batch_loss(self, params: Params, b: Any, stage: Stage) -> torch.Tensor:
        """The loss summed over batch ``b`` divided by the data set size, at ``params`` (differentiable)."""
        stage.set("the model's forward", b)
        raw = (torch.func.functional_call(self.model, params, (b.inputs,)) if self.forward is None
               else _call_forward(self.forward, self.model, params, b.raw))
        stage.set("the loss", b)
        out = self.output(raw)
        stage.output = out
        return self.loss.batch_sum(out, b.targets, b.size) / self.source.total

    def _over_data(self, each: Callable[[Any, Stage], Any], told: bool = True) -> Iterator[Any]:
        """``each(batch, stage)`` for every batch, lazily, in evaluation mode; with ``told`` the user's errors
        become one line (without, they propagate as they are: the HVP's fallback needs them)."""
        stage = Stage()
        with _eval_mode(self.model):
            try:
                for b in self.source:
                    yield each(b, stage)
            except (LossmapError, KeyboardInterrupt, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001
                if not told:
                    raise
                raise diagnose(exc, stage, self.workload([])) from exc

    def value(self, theta: Mapping[str, torch.Tensor] | None = None) -> float:
        """The mean loss over the whole data set at ``theta`` (batch norm and dropout in evaluation mode).

        Args:
            theta (Mapping[str, torch.Tensor] | None): values of the selected tensors (default θ0).

        Returns:
            float: the loss averaged over every sample (batches weighted by their size).
        """
        params = self._params(theta)
        with torch.no_grad():
            parts = self._over_data(lambda b, s: self._batch_loss(params, b, s).double())
        return float(sum(parts))

    def value_and_grad(self, theta: Mapping[str, torch.Tensor] | None = None) -> tuple[float, Params]:
        """The mean loss and its gradient with respect to the selected tensors.

        Args:
            theta (Mapping[str, torch.Tensor] | None): values of the selected tensors (default θ0).

        Returns:
            tuple[float, dict[str, torch.Tensor]]: ``(mean loss, gradient)``, the gradient as ``{name: tensor}``.
        """
        params = self._params(theta)
        grad_of = torch.func.grad_and_value(lambda p, b, s: self._batch_loss(p, b, s))
        total = 0.0
        grads = {n: torch.zeros_like(t) for n, t in params.items()}
        for g, v in self._over_data(lambda b, s: grad_of(params, b, s)):
            total += float(v)
            for n in grads:
                grads[n] += g[n]
        return total, grads

    def hvp(self, v: Mapping[str, torch.Tensor], theta: Mapping[str, torch.Tensor] | None = None,
            method: str = "auto") -> Params:
        """The Hessian of the mean loss times a vector.

        Forward-over-reverse (``torch.func.jvp`` of ``grad``) by default; double backward for models whose
        operations forward-mode AD does not cover (tried once, then kept, with a warning saying why).

        Args:
            v (Mapping[str, torch.Tensor]): the vector, one tensor per selected tensor.
            theta (Mapping[str, torch.Tensor] | None): where the Hessian is taken (default θ0).
            method (str): ``auto``, ``forward-over-reverse`` or ``double-backward``.

        Returns:
            dict[str, torch.Tensor]: H·v, shaped like ``v``.

        Examples:
            >>> import torch, lossmap
            >>> net = torch.nn.Linear(2, 1, bias=False)
            >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
            >>> obj = lossmap.Objective(net, (x, torch.zeros(2, 1)))
            >>> obj.hvp({"weight": torch.tensor([[1.0, 1.0]])})["weight"]   # H = XᵀX (mean of 2·x xᵀ / 2)
            tensor([[1., 4.]])
        """
        if method not in HVP_METHODS:
            raise LossmapError(f"HVP method {method!r} is unknown: choose one of {', '.join(HVP_METHODS)}")
        params = self._params(theta)
        vec = self._params(v)
        method = self._hvp_method if method == "auto" else method
        if method == "auto":
            try:
                out = _summed(self._over_data(self._batch_hvp("forward-over-reverse", params, vec), told=False), params)
                self._hvp_method = "forward-over-reverse"
                return out
            except LossmapError:
                raise
            except Exception as exc:  # noqa: BLE001 - an op without forward-mode AD
                log.warning("forward-over-reverse HVP not available (%s: %s); using double backward", type(exc).__name__, exc)
                self._hvp_method = method = "double-backward"
        return _summed(self._over_data(self._batch_hvp(method, params, vec)), params)

    def _batch_hvp(self, method: str, params: Params, v: Params) -> Callable[[Any, Stage], Params]:
        """``one(batch, stage)``: the batch's share of ``H v`` at ``params`` (``method``: forward-over-reverse or
        double-backward); summed over the batches it is the whole data set's."""
        if method == "forward-over-reverse":
            def forward(b: Any, stage: Stage) -> Params:
                grad = torch.func.grad(lambda p: self._batch_loss(p, b, stage))
                return torch.func.jvp(grad, (params,), (v,))[1]

            return forward
        leaves = {n: t.detach().requires_grad_(True) for n, t in params.items()}
        names = list(leaves)

        def double(b: Any, stage: Stage) -> Params:
            with torch.enable_grad():
                loss = self._batch_loss(leaves, b, stage)
                grads = torch.autograd.grad(loss, [leaves[n] for n in names], create_graph=True, allow_unused=True)
                dot = sum((g * v[n]).sum() for g, n in zip(grads, names) if g is not None)
                if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
                    return {n: torch.zeros_like(leaves[n]) for n in names}
                hv = torch.autograd.grad(dot, [leaves[n] for n in names], allow_unused=True)
            return {n: (h if h is not None else torch.zeros_like(leaves[n])).detach() for n, h in zip(names, hv)}

        return double

    def per_example(self, theta: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The loss of every example, in data order.

        Args:
            theta (Mapping[str, torch.Tensor] | None): values of the selected tensors (default θ0).

        Returns:
            torch.Tensor: float64, shape ``[samples]``; its mean is :meth:`value`.
        """
        if self.loss.per_example is None:
            raise LossmapError(f"the loss {self.loss.name} has no per-example form: use a loss with a reduction argument")
        params = self._params(theta)

        def one(b: Any, stage: Stage) -> torch.Tensor:
            stage.set("the model's forward", b)
            raw = torch.func.functional_call(self.model, params, (b.inputs,)) if self.forward is None else \
                _call_forward(self.forward, self.model, params, b.raw)
            stage.set("the loss", b)
            out = self.output(raw)
            stage.output = out
            return self.loss.per_example(out, b.targets).double()

        with torch.no_grad():
            return torch.cat(list(self._over_data(one)))


class _UserForward(nn.Module):
    """``forward(model, batch)`` as a module, so ``functional_call`` can swap the model's tensors for it."""

    def __init__(self, model: nn.Module, forward: Callable) -> None:
        super().__init__()
        self.model, self.fn = model, forward

    def forward(self, raw: Any) -> Any:
        return self.fn(self.model, raw)


def _call_forward(forward: Callable, model: nn.Module, params: Params, raw: Any) -> Any:
    """The user's ``forward(model, batch)`` with the model's tensors replaced by ``params``."""
    wrapper = _UserForward(model, forward)
    return torch.func.functional_call(wrapper, {f"model.{n}": t for n, t in params.items()}, (raw,))


def _summed(parts: Iterator[Params], like: Params) -> Params:
    out = {n: torch.zeros_like(t) for n, t in like.items()}
    for p in parts:
        for n in out:
            out[n] += p[n]
    return out


def _read(make: Callable[[], Source]) -> Source:
    """A data source, with a failure of the user's data told in one line."""
    try:
        return make()
    except (LossmapError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - the data set or its loader failed
        text = " ".join(str(exc).split())[:220]
        raise LossmapError(f"reading the data failed: {type(exc).__name__}: {text}; fix the data set or its factory") from exc
