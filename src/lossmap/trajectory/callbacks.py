"""Record a run from PyTorch Lightning's or Hugging Face's ``Trainer``.

>>> trainer = lightning.Trainer(callbacks=[LightningCallback("runs/sgd", schedule=Schedule.every(10))])  # doctest: +SKIP
>>> cb = HFCallback("runs/adamw", schedule=Schedule.log(1, 5000, 50))  # doctest: +SKIP
>>> trainer = transformers.Trainer(..., callbacks=[cb])  # doctest: +SKIP

Importing this module imports neither framework. Each class finds its framework's callback base class
when it is instantiated (``lightning.pytorch.Callback``, else ``pytorch_lightning.Callback``;
``transformers.TrainerCallback``) and the object is an instance of both; a missing framework raises
:class:`~lossmap.errors.LossmapError` naming the package to install.

Steps are the trainer's optimizer-step counter (Lightning ``trainer.global_step``, transformers
``state.global_step``), read after the optimizer stepped, so a checkpoint at step s holds the weights
after s updates; step 0 (before training) is recorded when the schedule wants it, and the final
weights always are (``final=True``). Only the main process writes (``trainer.is_global_zero``,
``state.is_world_process_zero``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

from ..errors import LossmapError
from .record import Recorder, Schedule

__all__ = ["LightningCallback", "HFCallback"]

_BASES = {
    "lightning": (("lightning.pytorch", "Callback"), ("pytorch_lightning", "Callback")),
    "transformers": (("transformers", "TrainerCallback"),),
}
_INSTALL = {"lightning": "pip install lightning", "transformers": "pip install transformers accelerate"}
_MIXED: dict[tuple[type, type], type] = {}


def framework_base(framework: str) -> type:
    """The callback base class of ``framework`` ("lightning" or "transformers"), imported now."""
    for module, name in _BASES[framework]:
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:
            continue
    raise LossmapError(f"this callback needs {framework}, which is not installed: {_INSTALL[framework]}")


def _restore(cls: type, state: dict[str, Any]) -> Any:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


class _FrameworkCallback:
    """Becomes, on instantiation, a subclass of the framework's callback base class as well."""

    framework = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        base = framework_base(cls.framework)
        if issubclass(cls, base):
            return super().__new__(cls)
        mixed = _MIXED.get((cls, base))
        if mixed is None:
            mixed = _MIXED[(cls, base)] = type(cls.__name__, (cls, base), {"__module__": cls.__module__,
                                                                        "__qualname__": cls.__qualname__})
        return mixed.__new__(mixed)

    def __reduce__(self) -> Any:  # pickle through the public class: the mixed one is made at run time
        public = next(c for c in type(self).__mro__ if c.__dict__.get("framework"))
        return _restore, (public, dict(self.__dict__))


def _recorder(recorder: Recorder | str | Path, schedule: Schedule | int | Sequence[int] | None) -> Recorder:
    if isinstance(recorder, Recorder):
        if schedule is not None:
            raise LossmapError("schedule was given twice: set it on the Recorder, or pass a folder and a schedule")
        return recorder
    if isinstance(recorder, (str, Path)):
        return Recorder(recorder, schedule=schedule)
    raise LossmapError(f"recorder {recorder!r} is neither a Recorder nor a folder: pass Recorder(...) or a path")


def _lr(optimizers: Any) -> float | None:
    """The first optimizer's first parameter group's learning rate (None when there is none)."""
    opt = optimizers[0] if isinstance(optimizers, (list, tuple)) and optimizers else optimizers
    groups = getattr(opt, "param_groups", None)
    return float(groups[0]["lr"]) if groups and groups[0].get("lr") is not None else None


def _loss(outputs: Any) -> Any:
    if isinstance(outputs, Mapping):
        return outputs.get("loss")
    return outputs if hasattr(outputs, "numel") and outputs.numel() == 1 else None


class LightningCallback(_FrameworkCallback):
    """Records a PyTorch Lightning run.

    Args:
        recorder (Recorder | str | Path): a recorder, or a folder for a new one.
        schedule (Schedule | int | list[int] | None): the schedule, when ``recorder`` is a folder.
        module (str | None): record ``pl_module.<module>`` (e.g. ``"model"``, the plain network the
            LightningModule wraps, whose checkpoints then load into that network) instead of the
            whole LightningModule.
        every_epoch (bool): also record the weights at the end of every training epoch.
        final (bool): record the weights when training ends, whatever the schedule.
    Example:
        >>> cb = LightningCallback("runs/sgd", schedule=Schedule.every(20), module="net")  # doctest: +SKIP
        >>> lightning.Trainer(max_epochs=3, callbacks=[cb]).fit(module, loader)  # doctest: +SKIP
    """

    framework = "lightning"

    def __init__(self, recorder: Recorder | str | Path, schedule: Schedule | int | Sequence[int] | None = None, *,
                 module: str | None = None, every_epoch: bool = False, final: bool = True) -> None:
        super().__init__()
        self.recorder = _recorder(recorder, schedule)
        self.module, self.every_epoch, self.final = module, every_epoch, final

    def _save(self, trainer: Any, pl_module: Any, force: bool = False, loss: Any = None) -> None:
        step = int(trainer.global_step)
        if not trainer.is_global_zero or not (force or self.recorder.due(step)):
            return
        model = pl_module
        for attr in self.module.split(".") if self.module else ():
            model = getattr(model, attr)
        self.recorder.save(model, step=step, epoch=int(trainer.current_epoch), lr=_lr(trainer.optimizers),
                           loss=loss, force=force)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._save(trainer, pl_module)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._save(trainer, pl_module, loss=_loss(outputs))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.every_epoch:
            self._save(trainer, pl_module, force=True)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.final:
            self._save(trainer, pl_module, force=True)


class HFCallback(_FrameworkCallback):
    """Records a Hugging Face ``transformers.Trainer`` run.

    The checkpoint is taken in ``on_step_end``; the training loss, which the trainer reports later in
    ``on_log`` (averaged since the previous log, every ``logging_steps``), is added to the entry of
    the step it is logged at when that step was recorded. ``epoch`` is the trainer's fractional epoch;
    ``lr`` the optimizer's rate when the checkpoint is taken (after the scheduler stepped).

    Args:
        recorder (Recorder | str | Path): a recorder, or a folder for a new one.
        schedule (Schedule | int | list[int] | None): the schedule, when ``recorder`` is a folder.
        final (bool): record the weights when training ends, whatever the schedule.
    Example:
        >>> trainer = transformers.Trainer(model, args, train_dataset=ds,  # doctest: +SKIP
        ...                                callbacks=[HFCallback("runs/adamw", schedule=50)])
    """

    framework = "transformers"

    def __init__(self, recorder: Recorder | str | Path, schedule: Schedule | int | Sequence[int] | None = None, *,
                 final: bool = True) -> None:
        super().__init__()
        self.recorder = _recorder(recorder, schedule)
        self.final = final

    def _save(self, state: Any, model: Any, optimizer: Any, force: bool = False) -> None:
        step = int(state.global_step)
        if model is None or not state.is_world_process_zero or not (force or self.recorder.due(step)):
            return
        self.recorder.save(model, step=step, epoch=state.epoch, lr=_lr(optimizer), force=force)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        self._save(state, model, optimizer)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                    **kwargs: Any) -> None:
        self._save(state, model, optimizer)

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs and state.is_world_process_zero:
            self.recorder.amend(int(state.global_step), loss=float(logs["loss"]))

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                     **kwargs: Any) -> None:
        if self.final:
            self._save(state, model, optimizer, force=True)
