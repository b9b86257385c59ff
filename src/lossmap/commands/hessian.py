"""``lossmap hessian``: the Hessian's extreme eigenvalues and eigenvectors, trace, density and per-layer spectra."""

from __future__ import annotations

import argparse

from . import _common as c

HVP_CHOICES = ("auto", "forward-over-reverse", "double-backward")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "hessian",
        help="Hessian spectrum of a model: top/bottom eigenpairs, trace, spectral density, per-layer spectra",
        description=(
            "The Hessian of the mean loss over the whole data set (batches weighted by size, batch norm and dropout "
            "in evaluation mode) with respect to the model's parameters, by Hessian-vector products. Writes FILE.nc "
            "(eigenvalues, HVP counts, trace ± standard error, density nodes and weights), every eigenvector in "
            "FILE.eigenvectors.safetensors and two of them as FILE.directions.safetensors, which "
            "'lossmap surface --directions' slices along. Under torchrun each rank takes a share of the data."
        ),
    )
    p.add_argument("--model", required=True, metavar="SPEC", help=c.MODEL_HELP)
    p.add_argument("--checkpoint", metavar="FILE", help="parameters θ0 (.safetensors, or .pt/.pth state dict)")
    c.add_data_args(p)
    c.add_loss_args(p)
    add_hessian_eval_args(p)
    p.add_argument("--out", required=True, metavar="FILE.nc", help="spectrum file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE.nc")
    p.add_argument("--top", type=int, default=5, metavar="K", help="largest eigenvalues with eigenvectors (default: 5)")
    p.add_argument("--bottom", type=int, default=0, metavar="K",
                   help="smallest (most negative) eigenvalues with eigenvectors (default: 0)")
    p.add_argument("--tol", type=float, default=1e-3, metavar="T",
                   help="relative tolerance of the eigenvalues (Lanczos, ARPACK's residual test; 0: machine precision; default: 1e-3)")
    p.add_argument("--trace", action="store_true", help="estimate the trace by Hutch++ with its standard error")
    p.add_argument("--trace-matvecs", type=int, default=99, metavar="M", help="HVPs of the trace estimate (default: 99)")
    p.add_argument("--density", action="store_true",
                   help="spectral density by stochastic Lanczos quadrature, with a figure FILE_density.png")
    p.add_argument("--steps", type=int, default=80, metavar="M", help="Lanczos steps per density run (default: 80)")
    p.add_argument("--runs", type=int, default=1, metavar="R", help="density runs (random starts; default: 1)")
    p.add_argument("--per-layer", action="store_true", help="also the top/bottom eigenvalues of each module's block")
    p.add_argument("--directions", default=None, metavar="PICKS",
                   help="eigenvectors saved as FILE.directions.safetensors: top,top (the two largest; default), "
                        "top,bottom (largest and most negative) or top")
    p.add_argument("--seed", type=int, default=0, help="seed of the Lanczos starts and the random probes (default: 0)")
    p.set_defaults(func=run)
    return p


def add_hessian_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--dtype", choices=c.DTYPES, help="evaluate in this precision (default: the model's)")
    p.add_argument("--tensors", metavar="PATTERN",
                   help="the Hessian of these parameters only (shell patterns, e.g. 'fc1.*' or 'conv*.weight,fc2.*')")
    p.add_argument("--hvp", choices=HVP_CHOICES, default="auto",
                   help="Hessian-vector products: auto (the faster of the two on a probe), forward-over-reverse "
                        "(torch.func) or double-backward")


def check_args(args: argparse.Namespace) -> None:
    """Argument errors that need no model: one line each."""
    from ..errors import LossmapError

    for value, option in ((args.top, "--top"), (args.bottom, "--bottom")):
        if value < 0:
            raise LossmapError(f"{option} {value} must be 0 or more")
    if not args.tol >= 0:
        raise LossmapError(f"--tol {args.tol} must be 0 or more (a relative tolerance)")
    if args.trace and args.trace_matvecs < 3:
        raise LossmapError(f"--trace-matvecs {args.trace_matvecs} must be at least 3 (Hutch++ sketches with a third)")
    if args.density:
        c.check_positive(args.steps, "--steps")
        c.check_positive(args.runs, "--runs")
    if not (args.top or args.bottom or args.trace or args.density or args.per_layer):
        raise LossmapError("nothing to compute: ask for --top/--bottom eigenvalues, --trace, --density or --per-layer")
    c.check_positive(args.samples, "--samples")
    c.check_positive(args.batch_size, "--batch-size")


def objective_for(args: argparse.Namespace, model, data, device: str, tensor_filter: str | None = None,
                  include_buffers: bool = False):
    """``(objective, ranks)``: the objective of the command's options on this rank's share of the data; ``ranks``
    is the torchrun context (None for a single process)."""
    from ..curvature.shards import join, shard
    from ..landscape import _dtype
    from ..objective import Objective

    ranks = join(device)
    samples = args.samples
    if ranks is not None:
        data, samples, device = shard(data, ranks.rank, ranks.world, samples), None, ranks.device
    output = args.output
    if output is not None and output.lstrip("-").isdigit():
        output = int(output)
    objective = Objective(
        model, data, args.loss, metrics={}, output_transform=output, tensor_filter=tensor_filter,
        include_buffers=include_buffers, device=device,
        dtype=_dtype(args.dtype), batch_size=args.batch_size, samples=samples, cache=args.cache,
        memory_budget=args.memory_budget, allow_nondeterministic=args.allow_nondeterministic,
    )
    return objective, ranks


def reducer(objective, ranks):
    """The sum over the torchrun ranks of ``objective``'s HVPs (None for a single process)."""
    if ranks is None:
        return None
    from ..curvature.shards import RankSum

    return RankSum(ranks.group, objective.source.total)


def run(args: argparse.Namespace) -> int:
    from ..errors import LossmapError
    from ..files import check_output

    check_args(args)
    out = check_output(args.out, "h.nc")
    device = c.check_device(args.device)
    from ..curvature.results import parse_picks

    picks = parse_picks(args.directions) if args.directions else None
    for end, i in picks or []:  # before the work, not after it
        if i >= (args.top if end == "top" else args.bottom):
            raise LossmapError(f"--directions {args.directions} takes {end} eigenvector {i + 1}: pass --{end} {i + 1} or more")
    if out.exists() and not args.overwrite:
        raise LossmapError(f"{str(out)!r} exists: pass --overwrite to replace it, or choose another --out")
    import logging

    from ..curvature.analysis import spectrum_of
    from ..curvature.results import load_spectrum, save_spectrum, sibling
    from ..plot.spectrum import density_figure
    from ..distributed import is_primary
    from ..plot.static import save_figure
    from ..space import tensor_hash

    model = c.build_model(args.model, args.checkpoint)
    data = c.load_data(args.data)
    objective, ranks = objective_for(args, model, data, device, args.tensors)
    say = (lambda line: print(line, flush=True)) if is_primary() else (lambda line: None)
    if args.allow_nondeterministic:
        logging.getLogger("lossmap").warning("--allow-nondeterministic: the Hessian-vector products are not checked for determinism")
    reduce = reducer(objective, ranks)
    with c.Timer() as t:
        spectrum = spectrum_of(
            objective, top=args.top, bottom=args.bottom, tol=args.tol,
            trace_matvecs=args.trace_matvecs if args.trace else None,
            density_steps=args.steps if args.density else None, density_runs=args.runs, per_layer=args.per_layer,
            seed=args.seed, method=args.hvp, reduce=reduce, probe=not args.allow_nondeterministic,
            say=say,
        )
    if not is_primary():
        return 0
    samples = reduce.total if reduce is not None else objective.source.total
    attrs = dict(loss=objective.loss.name, data=args.data, samples=int(samples), model=args.model,
                 checkpoint=args.checkpoint or "", dtype=str(objective.theta0[objective.names[0]].dtype).replace("torch.", ""),
                 device=str(objective.device), ranks=ranks.world if ranks is not None else 1,
                 theta0_sha256=tensor_hash(objective.theta0), tensor_filter=args.tensors or "", seconds=round(t.seconds, 3))
    written = save_spectrum(spectrum, out, picks=picks, tensor_filter=args.tensors,
                            origin_sha256=tensor_hash(objective.theta0), attrs=attrs)
    if spectrum.density is not None:  # drawn from the file, as lossmap plot draws it
        fig = density_figure(load_spectrum(written["spectrum"]))
        written["figure"] = save_figure(fig, sibling(out, "_density"), ["png"])[0]
    print(summary(spectrum, written, t.seconds))
    return 0


def summary(spectrum, written: dict, seconds: float) -> str:
    """``wrote h.nc (…)`` and one line per other file."""
    lines = [f"wrote {written['spectrum']} ({spectrum.size:,} parameters; {spectrum.hvps} HVPs by {spectrum.hvp_method}; "
             f"{seconds:.1f} s)"]
    if spectrum.layers:
        lines.append("per layer: " + "; ".join(
            f"{name} λmax {s.top[0]:.4g}" + (f", λmin {s.bottom[0]:.4g}" if s.bottom.size else "")
            for name, s in spectrum.layers.items() if s.top.size))
    for key in ("eigenvectors", "directions", "figure"):
        if key in written:
            lines.append(f"wrote {written[key]}")
    return "\n".join(lines)
