"""A small, seeded training loop for classifiers (used by ``lossmap demo``).

Reproducibility: the mini-batch order comes from an explicit :class:`torch.Generator` seeded with
``seed``; the model's initialization and dropout masks draw from torch's global generator, which
:func:`seeded` forks and seeds for the duration of the block (the caller's global RNG state is
restored afterwards). The same seed on the same machine and torch version gives the same weights.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from .errors import LossmapError

__all__ = ["seeded", "accuracy", "train", "TrainResult", "OPTIMIZERS"]

OPTIMIZERS = ("adam", "sgd")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global CPU generator seeded to ``seed``; restore its state after.

    Args:
        seed (int): the seed.

    Returns:
        Iterator[None]: a context manager.

    Examples:
        >>> import torch
        >>> from lossmap.train import seeded
        >>> with seeded(0):
        ...     a = torch.nn.Linear(3, 2)
        >>> with seeded(0):
        ...     b = torch.nn.Linear(3, 2)
        >>> torch.equal(a.weight, b.weight)
        True
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset, batch_size: int = 512) -> tuple[float, float]:
    """The mean cross-entropy and top-1 accuracy of ``model`` on ``data``, in evaluation mode (mode restored).

    Args:
        model (nn.Module): a classifier returning logits or log-probabilities.
        data (TensorDataset): images and class labels.
        batch_size (int): samples per forward.

    Returns:
        tuple[float, float]: ``(mean cross-entropy, accuracy)``.

    Examples:
        >>> from lossmap.data import digits
        >>> from lossmap.models import MnistCNN
        >>> from lossmap.train import accuracy, seeded
        >>> with seeded(0):
        ...     net = MnistCNN()
        >>> loss, acc = accuracy(net, digits("test"))
        >>> acc < 0.3                                             # untrained: about chance
        True
    """
    was_training = model.training
    model.eval()
    try:
        x, y = data.tensors
        loss, correct = 0.0, 0
        for lo in range(0, len(y), batch_size):
            out = model(x[lo : lo + batch_size])
            loss += float(F.cross_entropy(out, y[lo : lo + batch_size], reduction="sum"))
            correct += int((out.argmax(1) == y[lo : lo + batch_size]).sum())
    finally:
        model.train(was_training)
    return loss / len(y), correct / len(y)


@dataclass
class TrainResult:
    """What :func:`train` did: per-epoch training loss and the final accuracies.

    Args:
        epochs (int): the epochs trained.
        optimizer (str): ``adam`` or ``sgd``.
        batch_size (int): the mini-batch size.
        lr (float): the learning rate.
        epoch_loss (list[float]): the mean training loss of each epoch.
        train_accuracy (float): on the training data, after training, in evaluation mode.
        test_accuracy (float): on the test data (NaN without test data).
        train_loss (float): the mean cross-entropy on the training data after training.
        test_loss (float): the same on the test data.
        seconds (float): the wall time.

    Examples:
        >>> from lossmap.train import TrainResult
        >>> TrainResult(epochs=1, optimizer="sgd", batch_size=8, lr=0.01, train_accuracy=0.9, test_accuracy=0.85).describe()
        'sgd lr=0.01 batch=8, 1 epochs: train accuracy 90.00%, test accuracy 85.00%'
    """

    epochs: int
    optimizer: str
    batch_size: int
    lr: float
    epoch_loss: list[float] = field(default_factory=list)
    train_accuracy: float = float("nan")
    test_accuracy: float = float("nan")
    train_loss: float = float("nan")
    test_loss: float = float("nan")
    seconds: float = 0.0

    def describe(self) -> str:
        """One line: the optimizer, its settings and the accuracies.

        Returns:
            str: e.g. ``adam lr=0.001 batch=32, 3 epochs: train accuracy 97.9%, test accuracy 97.8%``.
        """
        return (
            f"{self.optimizer} lr={self.lr:g} batch={self.batch_size}, {self.epochs} epochs: "
            f"train accuracy {self.train_accuracy:.2%}, test accuracy {self.test_accuracy:.2%}"
        )


def _epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor,
           batch_size: int, step: Callable[[float], None]) -> float:
    """One pass over ``x[order]`` in mini-batches, an optimizer step each (``step(loss)`` after it); returns the
    mean training loss of the pass."""
    total = 0.0
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        step(float(loss.detach()))
    return total / len(order)


@contextlib.contextmanager
def _stepper(on_step: Callable[[int, float], None] | None, bar_total: int | None,
             desc: str) -> Iterator[Callable[[float], None]]:
    """``step(loss)`` for :func:`_epoch`: numbers the steps from 1, calls ``on_step(step, loss)`` and moves a
    progress bar of ``bar_total`` steps (None: no bar), closed when the block ends."""
    bar = None
    if bar_total is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=bar_total, unit="step", desc=desc, leave=False)
    steps = 0

    def step(loss: float) -> None:
        nonlocal steps
        steps += 1
        if on_step is not None:
            on_step(steps, loss)
        if bar is not None:
            bar.update(1)

    try:
        yield step
    finally:
        if bar is not None:
            bar.close()


def train(
    model: nn.Module,
    train_data: TensorDataset,
    test_data: TensorDataset | None = None,
    *,
    epochs: int = 4,
    batch_size: int = 32,
    optimizer: str = "adam",
    lr: float = 1e-3,
    momentum: float = 0.9,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place with cross-entropy on log-probabilities or logits.

    Mini-batches are reshuffled every epoch from ``torch.Generator().manual_seed(seed)``; dropout draws from the
    global generator seeded with ``seed + 1`` (restored afterwards), so a run is reproducible and leaves the
    caller's random state alone.

    Args:
        model (nn.Module): a classifier; trained in place (its train/eval mode is restored).
        train_data (TensorDataset): images and class labels.
        test_data (TensorDataset | None): data for the final test accuracy.
        epochs (int): passes over ``train_data``.
        batch_size (int): the mini-batch size.
        optimizer (str): ``adam`` or ``sgd`` (with ``momentum``).
        lr (float): the learning rate.
        momentum (float): SGD's momentum.
        seed (int): the seed of the batch order and dropout.
        progress (bool): a progress bar on stderr.
        log (Callable[[str], None] | None): receives one line per epoch.
        on_step (Callable[[int, float], None] | None): called after every optimizer step with the step number
            (from 1) and that batch's loss before the step, e.g. to record the run with
            :class:`lossmap.trajectory.Recorder`.

    Returns:
        TrainResult: the per-epoch losses and the final accuracies.

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from lossmap.train import train
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(64, 5, generator=g)
        >>> data = TensorDataset(x, (x[:, 0] > 0).long())
        >>> net = torch.nn.Sequential(torch.nn.Linear(5, 2))
        >>> result = train(net, data, data, epochs=20, batch_size=16, optimizer="sgd", lr=0.5)
        >>> result.test_accuracy > 0.9
        True
    """
    if optimizer not in OPTIMIZERS:
        raise LossmapError(f"optimizer {optimizer!r} is unknown: choose one of {', '.join(OPTIMIZERS)}")
    if epochs < 1 or batch_size < 1:
        raise LossmapError(f"epochs ({epochs}) and batch size ({batch_size}) must be at least 1")
    x, y = train_data.tensors
    n = len(y)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(int(seed))
    result = TrainResult(epochs=epochs, optimizer=optimizer, batch_size=batch_size, lr=lr)
    start = time.perf_counter()
    bar_total = epochs * ((n + batch_size - 1) // batch_size) if progress else None
    was_training = model.training
    model.train()
    try:
        with seeded(int(seed) + 1), _stepper(on_step, bar_total, f"training ({optimizer})") as step:
            for epoch in range(epochs):
                mean = _epoch(model, opt, x, y, torch.randperm(n, generator=gen), batch_size, step)
                result.epoch_loss.append(mean)
                if log is not None:
                    log(f"  epoch {epoch + 1}/{epochs}: training loss {mean:.4f}")
    finally:
        model.train(was_training)
    result.seconds = time.perf_counter() - start
    result.train_loss, result.train_accuracy = accuracy(model, train_data)
    if test_data is not None:
        result.test_loss, result.test_accuracy = accuracy(model, test_data)
    return result
