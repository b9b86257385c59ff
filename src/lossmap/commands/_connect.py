"""Options shared by ``lossmap connect`` and ``lossmap curve``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import LossmapError
from . import _common as c


def add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="A", help="checkpoint of model A (.safetensors, or a .pt/.pth state dict)")
    p.add_argument("b", metavar="B", help="checkpoint of model B, the same architecture")
    p.add_argument("--model", required=True, metavar="SPEC", help=c.MODEL_HELP)


def add_evaluation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, metavar="N", help="evaluate on the first N samples of each data set (default: all)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="evaluation batch size (default: 256)")
    p.add_argument("--cache", choices=("auto", "device", "stream"), default="auto",
                   help="keep the data on the device or stream it at every point (default: auto)")
    p.add_argument("--memory-budget", metavar="SIZE", help="how much memory cached data may take, e.g. 2GB")
    p.add_argument("--allow-nondeterministic", action="store_true",
                   help="accept data whose batches differ between passes, with a warning")
    c.add_loss_args(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--dtype", choices=c.DTYPES, help="evaluate in this precision (default: the model's)")


def objective_options(args: argparse.Namespace) -> dict:
    """The :class:`~lossmap.objective.Objective` keywords of the evaluation options."""
    output = args.output
    if output is not None and output.lstrip("-").isdigit():
        output = int(output)
    return dict(loss_fn=args.loss, output_transform=output, batch_size=args.batch_size, samples=args.samples,
                cache=args.cache, memory_budget=args.memory_budget, allow_nondeterministic=args.allow_nondeterministic)


def dtype_of(name: str | None):
    import torch

    return None if name is None else {"float32": torch.float32, "float64": torch.float64}[name]


def check_common(args: argparse.Namespace) -> str:
    """Checks made before anything is loaded; returns the device."""
    c.check_positive(args.samples, "--samples")
    c.check_positive(args.batch_size, "--batch-size")
    return c.check_device(args.device)


def refuse_existing(path: Path, overwrite: bool, what: str) -> None:
    if path.exists() and not overwrite:
        raise LossmapError(f"{str(path)!r} exists: pass --overwrite to {what}, or choose another --out")


def models(args: argparse.Namespace):
    """``(A, B)``: the architecture built twice, with each checkpoint loaded."""
    return c.build_model(args.model, args.a), c.build_model(args.model, args.b)
