"""Reference networks shipped with lossmap, model specs and checkpoints."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LossmapError

__all__ = ["MnistCNN", "resolve_factory", "load_model", "load_checkpoint", "save_checkpoint", "load_state_dict_into"]


class MnistCNN(nn.Module):
    """The seed article's MNIST network (1,199,882 parameters).

    conv 1→32 3×3, ReLU, conv 32→64 3×3, ReLU, max-pool 2, dropout .25, flatten,
    fc 9216→128, ReLU, dropout .5, fc 128→10, log-softmax. Inputs are ``[batch, 1, 28, 28]``; the output is
    log-probabilities (cross-entropy on them equals NLL).

    Examples:
        >>> import torch
        >>> from lossmap.models import MnistCNN
        >>> net = MnistCNN()
        >>> sum(p.numel() for p in net.parameters()), tuple(net(torch.zeros(2, 1, 28, 28)).shape)
        (1199882, (2, 10))
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the ten classes.

        Args:
            x (torch.Tensor): images ``[batch, 1, 28, 28]``.

        Returns:
            torch.Tensor: ``[batch, 10]`` log-probabilities.
        """
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


BUILTIN_MODELS: dict[str, Callable[[], nn.Module]] = {"mnist-cnn": MnistCNN}


def resolve_factory(spec: str, what: str) -> Callable:
    """Resolve ``package.module:name`` or ``path/to/file.py:name`` to a callable.

    A file is imported with its own folder on the import path (as ``python file.py`` would run it), so it
    can import the modules beside it; the folder stays on ``sys.path`` for imports the factory makes later.

    Args:
        spec (str): ``package.module:name`` or ``path/to/file.py:name``.
        what (str): how an error message names it (``model``, ``data``).

    Returns:
        Callable: the object named.

    Raises:
        LossmapError: the module, file or name does not exist, or importing it fails.

    Examples:
        >>> from lossmap.models import resolve_factory
        >>> resolve_factory("torch.nn:Linear", "model")(2, 3)
        Linear(in_features=2, out_features=3, bias=True)
    """
    if ":" not in spec:
        raise LossmapError(
            f"{what} spec {spec!r} is not understood: use a built-in name or "
            "'package.module:factory' or 'path/to/file.py:factory'"
        )
    module_part, _, attr = spec.rpartition(":")
    if not module_part or not attr:
        raise LossmapError(f"{what} spec {spec!r} needs both a module and a factory name, e.g. 'mymodels.py:build'")
    try:
        if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
            path = Path(module_part)
            if not path.is_file():
                raise LossmapError(f"{what} file {module_part!r} does not exist: check the path in {spec!r}")
            folder = str(path.resolve().parent)
            if folder not in sys.path:
                sys.path.insert(0, folder)
            name = f"lossmap_user_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise LossmapError(f"cannot import {module_part!r}: it is not a Python file")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_part)
    except LossmapError:
        raise
    except Exception as exc:  # the user's module failed to import
        raise LossmapError(f"importing {module_part!r} for {what} spec {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise LossmapError(f"{module_part!r} has no callable {attr!r}: check the name after ':' in {spec!r}")
    return factory


def load_model(spec: str) -> nn.Module:
    """Build a model from a spec, as ``--model`` does.

    Args:
        spec (str): ``mnist-cnn``, ``package.module:factory`` or ``file.py:factory`` (a callable without
            arguments returning an ``nn.Module``).

    Returns:
        nn.Module: the model, freshly built (load a checkpoint into it with :func:`load_checkpoint`).

    Examples:
        >>> from lossmap.models import load_model
        >>> type(load_model("mnist-cnn")).__name__
        'MnistCNN'
    """
    if spec in BUILTIN_MODELS:
        return BUILTIN_MODELS[spec]()
    factory = resolve_factory(spec, "model")
    try:
        model = factory()
    except Exception as exc:
        raise LossmapError(f"model factory {spec!r} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise LossmapError(f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise LossmapError(f"checkpoint {str(path)!r} does not exist: check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LossmapError(
            f"cannot read checkpoint {str(path)!r} ({type(exc).__name__}: {exc}); "
            "use a .safetensors file or a .pt/.pth state dict saved with torch.save(model.state_dict(), ...)"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LossmapError(f"checkpoint {str(path)!r} is not a state dict of tensors")
    return state


def load_state_dict_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``state`` into ``model`` (in place).

    Args:
        model (nn.Module): the model.
        state (dict[str, torch.Tensor]): a state dict.
        source (str): how an error message names where ``state`` came from.

    Raises:
        LossmapError: naming missing and unexpected keys and shape mismatches.

    Examples:
        >>> import torch
        >>> from lossmap.models import load_state_dict_into
        >>> net = torch.nn.Linear(2, 1)
        >>> load_state_dict_into(net, {"weight": torch.ones(1, 2), "bias": torch.zeros(1)})
        >>> net.weight.tolist()
        [[1.0, 1.0]]
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append("missing keys " + ", ".join(missing[:5]) + (" …" if len(missing) > 5 else ""))
    if unexpected:
        problems.append("unexpected keys " + ", ".join(unexpected[:5]) + (" …" if len(unexpected) > 5 else ""))
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:5]) + (" …" if len(shapes) > 5 else ""))
    if problems:
        raise LossmapError(f"{source} does not fit the model ({'; '.join(problems)}): use a checkpoint of this architecture")
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(state[k].to(dtype=t.dtype))


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into ``model`` (in place), as ``--checkpoint`` does.

    Args:
        model (nn.Module): a model of the checkpoint's architecture.
        path (str | Path): a ``.safetensors`` file or a ``.pt``/``.pth`` state dict (loaded with
            ``weights_only=True``; a dict with a ``state_dict`` key is accepted).

    Returns:
        nn.Module: ``model``.

    Raises:
        LossmapError: a missing or unreadable file, or a state dict that does not fit the model.

    Examples:
        >>> import pathlib, tempfile, torch
        >>> from lossmap.models import load_checkpoint, save_checkpoint
        >>> path = save_checkpoint(torch.nn.Linear(2, 1), pathlib.Path(tempfile.mkdtemp()) / "a.safetensors")
        >>> type(load_checkpoint(torch.nn.Linear(2, 1), path)).__name__
        'Linear'
    """
    load_state_dict_into(model, _read_state_dict(path), source=f"checkpoint {str(path)!r}")
    return model


def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Save ``model``'s state dict as safetensors (or with ``torch.save`` for ``.pt``/``.pth``), atomically.

    Args:
        model (nn.Module): the model.
        path (str | Path): the file to write; its suffix picks the format.

    Returns:
        Path: the path written.

    Examples:
        >>> import pathlib, tempfile, torch
        >>> from lossmap.models import save_checkpoint
        >>> save_checkpoint(torch.nn.Linear(2, 1), pathlib.Path(tempfile.mkdtemp()) / "net.pt").suffix
        '.pt'
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix in (".pt", ".pth"):
        torch.save(state, str(path))
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    return path
