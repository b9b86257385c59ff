"""Mistakes in the user's model, data or loss, told in one line: where it failed, the original error, the
likely fix (input shape against the model's first layer, label range against the output size, a model
output that is not a tensor)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from ..errors import LossmapError

if TYPE_CHECKING:
    from ..data.batches import Batch
    from .reference import Workload

__all__ = ["Stage", "diagnose", "check_output", "first_layer"]

_MAX_MESSAGE = 220
BUILTIN_LOSSES = ("cross_entropy", "mse", "nll", "l1")


class Stage:
    """Where an evaluation is: what runs now, on which batch, and the model's last output."""

    __slots__ = ("what", "batch", "output")

    def __init__(self) -> None:
        self.what, self.batch, self.output = "the evaluation", None, None

    def set(self, what: str, batch: "Batch | None") -> None:
        self.what, self.batch = what, batch


def _shape(t: Any) -> str:
    if isinstance(t, torch.Tensor):
        return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"
    if isinstance(t, Mapping):
        return "{" + ", ".join(f"{k}: {_shape(v)}" for k, v in list(t.items())[:4]) + "}"
    return type(t).__name__


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first Conv/Linear/Embedding module (in registration order) and its name."""
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding)):
            return name, m
    return None


def _flattens_first(model: nn.Module, layer: nn.Module) -> bool:
    for m in model.modules():
        if m is layer:
            return False
        if isinstance(m, nn.Flatten):
            return True
    return False


def _input_hint(model: nn.Module, inputs: Any) -> str | None:
    """A definite mismatch between the inputs and the model's first layer, in words."""
    found = first_layer(model)
    if found is None or not isinstance(inputs, torch.Tensor) or inputs.dim() < 2:
        return None
    name, m = found
    shape = tuple(inputs.shape)
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        wanted_dims = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}[type(m)]
        if inputs.dim() == wanted_dims and shape[1] != m.in_channels:
            return (f"the inputs have shape {shape} ({shape[1]} channels) but the model's first layer {name!r} "
                    f"({type(m).__name__}) takes {m.in_channels}: give data that fits the model, or the model that fits the data")
        if inputs.dim() != wanted_dims:
            return (f"the inputs have shape {shape} but the model's first layer {name!r} ({type(m).__name__}) takes "
                    f"{wanted_dims}-D input (batch, channels, …): reshape the data")
    if isinstance(m, nn.Linear):
        features = math.prod(shape[1:]) if _flattens_first(model, m) else shape[-1]
        if features != m.in_features:
            return (f"the inputs have shape {shape} ({features} features) but the model's first layer {name!r} (Linear) "
                    f"takes {m.in_features}: give data that fits the model, or the model that fits the data")
    if not inputs.is_floating_point() and not isinstance(m, nn.Embedding):
        return f"the inputs are {inputs.dtype} but the model's first layer {name!r} needs floating-point inputs: convert them"
    return None


def _output_hint(output: Any) -> str | None:
    """Where the model's output is not a tensor: how to pick the tensor the loss needs."""
    if isinstance(output, torch.Tensor):
        return None
    if isinstance(output, Mapping):
        keys = [str(k) for k in output]
        pick = "logits" if "logits" in keys else (keys[0] if keys else "KEY")
        return (f"the model returns a dict (keys {', '.join(keys[:6])}), not a tensor: pick the tensor the loss needs "
                f"with output_transform={pick!r} (--output {pick})")
    if isinstance(output, (tuple, list)):
        return (f"the model returns a {type(output).__name__} of {len(output)}, not a tensor: pick the tensor the loss "
                "needs with output_transform=0 (--output 0)")
    attrs = [a for a in ("logits", "loss", "last_hidden_state", "prediction") if hasattr(output, a)]
    pick = attrs[0] if attrs else "ATTRIBUTE"
    has = f" (it has {', '.join('.' + a for a in attrs)})" if attrs else ""
    return (f"the model returns an object of type {type(output).__name__}{has}, not a tensor: pick the tensor the loss needs with "
            f"output_transform={pick!r} (--output {pick})")


def _target_hint(output: Any, target: Any, loss_name: str) -> str | None:
    """Labels against the output size; float targets given to a classification loss."""
    if not isinstance(output, torch.Tensor) or not isinstance(target, torch.Tensor):
        return None
    classifying = any(k in loss_name.lower() for k in ("cross_entropy", "crossentropy", "nll"))
    if target.is_floating_point():
        if classifying and target.shape != output.shape:
            return (f"the targets are floating-point {tuple(target.shape)} but {loss_name} wants integer class labels: "
                    "convert them (y.long()) or choose a regression loss (--loss mse)")
        return None
    if output.dim() >= 2 and target.numel():
        lo, hi, classes = int(target.min()), int(target.max()), int(output.shape[1])
        if hi >= classes or (lo < 0 and lo != -100):
            return (f"the labels range from {lo} to {hi} but the model outputs {classes} classes: labels must lie in "
                    f"0..{classes - 1} (check the data's labels or the model's output size)")
    return None


_FIXES = {
    "forward": "check that the data's inputs are what the model's forward takes",
    "loss": "check that loss_fn(output, target) takes the model's output (output_transform, --output) and the data's targets",
    "metric": "check that the metric takes (output, target)",
    "reading": "the data itself failed: fix the data set or its factory",
}


def diagnose(exc: BaseException, stage: Stage, work: "Workload") -> LossmapError:
    """The one-line :class:`LossmapError` for ``exc`` raised by the user's model, data or loss at ``stage``."""
    b = stage.batch
    where = stage.what if b is None else f"{stage.what} on a batch of {b.size} (inputs {_shape(b.inputs)})"
    hint = None
    if b is not None and "forward" in stage.what:
        hint = _input_hint(work.model, b.inputs)
    elif b is not None and (stage.what == "the loss" or stage.what.startswith("the metric")):
        hint = _output_hint(stage.output) or _target_hint(stage.output, b.targets, work.loss.name)
    if hint is None:
        key = next((k for k in _FIXES if k in stage.what), "forward")
        hint = _FIXES[key]
    return LossmapError(f"{where} failed: {type(exc).__name__}: {_first_line(exc)}; {hint}")


def check_output(output: Any, b: "Batch", work: "Workload") -> None:
    """Raise one clear line where the output cannot feed the loss: not a tensor, or (default MSE) a shape that
    PyTorch would silently broadcast."""
    if not isinstance(output, torch.Tensor) and work.loss.name in BUILTIN_LOSSES:
        raise LossmapError(f"the loss ({work.loss.name}) cannot take the model's output: {_output_hint(output)}")
    target = b.targets
    if (work.loss.name in ("mse", "l1") and isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor)
            and output.shape != target.shape):
        if target.is_floating_point() and output.dim() == 2 and target.dim() == 1 and output.shape[0] == target.shape[0]:
            fix = ("for classification give integer class labels (y.long()); for regression make the model's output "
                   "the targets' shape")
        else:
            fix = "make the model's output the targets' shape (PyTorch would broadcast them silently)"
        raise LossmapError(
            f"the targets have shape {tuple(target.shape)} but the model's output has shape {tuple(output.shape)}, so "
            f"{work.loss.name} cannot compare them: {fix}"
        )
