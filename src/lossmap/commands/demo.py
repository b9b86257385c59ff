"""``lossmap demo``: the whole seed workflow on the embedded digits data, in one folder.

Trains the seed CNN (seeded), recording its training run on a log-spaced schedule
(``training-run/``), then computes and draws the 1-D interpolation init → trained
(Goodfellow et al. 2015), a 1-D and a 2-D filter-normalized random slice around the trained model
(Li et al. 2018) and the plane of the training trajectory with its path (``trajectory.nc``,
``trajectory.png``, ``trajectory.gif``), writes PNG + PDF figures, an HTML report and ``summary.txt``.
``--compare`` also trains two variants (SGD small batch vs Adam large batch) and draws their planes
side by side.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path

#: (epochs, batch size, optimizer, learning rate) of the main model; quick mode trains one epoch
MAIN = {"full": (3, 32, "adam", 1e-3), "quick": (1, 32, "adam", 2e-3)}
#: the two variants of ``--compare`` (same init, same data, same directions seed and grid)
VARIANTS = {
    "full": [("sgd-b8", 3, 8, "sgd", 0.01), ("adam-b256", 6, 256, "adam", 3e-3)],
    "quick": [("sgd-b8", 1, 8, "sgd", 0.01), ("adam-b256", 2, 256, "adam", 3e-3)],
}


@dataclass(frozen=True)
class Grids:
    interpolation: str
    line: str
    plane: str
    samples: int | None  # None: the whole test split


GRIDS = {
    "full": Grids(interpolation="-0.5:1.5:41", line="-1:1:51", plane="-1:1:25", samples=None),
    "quick": Grids(interpolation="-0.5:1.5:9", line="-1:1:11", plane="-1:1:7", samples=200),
}


@dataclass(frozen=True)
class Trajectory:
    checkpoints: int  # log-spaced steps recorded (plus step 0; steps that round alike are kept once)
    points: int  # per axis of the trajectory's plane
    dpi: int  # of the animation's frames


TRAJECTORY = {"full": Trajectory(checkpoints=24, points=17, dpi=80), "quick": Trajectory(checkpoints=8, points=5, dpi=40)}
RUN_FOLDER = "training-run"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="train the seed CNN on the embedded digits and draw its loss landscapes (a few minutes)",
        description=(
            "Train the seed CNN on the embedded digits data (seeded), keep the initial and trained checkpoints, "
            "compute the interpolation init → trained, a 1-D and a 2-D filter-normalized random slice around the "
            "trained model on the test split, and write all figures (PNG and PDF), an HTML report and summary.txt "
            "into --out. Existing demo files there are replaced."
        ),
    )
    p.add_argument("--out", default="lossmap-demo", metavar="DIR", help="output folder (default: lossmap-demo/)")
    p.add_argument("--quick", action="store_true", help="one epoch and coarse grids on 200 test samples (well under a minute)")
    p.add_argument("--compare", action="store_true",
                   help="also train SGD (batch 8) and Adam (batch 256) variants and draw their planes side by side")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialization, batch order and directions (default: 0)")
    p.set_defaults(func=run)
    return p


def _prepare_folder(out: Path) -> Path:
    import os

    from ..errors import LossmapError

    if out.exists() and not out.is_dir():
        raise LossmapError(f"--out {str(out)!r} is a file: give a folder for the demo's files")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LossmapError(f"cannot create output folder {str(out)!r} ({exc.strerror}): choose another --out") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise LossmapError(f"output folder {str(out)!r} is not writable: choose another --out")
    return out


def _range(ds, name: str) -> str:
    from ._common import range_text

    return range_text(ds[name].values) if name in ds else "-"


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import digits
    from ..directions import target_directions
    from ..landscape import compute
    from ..models import MnistCNN, save_checkpoint
    from ..plot import static
    from ..train import seeded, train
    from ..trajectory import animate, read_paths, trajectory_landscape

    mode = "quick" if args.quick else "full"
    grids = GRIDS[mode]
    out = _prepare_folder(Path(args.out))
    started = time.perf_counter()
    say = lambda text: print(text, flush=True)  # noqa: E731

    train_data, test_data = digits("train"), digits("test")
    n_eval = len(test_data) if grids.samples is None else min(grids.samples, len(test_data))
    eval_text = f"digits:test ({n_eval} of {len(test_data)} samples)"
    say(f"lossmap demo ({mode}) → {out}/   torch threads: {torch.get_num_threads()}")

    with seeded(args.seed):
        init = MnistCNN()
    init_path = save_checkpoint(init, out / "init.safetensors")
    model = copy.deepcopy(init)
    epochs, batch, opt, lr = MAIN[mode]
    n_params = sum(p.numel() for p in model.parameters())
    say(f"1/6 training the seed CNN ({n_params:,} parameters) on digits:train "
        f"({len(train_data)} images), {opt} lr={lr:g}, batch {batch}, {epochs} epoch(s)")
    steps = epochs * -(-len(train_data) // batch)
    recorder = _recorder(out / RUN_FOLDER, steps, TRAJECTORY[mode].checkpoints, model, lr)
    say(f"    recording {len(recorder.schedule.steps)} checkpoints (log-spaced steps 0…{steps}) in {RUN_FOLDER}/")
    result = train(model, train_data, test_data, epochs=epochs, batch_size=batch, optimizer=opt, lr=lr,
                   seed=args.seed, progress=True, log=say,
                   on_step=lambda step, loss: recorder.save(model, step=step, lr=lr, loss=loss,
                                                            epoch=step / (steps / epochs)))
    say(f"    train accuracy {result.train_accuracy:.2%}, test accuracy {result.test_accuracy:.2%} "
        f"({result.seconds:.0f} s)")
    trained_path = save_checkpoint(model, out / "trained.safetensors")

    common = dict(samples=grids.samples, data_description="digits:test", progress=True, overwrite=True)
    files: list[tuple[str, Path, object]] = []

    say(f"2/6 interpolation init → trained, α ∈ {grids.interpolation} on {eval_text}")
    d = target_directions(init, model, names=("init", "trained"))
    interp = compute(init, test_data, x=grids.interpolation, directions=d, out=out / "interpolation.nc", **common)
    files.append(("1-D interpolation init → trained (Goodfellow et al. 2015)", out / "interpolation.nc", interp))

    say(f"3/6 1-D filter-normalized random slice around the trained model, α ∈ {grids.line}")
    line = compute(model, test_data, x=grids.line, seed=args.seed, out=out / "slice1d.nc", **common)
    files.append(("1-D filter-normalized random slice (Li et al. 2018)", out / "slice1d.nc", line))

    say(f"4/6 2-D filter-normalized random plane around the trained model, α, β ∈ {grids.plane}")
    plane = compute(model, test_data, x=grids.plane, y=grids.plane, seed=args.seed, out=out / "plane.nc", **common)
    files.append(("2-D filter-normalized random plane (Li et al. 2018)", out / "plane.nc", plane))

    compared: list[tuple[str, object, object]] = []
    if args.compare:
        for name, v_epochs, v_batch, v_opt, v_lr in VARIANTS[mode]:
            variant = copy.deepcopy(init)
            say(f"    compare: training variant {name} ({v_opt} lr={v_lr:g}, batch {v_batch}, {v_epochs} epoch(s))")
            res = train(variant, train_data, test_data, epochs=v_epochs, batch_size=v_batch, optimizer=v_opt,
                        lr=v_lr, seed=args.seed, progress=True)
            say(f"    {name}: train accuracy {res.train_accuracy:.2%}, test accuracy {res.test_accuracy:.2%}")
            save_checkpoint(variant, out / f"{name}.safetensors")
            ds = compute(variant, test_data, x=grids.plane, y=grids.plane, seed=args.seed,
                         out=out / f"plane_{name}.nc", **common)
            files.append((f"2-D filter-normalized plane of variant {name}", out / f"plane_{name}.nc", ds))
            compared.append((name, res, ds))

    say(f"5/6 the plane of the training trajectory ({RUN_FOLDER}/), {TRAJECTORY[mode].points}×"
        f"{TRAJECTORY[mode].points} points covering the path, on {eval_text}")
    traj = trajectory_landscape(MnistCNN(), out / RUN_FOLDER, test_data, points=TRAJECTORY[mode].points,
                                out=out / "trajectory.nc", **common)
    files.append(("plane of the training trajectory (top two principal directions, origin: trained)",
                  out / "trajectory.nc", traj))

    say("6/6 figures (PNG + PDF), animation, report and summary")
    figures: list[Path] = []
    for stem, ds in (("interpolation", interp), ("slice1d", line), ("plane", plane)):
        figures += static.plot_all(ds, out / stem, ("png", "pdf"))
    figures += static.save_figure(static.figure(traj, "trajectory"), out / "trajectory", ("png", "pdf"))
    animation = animate(traj, read_paths(traj), out / "trajectory.gif", dpi=TRAJECTORY[mode].dpi)
    if compared:
        fig = static.plot_compare([ds for _, _, ds in compared], titles=[
            f"{name} (test acc {res.test_accuracy:.1%})" for name, res, _ in compared])
        figures += static.save_figure(fig, out / "compare", ("png", "pdf"))
    reports: list[Path] = []
    try:
        from ..plot.interactive import write_report
    except ImportError:  # the interactive report is optional
        write_report = None
    if write_report is not None:
        reports.append(write_report([interp, line, plane, traj], out / "report.html",
                                    titles=["interpolation init → trained", "random slice 1-D", "random plane 2-D",
                                            "training trajectory"]))
        if compared:
            reports.append(write_report([ds for _, _, ds in compared], out / "compare.html",
                                        titles=[name for name, _, _ in compared]))

    elapsed = time.perf_counter() - started
    lines = [
        f"lossmap demo ({mode}), seed {args.seed}, {elapsed:.0f} s in all",
        "",
        f"model: seed CNN (lossmap.models.MnistCNN, {n_params:,} parameters)",
        f"training: digits:train ({len(train_data)} images), {result.describe()}",
        f"train_accuracy = {result.train_accuracy:.4f}",
        f"test_accuracy = {result.test_accuracy:.4f}",
        f"checkpoints: {init_path.name} (random init), {trained_path.name} (trained)",
        f"evaluation data: {eval_text}",
        "",
        "landscapes (loss and accuracy at every grid point; open with lossmap info / lossmap.load):",
    ]
    for what, path, ds in files:
        shape = "×".join(str(n) for n in ds["loss"].shape)
        lines.append(f"  {path.name}: {what}; {shape} points; loss {_range(ds, 'loss')}; accuracy {_range(ds, 'accuracy')}")
    for key, ds in (("interpolation", interp), ("slice1d", line), ("plane", plane)):  # stored by compute()
        lines.append(f"{key}_loss_min = {ds.attrs.get('summary_min', float('nan')):.6g}")
        lines.append(f"{key}_loss_max = {ds.attrs.get('summary_max', float('nan')):.6g}")
    for name, res, _ in compared:
        lines.append(f"{name}_test_accuracy = {res.test_accuracy:.4f}   ({res.describe()})")
    lines += _trajectory_lines(traj)
    lines += ["", "figures (PNG and PDF):"]
    lines += [f"  {p.name}" for p in figures if p.suffix == ".png"]
    lines += ["", "animation of the training path over its plane:", f"  {animation.name}"]
    if reports:
        lines += ["", "interactive report (opens offline in a browser):"] + [f"  {p.name}" for p in reports]
    lines += ["", f"everything is in {out.resolve()}"]
    (out / "summary.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    say(f"wrote {len(figures)} figures, {len(files)} landscapes{', ' + ', '.join(p.name for p in reports) if reports else ''} "
        f"and summary.txt to {out}/ in {elapsed:.0f} s "
        f"(test accuracy {result.test_accuracy:.2%}; plane loss {_range(plane, 'loss')})")
    return 0


def _recorder(folder: Path, steps: int, count: int, model, lr: float):
    """A recorder of the main training run on a log-spaced schedule, its step 0 (the initialization) saved.
    A run recorded by an earlier demo in ``folder`` is replaced."""
    from ..trajectory import Recorder, Schedule
    from ..trajectory.run import MANIFEST

    if folder.is_dir():
        for old in [*folder.glob("step-*.safetensors"), folder / MANIFEST]:
            old.unlink(missing_ok=True)
    recorder = Recorder(folder, schedule=Schedule.log(1, steps, count))
    recorder.save(model, step=0, epoch=0.0, lr=lr)
    return recorder


def _trajectory_lines(ds) -> list[str]:
    """summary.txt's numbers of the trajectory's plane."""
    from ..trajectory import read_paths

    (path,) = read_paths(ds)
    return [
        f"trajectory_checkpoints = {len(path.steps)}",
        f"trajectory_explained = {float(ds.attrs['trajectory_explained']):.6g}",
        f"trajectory_residual_max = {float(path.residuals.max()):.6g}",
        f"trajectory_plane_loss_gap_max = {float(abs(path.plane['loss'] - path.checkpoint['loss']).max()):.6g}",
    ]
