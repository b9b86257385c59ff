"""Fixtures shared by test modules."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

NETS = textwrap.dedent(
    """
    from torch import nn

    def tiny():
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    """
)


@pytest.fixture(scope="module")
def one_thread():
    """One thread for a module of tiny tensors (an OpenMP region on a busy machine costs more than the work)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def cli_files(tmp_path) -> list[str]:
    """A tiny model factory, a checkpoint of it and an npz data set in ``tmp_path``; the command-line
    options that name them (``--model``, ``--checkpoint``, ``--data``)."""
    import torch

    from lossmap.models import load_model, save_checkpoint

    (tmp_path / "nets.py").write_text(NETS)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.normal(size=(40, 16)).astype(np.float32), y=rng.integers(0, 3, 40))
    spec = f"{tmp_path / 'nets.py'}:tiny"
    torch.manual_seed(0)
    save_checkpoint(load_model(spec), tmp_path / "theta.safetensors")  # without it each run's θ0 is a new random net
    return ["--model", spec, "--checkpoint", str(tmp_path / "theta.safetensors"), "--data", f"npz:{tmp_path / 'data.npz'}"]


@pytest.fixture()
def cli_env(tmp_path, cli_files) -> tuple[Path, list[str]]:
    """``(folder, argv)``: the arguments of a small ``surface`` run (5 × 3 points) of :func:`cli_files`'
    model that writes ``folder/o.nc``."""
    return tmp_path, ["surface", *cli_files, "--x", "-1:1:5", "--y", "-1:1:3", "--out", str(tmp_path / "o.nc")]


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> Path:
    """The folder ``lossmap demo --quick --compare`` wrote, made once per test session. Read it, do not write
    into it (tests that run commands beside it copy it first)."""
    from lossmap.cli import main

    out = tmp_path_factory.mktemp("demo") / "lossmap-demo"
    assert main(["demo", "--quick", "--compare", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def executed_quickstart(tmp_path_factory) -> tuple[Path, BaseException | None]:
    """``examples/quickstart.ipynb`` run top to bottom in a fresh kernel (in an empty folder), once per session:
    ``(the executed copy, the error that stopped it or None)``. The site is built from this copy."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    import json

    root = Path(__file__).resolve().parents[1]
    folder = tmp_path_factory.mktemp("notebook")
    nb = nbformat.read(root / "examples" / "quickstart.ipynb", as_version=4)
    error = None
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    except Exception as exc:  # noqa: BLE001 - the notebook test reports it
        error = exc
    out = folder / "quickstart.executed.ipynb"
    out.write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")
    return out, error
