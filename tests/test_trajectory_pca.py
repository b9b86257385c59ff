"""The plane of a run against independent oracles: a planted plane, numpy's SVD of the stacked offsets,
the model's own loss at a checkpoint, and the process's peak memory."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lossmap.errors import LossmapError
from lossmap.trajectory import Recorder, load_origin, load_run, plane_axes, trajectory_plane
from lossmap.trajectory.pca import CHUNK_VALUES


def mlp(dtype=torch.float64) -> nn.Module:
    """5,440 parameters; the first weight (2,000 values) is cut in pieces when chunk_values is small."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 100), nn.Tanh(), nn.Linear(100, 30), nn.Tanh(), nn.Linear(30, 10)).to(dtype)


def flat_of(model: nn.Module) -> np.ndarray:
    return np.concatenate([p.detach().double().reshape(-1).numpy() for p in model.parameters()])


def set_flat(model: nn.Module, vec: np.ndarray) -> None:
    at = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(vec[at : at + p.numel()].reshape(p.shape)))
            at += p.numel()


def record(folder: Path, model: nn.Module, vectors: np.ndarray, steps=None) -> Path:
    rec = Recorder(folder)
    for i, vec in enumerate(vectors):
        set_flat(model, vec)
        rec.save(model, step=int(steps[i]) if steps is not None else 10 * i)
    return folder


def plane_matrix(plane) -> np.ndarray:
    """The two directions as columns of a P × 2 float64 matrix, in parameter order."""
    return np.stack([np.concatenate([d[n].double().reshape(-1).numpy() for n in plane.names])
                     for d in plane.directions.tensors], axis=1)


# ---- planted plane ------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["final", "initial", "mean"])
@pytest.mark.parametrize("chunk_values", [1 << 21, 1])
def test_planted_plane_is_recovered(tmp_path, origin, chunk_values):
    model = mlp()
    theta = flat_of(model)
    rng = np.random.default_rng(1)
    uv, _ = np.linalg.qr(rng.normal(size=(theta.size, 2)))  # random orthonormal u, v
    M = 12
    ab = rng.normal(size=(M, 2)) * np.array([3.0, 1.0])
    ab[-1] = 0.0  # the final checkpoint is θ_T
    record(tmp_path / "run", model, theta + ab @ uv.T)

    plane = trajectory_plane(tmp_path / "run", origin=origin, chunk_values=chunk_values)
    Q = plane_matrix(plane)
    assert np.abs(Q.T @ Q - np.eye(2)).max() < 1e-12  # orthonormal
    cosines = np.linalg.svd(Q.T @ uv, compute_uv=False)  # principal angles between the planes
    assert cosines.min() >= 1 - 1e-10
    run = plane.runs[0]
    assert np.abs(run.residuals).max() <= 1e-10
    assert plane.explained == pytest.approx(1.0, abs=1e-12)

    # oracle coordinates: the principal axes of the planted 2-D points, around the same origin
    ref = {"final": ab[-1], "initial": ab[0], "mean": ab.mean(axis=0)}[origin]
    pts = ab - ref
    _, R = np.linalg.eigh(pts.T @ pts)
    expected = pts @ R[:, ::-1]
    expected *= np.sign(expected[-1] - expected[0])  # documented: the run moves towards + on both axes
    np.testing.assert_allclose(run.coords, expected, rtol=0, atol=1e-10 * np.abs(pts).max())
    assert np.all(run.coords[-1] - run.coords[0] > 0)
    # θ_o + aᵢu₁ + bᵢu₂ is the checkpoint itself
    origin_vec = np.concatenate([plane.origin_tensors[n].double().reshape(-1).numpy() for n in plane.names])
    rebuilt = origin_vec + run.coords @ Q.T
    np.testing.assert_allclose(rebuilt, theta + ab @ uv.T, rtol=0, atol=1e-10)
    assert plane.directions.labels[0].startswith("PC1 (") and plane.directions.kind == "trajectory"


# ---- the Gram route equals numpy's SVD of the stacked offsets ------------------------------------------


def small(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(30, 50), nn.Tanh(), nn.Linear(50, 4)).to(dtype)  # 1,754 parameters


def svd_oracle(stack: np.ndarray, origin_vec: np.ndarray):
    D = stack - origin_vec
    U, s, Vt = np.linalg.svd(D, full_matrices=False)
    coords = U[:, :2] * s[:2]
    proj = D @ Vt[:2].T @ Vt[:2]
    norms = np.linalg.norm(D, axis=1)
    resid = np.where(norms > 0, np.linalg.norm(D - proj, axis=1) / np.where(norms > 0, norms, 1), 0.0)
    return s**2, Vt[:2], coords, resid


@pytest.mark.parametrize("origin", ["final", "initial", "mean", "given"])
@pytest.mark.parametrize("chunk_values", [1 << 21, 1])
def test_gram_route_equals_numpy_svd(tmp_path, origin, chunk_values):
    model = small()
    rng = np.random.default_rng(2)
    base = flat_of(model)
    stack = base + np.cumsum(rng.normal(size=(7, base.size)) * np.linspace(1, 0.2, 7)[:, None], axis=0)
    record(tmp_path / "run", model, stack)
    given = rng.normal(size=base.size)
    origin_vec = {"final": stack[-1], "initial": stack[0], "mean": stack.mean(axis=0), "given": given}[origin]
    if origin == "given":
        set_flat(model, given)
        origin_arg = {k: v.clone() for k, v in model.state_dict().items()}
    else:
        origin_arg = origin

    plane = trajectory_plane(tmp_path / "run", origin=origin_arg, chunk_values=chunk_values)
    lam, Vt, coords, resid = svd_oracle(stack, origin_vec)
    Q = plane_matrix(plane)
    for k in range(2):
        sign = np.sign(Q[:, k] @ Vt[k])
        np.testing.assert_allclose(Q[:, k], sign * Vt[k], rtol=0, atol=1e-10)
        np.testing.assert_allclose(plane.runs[0].coords[:, k], sign * coords[:, k], rtol=0, atol=1e-10 * np.abs(coords).max())
    np.testing.assert_allclose(plane.eigenvalues[: lam.size], lam, rtol=1e-10, atol=1e-10 * lam[0])
    assert plane.explained == pytest.approx((lam[0] + lam[1]) / lam.sum(), rel=1e-12)
    np.testing.assert_allclose(plane.runs[0].residuals, resid, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(plane.runs[0].distances, np.linalg.norm(stack - origin_vec, axis=1), rtol=1e-12)
    if origin in ("final", "initial"):
        assert plane.runs[0].residuals[-1 if origin == "final" else 0] == 0.0  # the origin checkpoint


def test_two_runs_share_one_frame(tmp_path):
    model = small()
    rng = np.random.default_rng(4)
    base = flat_of(model)
    a = base + np.cumsum(rng.normal(size=(5, base.size)), axis=0)
    b = base + np.cumsum(rng.normal(size=(6, base.size)), axis=0)
    a[0] = b[0] = base  # one initialization
    record(tmp_path / "sgd", model, a)
    record(tmp_path / "adam", model, b, steps=[0, 1, 2, 4, 8, 16])
    plane = trajectory_plane([tmp_path / "sgd", tmp_path / "adam"], origin="initial", labels=["SGD", "Adam"])
    lam, Vt, coords, resid = svd_oracle(np.concatenate([a, b]), base)
    Q = plane_matrix(plane)
    signs = np.sign(np.sum(Q * Vt.T, axis=0))
    np.testing.assert_allclose(Q, Vt.T * signs, atol=1e-10)
    assert [r.label for r in plane.runs] == ["SGD", "Adam"]
    np.testing.assert_array_equal(plane.runs[1].steps, [0, 1, 2, 4, 8, 16])
    np.testing.assert_allclose(np.concatenate([r.coords for r in plane.runs]), coords * signs, atol=1e-10 * np.abs(coords).max())
    np.testing.assert_allclose(np.concatenate([r.residuals for r in plane.runs]), resid, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(plane.runs[0].coords[0], [0, 0], atol=1e-12)


def test_float32_run_gives_float32_directions_matching_float64_oracle(tmp_path):
    model = small(torch.float32)
    rng = np.random.default_rng(5)
    base = flat_of(model)
    stack = (base + np.cumsum(rng.normal(size=(6, base.size)), axis=0)).astype(np.float32).astype(np.float64)
    record(tmp_path / "run", model, stack)
    plane = trajectory_plane(tmp_path / "run")
    assert all(t.dtype == torch.float32 for d in plane.directions.tensors for t in d.values())
    _, Vt, coords, _ = svd_oracle(stack, stack[-1])
    Q = plane_matrix(plane)
    np.testing.assert_allclose(np.abs(Q.T @ Vt.T), np.eye(2), atol=1e-6)


def test_directions_fit_compute_and_the_plane_passes_through_the_checkpoints(tmp_path):
    import lossmap
    from safetensors.torch import load_file

    model = small(torch.float32)
    rng = np.random.default_rng(6)
    base = flat_of(model)
    uv, _ = np.linalg.qr(rng.normal(size=(base.size, 2)))
    ab = rng.normal(size=(5, 2))
    ab[-1] = 0
    record(tmp_path / "run", model, base + ab @ uv.T)
    plane = trajectory_plane(tmp_path / "run")
    x = torch.randn(64, 30, generator=torch.Generator().manual_seed(0))
    y = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    net = load_origin(small(torch.float32), plane)
    a, b = plane.runs[0].coords[1]
    ds = lossmap.compute(net, torch.utils.data.TensorDataset(x, y), x=[a], y=[b], directions=plane.directions)
    probe = small(torch.float32)
    probe.load_state_dict(load_file(str(load_run(tmp_path / "run").paths[1])))
    with torch.no_grad():
        truth = float(nn.MSELoss()(probe(x), y))  # the default loss for float targets
    assert float(ds["loss"].values.ravel()[0]) == pytest.approx(truth, rel=1e-5)


# ---- memory ---------------------------------------------------------------------------------------------


_PEAK = """
import sys
from lossmap.trajectory import trajectory_plane

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith(key + ":"))

with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # the peak RSS (VmHWM) restarts from the current RSS
before = status("VmRSS")
plane = trajectory_plane(sys.argv[1])
print(status("VmHWM") - before, plane.explained)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_memory_stays_within_a_few_models(tmp_path):
    """40 checkpoints of 2M float32 parameters (8 MiB each); M × P would be 320 MiB in float32. The plane
    is computed in a fresh process, so that no memory freed earlier hides what it allocates."""
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import save_file

    P1, P2, M = 1_500_000, 500_000, 40
    folder = tmp_path / "big"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    base_a, base_b = torch.randn(P1, generator=g), torch.randn(P2, generator=g)
    step_a, step_b = torch.randn(P1, generator=g), torch.randn(P2, generator=g)
    entries = []
    for i in range(M):
        state = {"a.weight": base_a + (i % 7) * step_a + i * 1e-3, "b.weight": base_b * (1 + 0.01 * i) + step_b * math.sin(i)}
        save_file(state, str(folder / f"s{i}.safetensors"))
        entries.append({"step": i, "file": f"s{i}.safetensors"})
    (folder / "manifest.json").write_text(json.dumps({"format": "lossmap.run", "format_version": 1, "checkpoints": entries}))
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _PEAK, str(folder)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    peak, explained = (float(v) for v in out.stdout.split())
    model_bytes = 4 * (P1 + P2)
    assert explained > 0.5
    # the plane keeps 3 models (origin, u₁, u₂); a pass adds its block of float64 pieces and scratch
    bound = 3 * model_bytes + 3 * 8 * CHUNK_VALUES
    assert peak < bound, f"peak {peak / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB, M × P is {M * model_bytes / 2**20:.0f} MiB"


# ---- bad input ------------------------------------------------------------------------------------------


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def test_bad_runs_and_origins_are_one_line_errors(tmp_path):
    model = small()
    base = flat_of(model)
    rng = np.random.default_rng(7)
    record(tmp_path / "two", model, base + rng.normal(size=(2, base.size)))
    with pytest.raises(LossmapError) as exc:
        trajectory_plane(tmp_path / "two")
    assert "at least 3" in one_line(exc)
    record(tmp_path / "still", model, np.stack([base] * 4))
    with pytest.raises(LossmapError) as exc:
        trajectory_plane(tmp_path / "still")
    assert "did not move" in one_line(exc)
    line = base + np.outer(np.arange(5.0), rng.normal(size=base.size))
    record(tmp_path / "line", model, line)
    with pytest.raises(LossmapError) as exc:
        trajectory_plane(tmp_path / "line")
    assert "one line" in one_line(exc)
    good = record(tmp_path / "good", model, base + rng.normal(size=(4, base.size)))
    with pytest.raises(LossmapError) as exc:
        trajectory_plane(good, origin="centre")
    assert "'centre'" in one_line(exc)
    with pytest.raises(LossmapError) as exc:
        trajectory_plane(good, origin={"0.weight": torch.zeros(3)})
    assert "0.weight" in one_line(exc)
    with pytest.raises(LossmapError) as exc:
        trajectory_plane(good, tensor_filter="conv*")
    assert "conv*" in one_line(exc)
    other = nn.Sequential(nn.Linear(30, 50), nn.Tanh(), nn.Linear(50, 5)).double()
    record(tmp_path / "other", other, flat_of(other) + rng.normal(size=(3, flat_of(other).size)))
    with pytest.raises(LossmapError) as exc:
        trajectory_plane([good, tmp_path / "other"])
    assert "other" in one_line(exc) and "2.weight" in str(exc.value)


def test_plane_axes_cover_every_checkpoint_with_the_margin():
    coords = [np.array([[-4.0, 1.0], [-1.0, 2.0]]), np.array([[2.0, -1.0]])]
    x, y = plane_axes(coords, points=(31, 21), margin=0.1)
    assert x == "-4.6:2.6:31" and y == "-1.3:2.3:21"
    x, y = plane_axes(np.array([[1.0, 0.0], [3.0, 0.0]]), points=5, margin=0.5)  # a flat y gets x's margin
    assert x == "-1.5:4.5:5" and y == "-1.5:1.5:5"
    with pytest.raises(LossmapError):
        plane_axes(np.array([[np.nan, 0.0]]))
