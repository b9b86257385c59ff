"""Argument helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import LossmapError

DTYPES = ("float32", "float64")

MODEL_HELP = (
    "the network: 'mnist-cnn' (built in), 'package.module:factory' or 'path/to/file.py:factory' "
    "(a callable returning a torch.nn.Module)"
)
DATA_HELP = (
    "evaluation data: 'digits[:train|test]' (embedded), 'mnist:DIR[:train|test]' (IDX files), 'npz:FILE' "
    "(arrays x, y) or 'package.module:factory' returning a Dataset, DataLoader or iterable of batches"
)


def allow_negative_values(p: argparse.ArgumentParser) -> None:
    """Let option values start with a minus sign, as axis specs do (``--x -1:1:51``).

    argparse only accepts plain negative numbers as values; anything starting with '-' followed by a
    digit or a dot is a value here (no option of ours looks like that).
    """
    p._negative_number_matcher = re.compile(r"^-\.?\d")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="SPEC", help=DATA_HELP)
    p.add_argument("--samples", type=int, metavar="N", help="evaluate on the first N samples only (default: all)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="evaluation batch size (default: 256)")
    p.add_argument("--cache", choices=("auto", "device", "stream"), default="auto",
                   help="keep the data on the device (fast) or stream it from the data at every point (any size); "
                        "auto: cache when it fits --memory-budget (default: auto)")
    p.add_argument("--memory-budget", metavar="SIZE",
                   help="how much memory cached data may take, e.g. 2GB (default: a quarter of the free memory)")
    p.add_argument("--allow-nondeterministic", action="store_true",
                   help="accept data whose batches differ between passes (shuffling, random augmentation) with a "
                        "warning recorded in the file, instead of refusing it")


def add_loss_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loss", metavar="NAME",
                   help="the loss, PyTorch's way loss_fn(output, target): cross-entropy, nll, mse, l1, or "
                        "'module:function' / 'file.py:function' (a function or an nn loss class); default: "
                        "cross-entropy for integer class targets, mse (the mean, as nn.MSELoss()) for float targets")
    p.add_argument("--output", metavar="KEY",
                   help="the tensor the loss takes from the model's output: an attribute or key (e.g. logits, for "
                        "Hugging Face style outputs) or an index (0, for a tuple); default: the output as it is")


def add_eval_args(p: argparse.ArgumentParser, buffers: bool = True) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--dtype", choices=DTYPES, help="evaluate in this precision (default: the model's)")
    p.add_argument("--tf32", action="store_true",
                   help="on CUDA, allow TF32 matmuls/convolutions (faster, ~1e-3 relative error; the error at the "
                        "centre is stored in the file)")
    p.add_argument("--bf16", action="store_true",
                   help="run convolutions and matmuls in bfloat16 (torch.autocast; about 2x faster on CPUs with "
                        "AVX512-BF16/AMX and on GPUs, ~1e-3 relative error; the error at the centre is stored in the file)")
    p.add_argument("--bn", choices=("frozen", "recompute"), default="frozen",
                   help="batch-norm statistics: frozen running stats (default) or re-estimated at every point")
    p.add_argument("--bn-data", metavar="SPEC",
                   help="with --bn recompute: the data that re-estimates the statistics (default: the evaluation data)")
    if buffers:
        p.add_argument("--include-buffers", action="store_true",
                       help="also move floating-point buffers (e.g. batch-norm running statistics)")
    p.add_argument("--tensors", metavar="PATTERN",
                   help="move only tensors whose names match these shell patterns, e.g. 'fc1.*' or 'conv*.weight,fc2.*'")


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="FILE.nc",
                   help="landscape file to write (its directions go beside it as FILE.directions.safetensors)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over, replacing an existing landscape file (without it, rerunning the same command "
                        "resumes an unfinished file; a file made with other settings is refused)")
    p.add_argument("--flush-every", type=int, default=None, metavar="N",
                   help="write finished points to --out at least every N points (default: 256 or 5%% of the grid, whichever is more)")
    p.add_argument("--flush-seconds", type=float, default=10.0, metavar="T",
                   help="... and at least every T seconds (default: 10)")


def check_output_folder(out: str | Path) -> Path:
    """Fail early (before any computing) when ``out`` cannot be written: a folder, missing or read-only."""
    from ..files import check_output

    return check_output(out)


def check_device(device: str) -> str:
    """Validate ``--device`` up front so that a typo or a missing GPU gives one clear line."""
    if device == "cpu":
        return device
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise LossmapError(f"device {device!r} is not understood: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LossmapError(f"device {device!r} asked for but no CUDA GPU is available: use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LossmapError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise LossmapError(f"device {device!r} is not supported: use cpu, cuda or cuda:N")
    return device


def check_run_args(args: argparse.Namespace) -> tuple[Path, str]:
    """Checks every computing command makes before loading anything: ``(out, device)``."""
    from ..grid import Grid

    out = check_output_folder(args.out)
    Grid.from_specs(args.x, args.y)  # a malformed axis fails before any loading
    check_positive(args.samples, "--samples")
    check_positive(args.batch_size, "--batch-size")
    return out, check_device(args.device)


def compute_options(args: argparse.Namespace, out: Path, device: str) -> dict[str, Any]:
    """The ``compute()`` keywords that come from the data, loss, evaluation and output options."""
    output = args.output
    if output is not None and output.lstrip("-").isdigit():
        output = int(output)
    options = dict(
        bn=args.bn, tf32=args.tf32, bf16=args.bf16, device=device, dtype=args.dtype, batch_size=args.batch_size,
        samples=args.samples, data_description=args.data, progress=True, out=out, overwrite=args.overwrite,
        flush_every=args.flush_every, flush_seconds=args.flush_seconds, loss_fn=args.loss, output_transform=output,
        cache=args.cache, memory_budget=args.memory_budget, allow_nondeterministic=args.allow_nondeterministic,
    )
    if args.bn_data is not None:
        if args.bn != "recompute":
            raise LossmapError("--bn-data re-estimates batch-norm statistics: it needs --bn recompute")
        options.update(bn_data=load_data(args.bn_data), bn_description=args.bn_data)
    return options


def bn_note(ds) -> str:
    """A line saying which data re-estimated the batch-norm statistics (empty unless --bn recompute)."""
    if ds.attrs.get("bn_policy") != "recompute":
        return ""
    return f"\nbatch norm: statistics re-estimated at every point from {ds.attrs.get('bn_data') or 'the evaluation data'}"


def check_positive(value: int | None, option: str) -> None:
    if value is not None and value < 1:
        raise LossmapError(f"{option} {value} must be at least 1")


def build_model(spec: str, checkpoint: str | None = None):
    """The model from ``spec`` with ``checkpoint`` (if any) loaded into it."""
    from ..models import load_checkpoint, load_model

    model = load_model(spec)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def load_data(spec: str) -> Any:
    from ..data import load_data as _load

    return _load(spec)


def range_text(values) -> str:
    import numpy as np

    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return "no finite value"
    return f"{finite.min():.4g}–{finite.max():.4g}" + ("" if finite.size == v.size else f" ({v.size - finite.size} non-finite)")


def summary_line(ds, path: str | Path, seconds: float, computed: bool = True) -> str:
    """``wrote FILE (21×21 points; loss 0.1–9.3, accuracy 10%–98%; 12.3 s)``; ``FILE is unchanged (…)`` when the
    run found the file complete and computed nothing."""
    shape = "×".join(str(n) for n in ds["loss"].shape) if "loss" in ds else "×".join(str(n) for n in ds.sizes.values())
    parts = []
    for name in ds.data_vars:
        parts.append(f"{name} {range_text(ds[name].values)}")
    head = f"wrote {path}" if computed else f"{path} is unchanged"
    line = f"{head} ({shape} points; {'; '.join(parts)}; {seconds:.1f} s)"
    return line + bn_note(ds) + precision_text(ds) + flatness_text(ds)


def precision_text(ds) -> str:
    """A line with the measured error of each reduced precision the run used (``--tf32``, ``--bf16``)."""
    errors = [(k, ds.attrs[f"{k}_centre_rel_error"]) for k in ("tf32", "bf16") if f"{k}_centre_rel_error" in ds.attrs]
    if not errors:
        return ""
    return "\nprecision: " + "; ".join(f"{k} changes the metrics at the centre by {e:.2g} (relative)" for k, e in errors)


def flatness_text(ds) -> str:
    """The summary numbers stored with a complete landscape (see lossmap.stats), as a second line."""
    a = ds.attrs
    if "summary_models" in a:
        return path_text(a)
    if "summary_centre" not in a:
        return ""
    radii = [(k, a[f"summary_rise_radius_{k}"]) for k in ("xpos", "xneg", "ypos", "yneg") if f"summary_rise_radius_{k}" in a]
    radius = "/".join("–" if v != v else f"{v:.3g}" for _, v in radii)
    signs = "/".join({"xpos": "+x", "xneg": "−x", "ypos": "+y", "yneg": "−y"}[k] for k, _ in radii)
    return (
        f"\nflatness: centre {a['summary_metric']} {a['summary_centre']:.4g}; rise by {a['summary_rise']:.3g} "
        f"reached at radius {signs} {radius} (– never); mean rise within radius {a['summary_ball_radius']:.3g}: "
        f"{a['summary_ball_mean_increase']:.4g}"
    )


def path_text(a) -> str:
    """The numbers of a landscape through models (lossmap.path_stats) as a second line."""
    names = [n.strip() for n in str(a["summary_models"]).split(",")]
    values = [a.get(f"summary_at_{k}") for k in ("a", "b", "c")][: len(names)]
    at = ", ".join(f"at {n} {v:.4g}" for n, v in zip(names, values) if v is not None)
    text = f"\npath: {a['summary_metric']} {at}"
    if a.get("summary_max_between") == a.get("summary_max_between"):  # not NaN
        text += (f"; max between {names[0]} and {names[1]} {a['summary_max_between']:.4g} at α = "
                 f"{a['summary_argmax_between']:.3g}")
        bump = a.get("summary_bump")
        if bump == bump and bump is not None:
            text += f" ({bump:+.3g} against the higher end)"
        text += "; monotone from A to B: " + ("yes" if a.get("summary_monotone") else "no")
    return text


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def add_view_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``report`` and ``compare``."""
    p.add_argument("--titles", nargs="+", metavar="TITLE", help="one title per file (default: the file names)")
    p.add_argument("--metric", default="loss", help="metric to draw (default: loss)")
    p.add_argument("--log", action="store_true", help="log scale for the metric")
    p.add_argument("--levels", type=int, default=None, metavar="N", help="number of contour levels (default 15)")
    p.add_argument("--rise", type=float, default=None, metavar="R",
                   help="loss increase for the rise-radius flatness measure (default 0.1·(1+|centre loss|))")


def titles_for(files: Sequence[str], titles: Sequence[str] | None) -> list[str]:
    """The given titles (one per file) or the files' names (stems; whole paths when stems repeat)."""
    if titles is not None:
        if len(titles) != len(files):
            raise LossmapError(f"{len(titles)} --titles for {len(files)} files: give one title per file")
        return list(titles)
    stems = [Path(f).stem for f in files]
    return stems if len(set(stems)) == len(stems) else [str(f) for f in files]


def load_all(files: Sequence[str]):
    from .. import store

    return [store.load(f) for f in files]


def levels_option(levels: int | None, default: int) -> int:
    """``--levels N`` (at least 2), or ``default``."""
    if levels is None:
        return default
    if levels < 2:
        raise LossmapError(f"--levels {levels} must be at least 2")
    return levels


def add_precision_args(p: argparse.ArgumentParser) -> None:
    """Evaluation to a stated precision (lossmap.uncertainty)."""
    p.add_argument("--precision", type=float, metavar="REL",
                   help="evaluate each point only until 1.96 standard errors (w.r.t. the evaluation set) are at most REL "
                        "times its loss, e.g. 0.01; the samples each point read are stored (samples_used)")
    p.add_argument("--precision-abs", type=float, metavar="TOL",
                   help="the same with an absolute tolerance TOL on the loss")
    p.add_argument("--precision-min-batches", type=int, default=2, metavar="N",
                   help="with --precision(-abs): read at least N batches of --batch-size before a point may stop (default 2)")


def add_seeds_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", metavar="SEEDS",
                   help="a direction ensemble: the same grid over several direction seeds in one file (a 'seed' "
                        "dimension), e.g. 0:8 (seeds 0 to 7), 8 (the same) or 1,5,9; replaces --seed")


def uncertainty_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``compute()`` keywords of --precision, --precision-abs, --precision-min-batches and --seeds."""
    options: dict[str, Any] = {}
    for name in ("precision", "precision_abs"):
        value = getattr(args, name, None)
        if value is not None:
            if not value > 0:
                raise LossmapError(f"--{name.replace('_', '-')} {value} must be a positive number, e.g. 0.01")
            options[name] = value
    if options:
        check_positive(args.precision_min_batches, "--precision-min-batches")
        options["precision_min_batches"] = args.precision_min_batches
    if getattr(args, "seeds", None) is not None:
        from ..uncertainty.seeds import parse_seeds

        parse_seeds(args.seeds)  # a malformed list fails before anything is loaded
        options["seeds"] = args.seeds
    return options


def uncertainty_text(ds) -> str:
    """The lines on errors, precision and direction seeds that follow the summary line."""
    from ..uncertainty.summary import ensemble_text, error_text, precision_text

    return error_text(ds) + precision_text(ds) + ensemble_text(ds)
