"""Make the figures of docs/uncertainty.md: docs/images/uncertainty_*.png.

    .venv/bin/python docs/uncertainty_images.py      # after make demo (uses lossmap-demo/trained.safetensors)

Without the demo's checkpoint the seed CNN is trained here for one epoch on the embedded digits (seed 0).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"


def model():
    from lossmap.data import digits
    from lossmap.models import MnistCNN, load_checkpoint
    from lossmap.train import seeded, train

    ckpt = ROOT / "lossmap-demo" / "trained.safetensors"
    with seeded(0):
        net = MnistCNN()
    if ckpt.is_file():
        return load_checkpoint(net, ckpt)
    train(net, digits("train"), epochs=1, batch_size=32, optimizer="adam", lr=1e-3, seed=0)
    return net


def main() -> int:
    import lossmap
    from lossmap.data import digits
    from lossmap.plot.static import save_figure
    from lossmap.plot.uncertainty import plot_contour_noise, plot_seeds, plot_summaries

    net = model().eval()
    data = digits("test")
    IMAGES.mkdir(parents=True, exist_ok=True)
    plane = lossmap.compute(net, data, x="-1:1:13", y="-1:1:13", seed=0, samples=200)
    fig, _ = plot_contour_noise(plane)
    written = save_figure(fig, IMAGES / "uncertainty_masked.png")
    seeds = lossmap.compute(net, data, x="-1:1:9", y="-1:1:9", seeds="0:8", samples=200)
    written += save_figure(plot_seeds(seeds), IMAGES / "uncertainty_seeds.png")
    written += save_figure(plot_summaries([seeds], ["trained seed CNN"]), IMAGES / "uncertainty_summary.png")
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
