"""The ``--connect`` part of ``lossmap demo``: two seed CNNs from different seeds, their barriers before and
after permutation alignment, and a trained low-loss curve between them on its plane.

Model A is the demo's trained CNN (seed s); model B is trained the same way from seed s + 1 (its own
initialization, batch order and dropout). Files (in the demo folder): ``trained_seed<s+1>.safetensors``,
``connect.nc`` (+ ``connect.aligned.safetensors``, ``connect.spec.json``), ``connect_barriers.png/.pdf``,
``curve.bend.safetensors``, ``curve.nc``, ``curve_plane.nc``, ``curve.png/.pdf``,
``curve_profile.png/.pdf`` and the report ``connect.html``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class ConnectSettings:
    alphas: int
    refine: int
    samples: int  # the first samples of each data set, for the barriers, the curve and the plane
    curve_epochs: int
    curve_lr: float
    points: int
    grid: int


SETTINGS = {
    "full": ConnectSettings(alphas=25, refine=3, samples=500, curve_epochs=6, curve_lr=0.02, points=61, grid=15),
    "quick": ConnectSettings(alphas=7, refine=1, samples=120, curve_epochs=2, curve_lr=0.02, points=15, grid=7),
}


def _train_b(mode: str, seed: int, train_data, test_data, out: Path, say: Callable[[str], None]):
    from ..models import MnistCNN, save_checkpoint
    from ..train import seeded, train
    from .demo import MAIN

    epochs, batch, opt, lr = MAIN[mode]
    with seeded(seed + 1):
        model = MnistCNN()
    say(f"    connect: training model B from seed {seed + 1} ({opt} lr={lr:g}, batch {batch}, {epochs} epoch(s))")
    res = train(model, train_data, test_data, epochs=epochs, batch_size=batch, optimizer=opt, lr=lr, seed=seed + 1,
                progress=True)
    say(f"    model B: train accuracy {res.train_accuracy:.2%}, test accuracy {res.test_accuracy:.2%}")
    return model, save_checkpoint(model, out / f"trained_seed{seed + 1}.safetensors"), res


def _curve(a, b, train_data, s: ConnectSettings, seed: int, out: Path, say: Callable[[str], None]):
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from ..connect import train_curve
    from ..connect.curve_eval import bend_state, curve_plane, evaluate_curve, save_curve
    from ..connect.files import save_state

    say(f"    connect: training the Bezier bend between A and B on digits:train ({s.curve_epochs} epoch(s), sgd lr={s.curve_lr:g})")
    loader = DataLoader(train_data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    curve = train_curve(a, a, b, loader, F.cross_entropy, epochs=s.curve_epochs, lr=s.curve_lr, seed=seed)
    bend = bend_state(a, a, curve)
    save_state(bend, out / "curve.bend.safetensors")
    say(f"    connect: the curve and the segment at {s.points} values of t, the plane on a {s.grid}-point grid")
    ds = evaluate_curve(a, a, b, bend, train_data, points=s.points, samples=s.samples)
    ds.attrs.update(data="digits:train", bend_checkpoint="curve.bend.safetensors", train_losses=list(curve.losses),
                    training=dict(curve.settings, kind="bezier", train_batch_size=64))
    save_curve(ds, out / "curve.nc")
    plane = curve_plane(a, a, b, bend, train_data, points=s.grid, samples=s.samples, out=out / "curve_plane.nc",
                        overwrite=True, data_description="digits:train", progress=True).landscape()
    return ds, plane


def run_connect(out: Path, mode: str, seed: int, model_a, train_data, test_data, say: Callable[[str], None]):
    """Train B, measure the barriers, train and draw the curve. Returns ``(summary lines, figures, report)``."""
    from ..connect import barrier_table, connect, save_connection
    from ..models import MnistCNN
    from ..plot.connect import barrier_figure, plot_curve_plane, plot_curve_profile
    from ..plot.connect_html import connect_sections
    from ..plot.interactive import write_report
    from ..plot.static import save_figure
    from .curve import curve_summary

    s = SETTINGS[mode]
    model_b, path_b, res_b = _train_b(mode, seed, train_data, test_data, out, say)
    say(f"    connect: barriers A ↔ B before and after alignment ({s.alphas} α + {s.refine} refinement rounds)")
    sets = {"digits:train": train_data, "digits:test": test_data}
    conn = connect(MnistCNN(), model_a, model_b, sets, alphas=s.alphas, refine=s.refine, align="weights", seed=seed,
                   samples=s.samples, log_fn=lambda line: say(f"    {line}"))
    save_connection(conn, out / "connect.nc")
    curve, plane = _curve(model_a, model_b, train_data, s, seed, out, say)
    figures = save_figure(barrier_figure(conn.dataset), out / "connect_barriers", ("png", "pdf"))
    figures += save_figure(plot_curve_plane(plane, curve)[0], out / "curve", ("png", "pdf"))
    figures += save_figure(plot_curve_profile(curve)[0], out / "curve_profile", ("png", "pdf"))
    report = write_report([plane], out / "connect.html", titles=["plane through A, B and the bend"],
                          sections=connect_sections(conn.dataset, plane, curve))
    return _summary(conn.dataset, curve, path_b, res_b, s) + ["", barrier_table(conn.dataset), "", curve_summary(curve)], figures, report


def _summary(ds, curve, path_b: Path, res_b, s: ConnectSettings) -> list[str]:
    lines = ["", f"connectivity (model B: {path_b.name}, {res_b.describe()}; the first {s.samples} samples of each data set):",
             f"model_b_test_accuracy = {res_b.test_accuracy:.4f}"]
    for name, key in (("digits:train", "train"), ("digits:test", "test")):
        for path in (str(p) for p in ds["path"].values):
            for q in (str(v) for v in ds["quantity"].values):
                h = float(ds["barrier"].sel(path=path, data=name, quantity=q, definition="frankle"))
                lines.append(f"{path}_{q}_barrier_{key} = {h:.6g}")
    for path in ("curve", "line"):
        lines.append(f"{path}_max_loss = {float(curve['peak'].sel(path=path, quantity='loss')):.6g}")
    return lines
