"""Losses and metrics, PyTorch's way: ``loss_fn(output, target)``.

A loss is anything a training loop would call: an ``nn.Module`` loss (``nn.CrossEntropyLoss()``), a
function (``F.mse_loss``, your own ``fn(output, target)``) or a name (``"cross-entropy"``, ``"nll"``,
``"mse"``, ``"l1"``, ``"module:function"``). It returns the *mean* over its batch; lossmap weights each
batch by its size, so the value of a landscape point is the mean over the whole data set — the number
your training log shows for ``nn.CrossEntropyLoss()`` or ``nn.MSELoss()``.

The default (``loss_fn=None``) is chosen from the targets, as the module you would train with:
integer class targets → ``cross_entropy`` (mean), floating targets → ``mse_loss`` (mean over all
elements, as ``nn.MSELoss()``). Class targets also get ``accuracy``.

Where the loss can give one value per example (the built-ins, ``nn`` losses with a ``reduction`` and no
class ``weight``, PyTorch's functional losses) those are summed instead: the result then does not
depend on how the data is cut into batches (which lets the fast engine re-cut them) and per-example
losses are available for standard errors. A metric ``fn(output, target)`` may return the batch mean
(a scalar) or one value per example (shape ``[batch]``). Whether higher is better is declared with
:class:`Metric` (a plain function is a lower-is-better metric), never guessed from the name.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LossmapError

__all__ = ["Loss", "Metric", "resolve_loss", "resolve_metrics", "default_loss", "accuracy", "LOSS_NAMES", "OutputTransform",
           "output_transform"]

LossFn = Callable[[Any, Any], torch.Tensor]

#: the functional losses whose ``reduction="none"`` gives per-element values
_REDUCIBLE = (F.cross_entropy, F.nll_loss, F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss,
              F.binary_cross_entropy, F.binary_cross_entropy_with_logits, F.soft_margin_loss)


@dataclass(frozen=True)
class Loss:
    """A loss with its name (as files record it) and, where it has one, its per-example form.

    Args:
        name (str): how files and messages name it (``cross_entropy``, ``mse``, a function's qualified name).
        fn (Callable[[Any, Any], torch.Tensor]): ``fn(output, target)``, the batch mean.
        per_example (Callable[[Any, Any], torch.Tensor] | None): one value per example (``[batch]``, the mean
            over each example's elements), or None.

    Examples:
        >>> import torch
        >>> from lossmap.losses import resolve_loss
        >>> mse = resolve_loss(torch.nn.MSELoss())
        >>> out, y = torch.zeros(2, 3), torch.ones(2, 3)
        >>> mse.name, float(mse.fn(out, y)), mse.per_example(out, y).tolist()
        ('MSELoss()', 1.0, [1.0, 1.0])
    """

    name: str
    fn: LossFn
    per_example: LossFn | None = None

    def batch_sum(self, output: Any, target: Any, n: int) -> torch.Tensor:
        """The sum of the loss over a batch.

        Args:
            output (Any): the model's output (after the output transform).
            target (Any): the batch's targets.
            n (int): the number of examples in the batch.

        Returns:
            torch.Tensor: the sum, float64, 0-dim (``n`` × the batch mean where there is no per-example form).
        """
        if self.per_example is not None:
            return self.per_example(output, target).sum(dtype=torch.float64)
        return torch.as_tensor(self.fn(output, target)).double() * n


@dataclass(frozen=True)
class Metric:
    """A metric ``fn(output, target)`` (batch mean, or per-example values) and whether higher is better.

    Args:
        fn (Callable[[Any, Any], torch.Tensor]): ``fn(output, target)`` returning the batch mean (a scalar) or
            one value per example (shape ``[batch]``).
        higher_is_better (bool): the direction plots and summaries use (a plain function is lower-is-better).

    Examples:
        >>> import torch, lossmap
        >>> top1 = lossmap.Metric(lambda out, y: (out.argmax(1) == y).float(), higher_is_better=True)
        >>> net, data = torch.nn.Linear(4, 3), (torch.randn(16, 4), torch.randint(0, 3, (16,)))
        >>> ds = lossmap.compute(net, data, x="-1:1:3", metrics={"top1": top1})
        >>> sorted(ds.data_vars)
        ['loss', 'top1']
    """

    fn: Callable[[Any, Any], torch.Tensor]
    higher_is_better: bool = False

    def batch_sum(self, output: Any, target: Any, n: int) -> torch.Tensor:
        """The metric summed over a batch.

        Args:
            output (Any): the model's output (after the output transform).
            target (Any): the batch's targets.
            n (int): the number of examples in the batch.

        Returns:
            torch.Tensor: the sum, float64, 0-dim.
        """
        value = torch.as_tensor(self.fn(output, target))
        if value.dim() == 0:
            return value.double() * n
        if value.shape[0] == n:
            return _per_example_of(value.double()).sum()
        raise LossmapError(
            f"a metric returned a tensor of shape {tuple(value.shape)} for a batch of {n}: return the batch mean (a scalar) "
            "or one value per example (shape [batch])"
        )


def _per_example_of(values: torch.Tensor) -> torch.Tensor:
    """``[batch, ...]`` per-element values → ``[batch]`` per-example means."""
    return values if values.dim() == 1 else values.reshape(values.shape[0], -1).mean(1)


def _reducing(fn: Callable, **kw: Any) -> LossFn:
    def per_example(output: Any, target: Any) -> torch.Tensor:
        return _per_example_of(fn(output, target, reduction="none", **kw))

    return per_example


def _cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, target)


def _nll(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(output, target)


def _mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output, target)


def _l1(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(output, target)


_BUILTIN = {
    "cross_entropy": (_cross_entropy, F.cross_entropy),
    "nll": (_nll, F.nll_loss),
    "mse": (_mse, F.mse_loss),
    "l1": (_l1, F.l1_loss),
}
#: the names ``loss_fn=`` and ``--loss`` accept (besides ``module:function``)
LOSS_NAMES = ("cross-entropy", "nll", "mse", "l1")


def _builtin(name: str) -> Loss:
    fn, functional = _BUILTIN[name]
    return Loss(name, fn, _reducing(functional))


def default_loss(target: Any) -> Loss:
    """The loss users train with for these targets.

    Args:
        target (Any): a batch's targets.

    Returns:
        Loss: cross-entropy for class indices, MSE (mean over all elements, as ``nn.MSELoss()``) for floats.

    Examples:
        >>> import torch
        >>> from lossmap.losses import default_loss
        >>> default_loss(torch.tensor([1, 0])).name, default_loss(torch.zeros(2, 3)).name
        ('cross_entropy', 'mse')
    """
    if target is None:
        raise LossmapError("the data has no targets, so no default loss can be chosen: pass loss_fn=... (--loss)")
    if not isinstance(target, torch.Tensor):
        raise LossmapError(
            f"targets of type {type(target).__name__} have no default loss: pass loss_fn=... (--loss) that takes them"
        )
    return _builtin("mse" if target.is_floating_point() else "cross_entropy")


def _module_loss(module: nn.Module) -> Loss:
    name = repr(module).replace("\n", " ")
    per = None
    if isinstance(getattr(module, "reduction", None), str) and getattr(module, "weight", None) is None:
        twin = copy.copy(module)  # a shallow copy: the user's module keeps its reduction
        twin.reduction = "none"
        per = lambda output, target: _per_example_of(twin(output, target))  # noqa: E731
    return Loss(name, module, per)


def _function_loss(fn: Callable) -> Loss:
    from .fingerprint import qualified_name

    base = fn.func if isinstance(fn, functools.partial) else fn
    per = None
    if base in _REDUCIBLE and not (isinstance(fn, functools.partial) and ("reduction" in fn.keywords or fn.args)):
        extra = dict(fn.keywords) if isinstance(fn, functools.partial) else {}
        if "weight" not in extra:
            per = _reducing(base, **extra)
    return Loss(qualified_name(fn), fn, per)


def resolve_loss(loss_fn: Any, target: Any = None) -> Loss:
    """The :class:`Loss` for ``loss_fn``: None (the default for ``target``), a name, a module or a function.

    Args:
        loss_fn (Any): None, a name (``"cross-entropy"``, ``"nll"``, ``"mse"``, ``"l1"``, ``"module:function"``),
            an ``nn`` loss module or a function ``fn(output, target)`` returning the batch mean.
        target (Any): a batch's targets, which choose the default.

    Returns:
        Loss: the loss with its name and, where it has one, its per-example form.

    Raises:
        LossmapError: an unknown name, or no default without targets.

    Examples:
        >>> import torch
        >>> from lossmap.losses import resolve_loss
        >>> resolve_loss(None, torch.tensor([0, 2])).name
        'cross_entropy'
        >>> resolve_loss("mse").name
        'mse'
    """
    if loss_fn is None:
        return default_loss(target)
    if isinstance(loss_fn, Loss):
        return loss_fn
    if isinstance(loss_fn, str):
        key = loss_fn.strip().lower().replace("-", "_")
        if key in _BUILTIN:
            return _builtin(key)
        if ":" not in loss_fn:
            raise LossmapError(f"loss {loss_fn!r} is unknown: choose one of {', '.join(LOSS_NAMES)} or 'module:function'")
        from .models import resolve_factory

        found = resolve_factory(loss_fn, "loss")
        if isinstance(found, type):
            try:
                found = found()
            except Exception as exc:  # noqa: BLE001 - the user's class
                raise LossmapError(f"loss class {loss_fn!r} cannot be built without arguments ({exc}): give a function") from exc
        loss = resolve_loss(found, target)
        return Loss(loss_fn, loss.fn, loss.per_example)
    if isinstance(loss_fn, nn.Module):
        return _module_loss(loss_fn)
    if callable(loss_fn):
        return _function_loss(loss_fn)
    raise LossmapError(f"loss_fn of type {type(loss_fn).__name__} is not callable: pass a function (output, target) -> loss")


def _accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output.argmax(dim=1) == target).to(output.dtype if output.is_floating_point() else torch.float64)


accuracy = Metric(_accuracy, higher_is_better=True)
"""Top-1 accuracy on class-index targets (one value per example; higher is better), the default metric for
class targets: ``metrics={"accuracy": lossmap.accuracy, ...}`` keeps it beside your own."""


def wants_accuracy(target: Any) -> bool:
    """Whether ``target`` holds class indices, one per example (then accuracy is a default metric)."""
    return isinstance(target, torch.Tensor) and target.dim() == 1 and not target.is_floating_point() and not target.is_complex()


def accuracy_applies(output: Any, target: Any) -> bool:
    """Whether ``output`` is one row of class scores per example of class-index ``target``."""
    return (wants_accuracy(target) and isinstance(output, torch.Tensor) and output.dim() == 2
            and output.shape[0] == target.shape[0])


def resolve_metrics(metrics: Mapping[str, Any] | None, target: Any) -> dict[str, Metric]:
    """``{name: Metric}``: the given ones (plain functions are lower-is-better), or the defaults for ``target``."""
    if metrics is None:
        return {"accuracy": accuracy} if wants_accuracy(target) else {}
    out: dict[str, Metric] = {}
    for name, m in metrics.items():
        if str(name) == "loss":
            raise LossmapError("a metric may not be called 'loss' (that is the loss itself): rename it")
        if isinstance(m, Metric):
            out[str(name)] = m
        elif callable(m):
            out[str(name)] = Metric(m)
        else:
            raise LossmapError(f"metric {name!r} is a {type(m).__name__}, not a function (output, target) -> value")
    return out


class OutputTransform:
    """Picks the tensor the loss needs from what the model returns: an attribute or key (``"logits"``),
    an index (``0``) or a function; ``None`` keeps the output as it is."""

    def __init__(self, spec: Any = None) -> None:
        self.spec = spec

    @property
    def name(self) -> str | None:
        if self.spec is None or isinstance(self.spec, (str, int)):
            return None if self.spec is None else str(self.spec)
        from .fingerprint import qualified_name

        return qualified_name(self.spec)

    def __call__(self, output: Any) -> Any:
        spec = self.spec
        if spec is None:
            return output
        if callable(spec):
            return spec(output)
        if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
            return output[int(spec)]
        if isinstance(output, Mapping):
            if spec not in output:
                raise LossmapError(f"the model's output has no key {spec!r} (it has {sorted(map(str, output))}): fix --output")
            return output[spec]
        if not hasattr(output, spec):
            raise LossmapError(f"the model's output ({type(output).__name__}) has no attribute {spec!r}: fix --output")
        return getattr(output, spec)


def output_transform(spec: Any) -> OutputTransform:
    """Pick the tensor the loss needs from a model's output.

    Args:
        spec (Any): an attribute or key (``"logits"``), an index (``0`` or ``"0"``), a function, or None (the
            output as it is).

    Returns:
        OutputTransform: callable on a model's output.

    Examples:
        >>> import torch
        >>> from lossmap.losses import output_transform
        >>> pick = output_transform("logits")
        >>> pick({"logits": torch.ones(2), "aux": None}).tolist()
        [1.0, 1.0]
    """
    if isinstance(spec, OutputTransform):
        return spec
    if spec is not None and not (isinstance(spec, (str, int)) or callable(spec)):
        raise LossmapError(f"output_transform {spec!r} must be a key/attribute name, an index or a function")
    return OutputTransform(spec)
