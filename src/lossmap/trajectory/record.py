"""Recording a training run: weights-only safetensors checkpoints on a schedule, plus a manifest.

A training loop calls :meth:`Recorder.save` after each optimizer step; the recorder keeps the steps
its :class:`Schedule` wants and writes, for each, ``step-<step>.safetensors`` (the model's whole state
dict: floating tensors and integer ones such as batch-norm's ``num_batches_tracked``, so that a
checkpoint reloads with ``model.load_state_dict``) and one entry of ``manifest.json`` (see
:mod:`lossmap.trajectory.run` for the format).

Both writes are atomic (a temporary file in the folder, flushed to disk, then renamed over the
target), and the checkpoint is written before the manifest names it: a training process killed at
any moment leaves a manifest whose every line points at a complete file.

A step already in the manifest is never written again, so a loop resumed into the same folder, or
two hooks that fire at one step, record each step once.
"""

from __future__ import annotations

import fnmatch
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import LossmapError
from ..space import _patterns
from ..store import atomic_path
from .run import FORMAT, FORMAT_VERSION, MANIFEST, read_manifest

__all__ = ["Schedule", "Recorder", "checkpoint_name", "state_to_save"]


@dataclass(frozen=True)
class Schedule:
    """Which optimizer steps get a checkpoint.

    ``interval`` > 0: the multiples of ``interval`` (step 0, the initial weights, included); otherwise
    the explicit set ``steps``. Build one with :meth:`every`, :meth:`log` or :meth:`at`.

    Example:
        >>> Schedule.log(1, 1000, 7).steps
        (0, 1, 3, 10, 32, 100, 316, 1000)
        >>> Schedule.every(50).wants(150)
        True
    """

    interval: int = 0
    steps: tuple[int, ...] = ()

    @classmethod
    def every(cls, n: int) -> "Schedule":
        """Every ``n`` steps (0, n, 2n, …)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise LossmapError(f"schedule every {n!r} steps: give a whole number of steps >= 1")
        return cls(interval=int(n))

    @classmethod
    def log(cls, first: int, last: int, count: int, zero: bool = True) -> "Schedule":
        """``count`` steps spaced evenly in log between ``first`` (>= 1) and ``last``, rounded to whole
        steps (steps that round to the same integer are kept once, so a short range may give fewer),
        plus step 0 unless ``zero`` is False. Dense early, sparse late: where training moves fastest."""
        if not (isinstance(first, (int, np.integer)) and isinstance(last, (int, np.integer)) and 1 <= first < last):
            raise LossmapError(f"log schedule from {first!r} to {last!r}: give whole steps with 1 <= first < last")
        if not isinstance(count, (int, np.integer)) or count < 2:
            raise LossmapError(f"log schedule with {count!r} steps: give a count >= 2")
        values = np.rint(np.geomspace(first, last, int(count))).astype(np.int64)
        return cls(steps=tuple(sorted(set(values.tolist()) | ({0} if zero else set()))))

    @classmethod
    def at(cls, steps: Iterable[int]) -> "Schedule":
        """Exactly these steps."""
        values = list(steps)
        if not values or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in values):
            raise LossmapError(f"schedule steps {values[:5]!r}: give a non-empty list of whole steps >= 0")
        return cls(steps=tuple(sorted({int(s) for s in values})))

    def wants(self, step: int) -> bool:
        """Whether ``step`` is on the schedule."""
        return step % self.interval == 0 if self.interval > 0 else step in self.steps

    @classmethod
    def coerce(cls, schedule: "Schedule | int | Sequence[int] | None") -> "Schedule":
        """A Schedule from ``None`` (every step), an int N (every N steps) or a list of steps."""
        if schedule is None:
            return cls(interval=1)
        if isinstance(schedule, Schedule):
            return schedule
        if isinstance(schedule, (int, np.integer)) and not isinstance(schedule, bool):
            return cls.every(int(schedule))
        if isinstance(schedule, (list, tuple, range, np.ndarray)):
            return cls.at(schedule)
        raise LossmapError(f"schedule {schedule!r} is not understood: pass Schedule.every(N), Schedule.log(...), "
                           "an int N or a list of steps")


def checkpoint_name(step: int) -> str:
    """The file name of step ``step``'s checkpoint (zero-padded, so names sort by step)."""
    return f"step-{step:09d}.safetensors"


def state_to_save(model: nn.Module, model_filter: str | Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint holds: ``model.state_dict()`` (all of it, or the names matching
    ``model_filter``'s shell patterns), detached, on the CPU, contiguous, and never sharing memory
    (tied weights are stored once per name, which safetensors needs)."""
    state = model.state_dict()
    patterns = _patterns(model_filter)
    if patterns:
        state = {n: t for n, t in state.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
        if not state:
            raise LossmapError(f"model filter {model_filter!r} matches no tensor of the model; names look like "
                               f"{', '.join(list(model.state_dict())[:4])}")
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen:
            t = t.clone()
        seen.add(ptr)
        out[name] = t
    return out


def _scalar(key: str, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise LossmapError(f"scalar {key!r} is a tensor of shape {tuple(value.shape)}: pass one number")
        value = value.detach().item()
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise LossmapError(f"scalar {key!r} is a {type(value).__name__}: pass a number or a string")


def _number(key: str, value: Any) -> float | int | None:
    value = _scalar(key, value)
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise LossmapError(f"{key} {value!r} is not a number: pass a float (or None)")


def write_checkpoint(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``state`` as safetensors at ``path``, atomically and durably."""
    from safetensors.torch import save_file

    with atomic_path(path, durable=True) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def write_manifest(folder: Path, entries: list[dict[str, Any]]) -> None:
    """Replace ``folder/manifest.json`` with ``entries`` (sorted by step), atomically and durably."""
    body = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "checkpoints": sorted(entries, key=lambda e: e["step"])}
    with atomic_path(folder / MANIFEST, durable=True) as tmp:
        tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")


class Recorder:
    """Writes a run folder: checkpoints on a schedule and the manifest.

    Args:
        folder (str | Path): created if needed. A folder that already holds a run is continued
            (steps already recorded are skipped) unless ``resume`` is False, which refuses it.
        schedule (Schedule | int | list[int] | None): which steps to keep; None = every step,
            N = every N steps, a list = those steps.
        model_filter (str | list[str] | None): save only the state-dict entries matching these shell
            patterns (``"fc*,conv2.*"``); None saves the whole state dict. The plane of a run
            filtered this way moves only those tensors.
        resume (bool): continue a folder that already holds a run.

    Example:
        >>> rec = Recorder("runs/sgd", schedule=Schedule.log(1, 10_000, 60))  # doctest: +SKIP
        >>> for step in range(10_001):  # doctest: +SKIP
        ...     loss = train_one_step(model)
        ...     rec.save(model, step=step + 1, loss=loss, lr=opt.param_groups[0]["lr"])
    """

    def __init__(self, folder: str | Path, schedule: Schedule | int | Sequence[int] | None = None,
                 model_filter: str | Sequence[str] | None = None, resume: bool = True) -> None:
        self.folder = Path(folder)
        self.schedule = Schedule.coerce(schedule)
        self.model_filter = model_filter
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LossmapError(f"cannot create run folder {str(self.folder)!r}: {exc}") from exc
        self.entries: list[dict[str, Any]] = read_manifest(self.folder)
        self._recorded = {e["step"] for e in self.entries}
        if self.entries and not resume:
            raise LossmapError(f"run folder {str(self.folder)!r} already holds a run of {len(self.entries)} checkpoints: "
                               "choose a new folder, or pass resume=True to continue it")

    @property
    def steps(self) -> list[int]:
        """The steps recorded so far, in order."""
        return sorted(e["step"] for e in self.entries)

    def due(self, step: int) -> bool:
        """Whether :meth:`save` at ``step`` would write (on the schedule and not yet recorded)."""
        return self.schedule.wants(int(step)) and int(step) not in self._recorded

    def save(self, model: nn.Module, step: int, epoch: float | None = None, lr: float | None = None,
             loss: float | torch.Tensor | None = None, force: bool = False, **scalars: Any) -> Path | None:
        """Record ``model`` at ``step`` if the schedule wants it (or ``force``) and it is not recorded yet.

        Args:
            model (nn.Module): its state dict is saved (the model is not changed).
            step (int): optimizer steps taken so far (0 = the initial weights).
            epoch, lr, loss (float | None): the manifest's fields; a one-element tensor is accepted.
            force (bool): save even if the schedule does not want this step.
            **scalars: further numbers (or strings) for the manifest entry's ``scalars``.
        Returns:
            Path | None: the checkpoint written, or None when the step was skipped.
        """
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise LossmapError(f"step {step!r} is not a whole number >= 0: pass the optimizer step count")
        step = int(step)
        if not (force or self.schedule.wants(step)) or step in self._recorded:
            return None
        entry = {"step": step, "file": checkpoint_name(step), "epoch": _number("epoch", epoch),
                 "lr": _number("lr", lr), "loss": _number("loss", loss), "time": time.time(),
                 "scalars": {k: _scalar(k, v) for k, v in scalars.items()}}
        state = state_to_save(model, self.model_filter)
        params = [n for n, _ in model.named_parameters() if n in state]
        filt = self.model_filter if isinstance(self.model_filter, (str, type(None))) else ",".join(self.model_filter)
        meta = {"format": "lossmap.checkpoint", "step": str(step), "names": json.dumps(list(state)),
                "parameters": json.dumps(params), "model_filter": filt or ""}
        path = self.folder / entry["file"]
        write_checkpoint(path, state, meta)
        write_manifest(self.folder, self.entries + [entry])
        self.entries.append(entry)
        self._recorded.add(step)
        return path

    def amend(self, step: int, **values: Any) -> bool:
        """Add or replace fields of the entry of an already recorded ``step`` (``loss``, ``lr``, ``epoch``
        or further scalars), e.g. a loss that is logged after the checkpoint was taken.
        Returns False (and writes nothing) when ``step`` was not recorded."""
        if step not in self._recorded:
            return False
        i = next(i for i, e in enumerate(self.entries) if e["step"] == step)
        entry = dict(self.entries[i], scalars=dict(self.entries[i].get("scalars") or {}))
        for key, value in values.items():
            if key in ("loss", "lr", "epoch"):
                entry[key] = _number(key, value)
            else:
                entry["scalars"][key] = _scalar(key, value)
        write_manifest(self.folder, self.entries[:i] + [entry] + self.entries[i + 1 :])
        self.entries[i] = entry
        return True

