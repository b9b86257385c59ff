"""``lossmap demo``: the whole seed workflow on the embedded digits data, in one folder.

Trains the seed CNN (seeded), recording its training run on a log-spaced schedule
(``training-run/``), then computes and draws the 1-D interpolation init → trained
(Goodfellow et al. 2015), a 1-D and a 2-D filter-normalized random slice around the trained model
(Li et al. 2018) and the plane of the training trajectory with its path (``trajectory.nc``,
``trajectory.png``, ``trajectory.gif``), writes PNG + PDF figures, an HTML report and ``summary.txt``.
``--compare`` also trains two variants (SGD small batch vs Adam large batch) and draws their planes
side by side.
``--connect`` also trains a second CNN from seed + 1 and measures mode connectivity between the two
(:mod:`lossmap.commands.demo_connect`).
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    p.add_argument("--connect", action="store_true",
                   help="also train a second CNN from seed+1 and show the barriers between the two before and after "
                        "permutation alignment, and a trained low-loss curve between them on its plane")
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

    demo = Demo(out=_prepare_folder(Path(args.out)), mode="quick" if args.quick else "full", seed=args.seed,
                train_data=digits("train"), test_data=digits("test"))
    demo.say(f"lossmap demo ({demo.mode}) → {demo.out}/   torch threads: {torch.get_num_threads()}")
    init, model, result = demo.train_main()
    interp, line, plane = demo.landscapes(init, model)
    if args.compare:
        demo.compare_variants(init)
    traj = demo.trajectory()
    connected = None
    if args.connect:
        from .demo_connect import run_connect

        connected = run_connect(demo.out, demo.mode, demo.seed, model, demo.train_data, demo.test_data, demo.say)
    animation = demo.draw(interp, line, plane, traj)
    demo.write_summary(result, [("interpolation", interp), ("slice1d", line), ("plane", plane)], traj, connected,
                       animation)
    return 0


@dataclass
class Demo:
    """One demo run: its folder, size and data, and what it has made so far (landscapes, figures, reports)."""

    out: Path
    mode: str  # "full" or "quick"
    seed: int
    train_data: Any
    test_data: Any
    files: list = field(default_factory=list)  # (what, path, dataset) of every landscape
    figures: list = field(default_factory=list)
    reports: list = field(default_factory=list)
    compared: list = field(default_factory=list)  # (name, training result, dataset) of --compare's variants
    started: float = field(default_factory=time.perf_counter)
    n_params: int = 0  # of the seed CNN, once trained

    @staticmethod
    def say(text: str) -> None:
        print(text, flush=True)

    @property
    def grids(self) -> Grids:
        return GRIDS[self.mode]

    @property
    def eval_text(self) -> str:
        n = len(self.test_data) if self.grids.samples is None else min(self.grids.samples, len(self.test_data))
        return f"digits:test ({n} of {len(self.test_data)} samples)"

    def compute(self, model, path: str, what: str, **grid):
        """A landscape of ``model`` on the test split into ``out/path``, listed in the summary as ``what``."""
        from ..landscape import compute

        ds = compute(model, self.test_data, samples=self.grids.samples, data_description="digits:test", progress=True,
                     overwrite=True, out=self.out / path, **grid)
        self.files.append((what, self.out / path, ds))
        return ds

    def train_main(self):
        """The seed CNN from its seeded init, trained while its run is recorded: ``(init, trained, result)``."""
        from ..models import MnistCNN, save_checkpoint
        from ..train import seeded, train

        with seeded(self.seed):
            init = MnistCNN()
        save_checkpoint(init, self.out / "init.safetensors")
        model = copy.deepcopy(init)
        epochs, batch, opt, lr = MAIN[self.mode]
        self.n_params = sum(p.numel() for p in model.parameters())
        self.say(f"1/6 training the seed CNN ({self.n_params:,} parameters) on "
                 f"digits:train ({len(self.train_data)} images), {opt} lr={lr:g}, batch {batch}, {epochs} epoch(s)")
        steps = epochs * -(-len(self.train_data) // batch)
        recorder = _recorder(self.out / RUN_FOLDER, steps, TRAJECTORY[self.mode].checkpoints, model, lr)
        self.say(f"    recording {len(recorder.schedule.steps)} checkpoints (log-spaced steps 0…{steps}) in {RUN_FOLDER}/")
        result = train(model, self.train_data, self.test_data, epochs=epochs, batch_size=batch, optimizer=opt, lr=lr,
                       seed=self.seed, progress=True, log=self.say,
                       on_step=lambda step, loss: recorder.save(model, step=step, lr=lr, loss=loss,
                                                                epoch=step / (steps / epochs)))
        self.say(f"    train accuracy {result.train_accuracy:.2%}, test accuracy {result.test_accuracy:.2%} "
                 f"({result.seconds:.0f} s)")
        save_checkpoint(model, self.out / "trained.safetensors")
        return init, model, result

    def landscapes(self, init, model):
        """The interpolation init → trained, and the 1-D and 2-D random slices around the trained model."""
        from ..directions import target_directions

        g = self.grids
        self.say(f"2/6 interpolation init → trained, α ∈ {g.interpolation} on {self.eval_text}")
        interp = self.compute(init, "interpolation.nc", "1-D interpolation init → trained (Goodfellow et al. 2015)",
                              x=g.interpolation, directions=target_directions(init, model, names=("init", "trained")))
        self.say(f"3/6 1-D filter-normalized random slice around the trained model, α ∈ {g.line}")
        line = self.compute(model, "slice1d.nc", "1-D filter-normalized random slice (Li et al. 2018)",
                            x=g.line, seed=self.seed)
        self.say(f"4/6 2-D filter-normalized random plane around the trained model, α, β ∈ {g.plane}")
        plane = self.compute(model, "plane.nc", "2-D filter-normalized random plane (Li et al. 2018)",
                             x=g.plane, y=g.plane, seed=self.seed)
        return interp, line, plane

    def compare_variants(self, init) -> None:
        """--compare: the two variants trained from the same init, each with its plane."""
        from ..models import save_checkpoint
        from ..train import train

        for name, epochs, batch, opt, lr in VARIANTS[self.mode]:
            variant = copy.deepcopy(init)
            self.say(f"    compare: training variant {name} ({opt} lr={lr:g}, batch {batch}, {epochs} epoch(s))")
            res = train(variant, self.train_data, self.test_data, epochs=epochs, batch_size=batch, optimizer=opt,
                        lr=lr, seed=self.seed, progress=True)
            self.say(f"    {name}: train accuracy {res.train_accuracy:.2%}, test accuracy {res.test_accuracy:.2%}")
            save_checkpoint(variant, self.out / f"{name}.safetensors")
            ds = self.compute(variant, f"plane_{name}.nc", f"2-D filter-normalized plane of variant {name}",
                              x=self.grids.plane, y=self.grids.plane, seed=self.seed)
            self.compared.append((name, res, ds))

    def trajectory(self):
        """The plane of the recorded training run, with the path on it."""
        from ..models import MnistCNN
        from ..trajectory import trajectory_landscape

        points = TRAJECTORY[self.mode].points
        self.say(f"5/6 the plane of the training trajectory ({RUN_FOLDER}/), {points}×{points} points covering the "
                 f"path, on {self.eval_text}")
        traj = trajectory_landscape(MnistCNN(), self.out / RUN_FOLDER, self.test_data, points=points,
                                    out=self.out / "trajectory.nc", samples=self.grids.samples,
                                    data_description="digits:test", progress=True, overwrite=True)
        self.files.append(("plane of the training trajectory (top two principal directions, origin: trained)",
                           self.out / "trajectory.nc", traj))
        return traj

    def draw(self, interp, line, plane, traj) -> Path:
        """Figures (PNG + PDF), the path's animation and the reports. Returns the animation's path."""
        from ..plot import static
        from ..trajectory import animate, read_paths

        self.say("6/6 figures (PNG + PDF), animation, report and summary")
        for stem, ds in (("interpolation", interp), ("slice1d", line), ("plane", plane)):
            self.figures += static.plot_all(ds, self.out / stem, ("png", "pdf"))
        self.figures += static.save_figure(static.figure(traj, "trajectory"), self.out / "trajectory", ("png", "pdf"))
        animation = animate(traj, read_paths(traj), self.out / "trajectory.gif", dpi=TRAJECTORY[self.mode].dpi)
        if self.compared:
            fig = static.plot_compare([ds for _, _, ds in self.compared], titles=[
                f"{name} (test acc {res.test_accuracy:.1%})" for name, res, _ in self.compared])
            self.figures += static.save_figure(fig, self.out / "compare", ("png", "pdf"))
        try:
            from ..plot.interactive import write_report
        except ImportError:  # the interactive report is optional
            return animation
        self.reports.append(write_report([interp, line, plane, traj], self.out / "report.html",
                                         titles=["interpolation init → trained", "random slice 1-D",
                                                 "random plane 2-D", "training trajectory"]))
        if self.compared:
            self.reports.append(write_report([ds for _, _, ds in self.compared], self.out / "compare.html",
                                             titles=[name for name, _, _ in self.compared]))
        return animation

    def write_summary(self, result, keyed: list, traj, connected, animation: Path) -> None:
        """summary.txt, and the closing line."""
        elapsed = time.perf_counter() - self.started
        lines = [
            f"lossmap demo ({self.mode}), seed {self.seed}, {elapsed:.0f} s in all",
            "",
            f"model: seed CNN (lossmap.models.MnistCNN, {self.n_params:,} parameters)",
            f"training: digits:train ({len(self.train_data)} images), {result.describe()}",
            f"train_accuracy = {result.train_accuracy:.4f}",
            f"test_accuracy = {result.test_accuracy:.4f}",
            "checkpoints: init.safetensors (random init), trained.safetensors (trained)",
            f"evaluation data: {self.eval_text}",
            "",
            "landscapes (loss and accuracy at every grid point; open with lossmap info / lossmap.load):",
        ]
        for what, path, ds in self.files:
            shape = "×".join(str(n) for n in ds["loss"].shape)
            lines.append(f"  {path.name}: {what}; {shape} points; loss {_range(ds, 'loss')}; accuracy {_range(ds, 'accuracy')}")
        for key, ds in keyed:  # stored by compute()
            lines.append(f"{key}_loss_min = {ds.attrs.get('summary_min', float('nan')):.6g}")
            lines.append(f"{key}_loss_max = {ds.attrs.get('summary_max', float('nan')):.6g}")
        for name, res, _ in self.compared:
            lines.append(f"{name}_test_accuracy = {res.test_accuracy:.4f}   ({res.describe()})")
        lines += _trajectory_lines(traj)
        if connected is not None:
            lines += connected[0]
            self.figures += connected[1]
            self.reports.append(connected[2])
        lines += ["", "figures (PNG and PDF):"]
        lines += [f"  {p.name}" for p in self.figures if p.suffix == ".png"]
        lines += ["", "animation of the training path over its plane:", f"  {animation.name}"]
        if self.reports:
            lines += ["", "interactive report (opens offline in a browser):"] + [f"  {p.name}" for p in self.reports]
        lines += ["", f"everything is in {self.out.resolve()}"]
        (self.out / "summary.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        plane = dict(keyed)["plane"]
        reports = ", " + ", ".join(p.name for p in self.reports) if self.reports else ""
        self.say(f"wrote {len(self.figures)} figures, {len(self.files)} landscapes{reports} and summary.txt to "
                 f"{self.out}/ in {elapsed:.0f} s (test accuracy {result.test_accuracy:.2%}; plane loss "
                 f"{_range(plane, 'loss')})")


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
