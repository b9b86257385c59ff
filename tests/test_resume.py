"""Incremental output, resuming and crash safety of compute(out=...).

The oracle is always an uninterrupted run of the same settings: a resumed run must equal it bit for bit
(np.array_equal, NaN-free), and a file left by an interruption must hold exactly the finished points.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lossmap
from lossmap import distributed, store
from lossmap.directions import target_directions
from lossmap.errors import LossmapError
from lossmap.landscape import Interrupted


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def _data(n: int = 48, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


class Tripwire:
    """A metric (mean output) that counts its calls and raises KeyboardInterrupt at call ``at``."""

    def __init__(self, at: int | None = None) -> None:
        self.at, self.calls = at, 0

    def __call__(self, out: torch.Tensor, batch) -> torch.Tensor:
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise KeyboardInterrupt
        return out.mean()


GRID2 = dict(x="-1:1:7", y="-0.5:0.5:4")  # 28 points, non-square
#: before any point, the first batch goes once through the model, the loss and the metrics (the probe that turns
#: a mistake in them into one clear line)
PROBE = 1
#: a run with points to evaluate first makes one pass at θ0 (3 batches of 16): the paired errors' reference
CENTRE = 3


def _run(model=None, data=None, metric=None, **kw):
    kw = {**GRID2, "chunk": 3, "batch_size": 16, **kw}
    metrics = {"accuracy": lossmap.accuracy, "mean_out": metric or Tripwire()}
    return lossmap.compute(model or _model(), data or _data(), metrics=metrics, **kw)


def _assert_same(a, b, names=("loss", "accuracy", "mean_out")):
    for name in names:
        assert np.array_equal(a[name].values, b[name].values), name
        assert np.isfinite(a[name].values).all()


@pytest.mark.parametrize("engine", ["plain", "fast", "vmap"])  # vmap evaluates a chunk's points together
def test_interrupt_saves_finished_points_and_resume_is_bitwise(tmp_path, engine):
    ref = _run(engine=engine)
    out = tmp_path / "run.nc"
    # 3 batches per point; the metric trips in the middle of point 11 (chunk 4 of 3-point chunks)
    trip = Tripwire(at=PROBE + CENTRE + 3 * 10 + 2)
    with pytest.raises(Interrupted, match=r"interrupted; 9 of 28 points saved in .*run.nc; rerun the same command to resume"):
        _run(metric=trip, out=out, engine=engine)
    part = store.load(out)
    mask = store.done_mask(part)
    assert store.progress(part) == (9, 28) and not store.is_complete(part)
    assert part.attrs["points_done"] == 9 and part.attrs["points_total"] == 28
    # the first three chunks of the serpentine order are done, nothing else
    order = lossmap.grid.Grid.from_specs(GRID2["x"], GRID2["y"]).serpentine()
    expect = np.zeros(28, bool)
    expect[order[:9]] = True
    assert np.array_equal(mask.reshape(-1), expect)
    for name in ("loss", "accuracy", "mean_out"):
        assert np.array_equal(part[name].values[mask], ref[name].values[mask])
        assert np.isnan(part[name].values[~mask]).all()
    # the directions were written beside it with the first points
    assert store.directions_path(out).exists()

    again = Tripwire()
    ds = _run(metric=again, out=out, engine=engine)
    assert again.calls == PROBE + CENTRE + 3 * (28 - 9)  # only the missing points were evaluated
    _assert_same(ds, ref)
    final = store.load(out)
    _assert_same(final, ref)
    assert store.is_complete(final) and store.DONE not in final.variables
    assert list(final.data_vars) == ["loss", "accuracy", "mean_out"]  # the mask never shows up as a metric


def test_resume_of_an_interpolation(tmp_path):
    a, b = _model(0), _model(5)
    data = _data()
    dirs = target_directions(a, b)
    kw = dict(x="-0.5:1.5:11", y=None, directions=dirs, chunk=2, batch_size=16)
    ref = _run(a, data, **kw)
    out = tmp_path / "line.nc"
    with pytest.raises(Interrupted, match=r"; 4 of 11 points saved"):
        _run(a, data, metric=Tripwire(at=PROBE + CENTRE + 3 * 5 + 1), out=out, **kw)
    ds = _run(a, data, out=out, **kw)
    _assert_same(ds, ref)
    assert store.meta(store.load(out))["markers"] == {"A": [0.0], "B": [1.0]}


def test_cleared_done_bits_are_recomputed_and_done_points_are_kept(tmp_path):
    ref = _run()
    out = tmp_path / "run.nc"
    _run(out=out)
    ds = store.load(out)
    mask = np.ones((7, 4), bool)
    mask[0, 1] = mask[3, 2] = mask[6, 2] = False
    poked = ds.copy(deep=True)
    poked["loss"][5, 0] = 123.0  # a done point: a resumed run must not touch it
    store.save(store.partial_dataset(poked, mask), out)
    assert store.progress(store.load(out)) == (25, 28)

    count = Tripwire()
    res = _run(metric=count, out=out)
    # each cleared point lies in its own 3-point chunk, which is evaluated whole
    assert count.calls == PROBE + CENTRE + 3 * 3 * 3
    assert res.loss.values[5, 0] == 123.0
    expect = ref.loss.values.copy()
    expect[5, 0] = 123.0
    assert np.array_equal(res.loss.values, expect)
    assert np.array_equal(res.accuracy.values, ref.accuracy.values)


def test_complete_file_is_returned_without_evaluating(tmp_path, capsys):
    out = tmp_path / "run.nc"
    first = _run(out=out)
    before = out.stat().st_mtime_ns
    count = Tripwire()
    again = _run(metric=count, out=out, progress=True)
    assert count.calls == PROBE  # the probe batch, no point
    _assert_same(again, first)
    assert out.stat().st_mtime_ns == before  # not rewritten
    assert "is complete (28 points): nothing to compute" in capsys.readouterr().err


def test_overwrite_starts_over(tmp_path):
    out = tmp_path / "run.nc"
    _run(out=out, seed=0)
    with pytest.raises(LossmapError, match="seed"):
        _run(out=out, seed=1)
    ds = _run(out=out, seed=1, overwrite=True)
    _assert_same(ds, _run(seed=1))
    assert store.meta(store.load(out))["seed"] == 1


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(seed=3), "seed"),
        (dict(seed=3), "directions_sha256"),
        (dict(normalization="layer"), "normalization"),
        (dict(bias="filter"), "bias_policy"),
        (dict(x="-1:1:9"), "x (file: 7 points from -1 to 1, step 0.333333, now: 9 points from -1 to 1, step 0.25)"),
        (dict(y="-1:1:4"), "y (file: 4 points from -0.5 to 0.5, step 0.333333, now: 4 points from -1 to 1, step 0.666667)"),
        (dict(samples=40), "samples (file: 48, now: 40)"),
        (dict(dtype="float64"), "dtype (file: float32, now: float64)"),
        (dict(data_description="digits:test"), "data ("),
        (dict(model=_model(7)), "theta0_sha256"),
        (dict(data=_data(seed=2)), "data_sha256"),
        (dict(bn="recompute"), "bn_policy"),
        (dict(loss_fn=lambda out, target: out.square().mean()), "loss_function (file: cross_entropy, now: test_resume.<lambda> sha256:"),
        (dict(loss_fn="nll"), "loss_function (file: cross_entropy, now: nll)"),
        (dict(output_transform=lambda out: out * 2), "output_transform (file: none, now: test_resume.<lambda> sha256:"),
        (dict(forward=lambda model, batch: model(batch[0])), "forward_function (file: the model's, now: test_resume.<lambda>"),
        (dict(metric=lambda out, target: out.mean()), "mean_out: test_resume.<lambda> sha256:"),
    ],
)
def test_other_settings_are_refused_naming_the_field(tmp_path, change, field):
    out = tmp_path / "run.nc"
    _run(out=out)
    before = out.read_bytes()
    with pytest.raises(LossmapError) as info:
        _run(out=out, **change)
    message = str(info.value)
    assert field in message and "was made with other settings" in message and "--overwrite" in message
    assert "\n" not in message
    assert out.read_bytes() == before  # the refused run left the file alone


def test_other_metrics_are_refused(tmp_path):
    out = tmp_path / "run.nc"
    _run(out=out)
    with pytest.raises(LossmapError, match=r"metrics \(file: loss, accuracy, mean_out, now: loss, other\)"):
        lossmap.compute(_model(), _data(), **GRID2, chunk=3, batch_size=16, metrics={"other": Tripwire()}, out=out)


def _loss_a(out, target):
    return torch.nn.functional.cross_entropy(out, target)


def _loss_b(out, target):
    return torch.nn.functional.cross_entropy(out, target, label_smoothing=0.1)


def _weighted(out, target, weight):
    return weight * torch.nn.functional.cross_entropy(out, target)


_LAMBDA_LOSS = lambda out, target: torch.nn.functional.cross_entropy(out, target) * 2
_OTHER_LAMBDA = lambda out, target: torch.nn.functional.cross_entropy(out, target) * 3
_SAME_IN_A_CALL = dict(fn=lambda o, b: o.sum(), n=1)["fn"]
_SAME_IN_A_LIST = [0, 2, lambda o, b: o.sum()][2]
_DOUBLED_IN_A_CALL = dict(fn=lambda o, b: o.sum() * 2, n=1)["fn"]


@pytest.mark.parametrize(
    "first, same, other",
    [
        (_loss_a, _loss_a, _loss_b),
        (_LAMBDA_LOSS, _LAMBDA_LOSS, _OTHER_LAMBDA),
        (functools.partial(_weighted, weight=0.5), functools.partial(_weighted, weight=0.5), functools.partial(_weighted, weight=2.0)),
    ],
    ids=["function", "lambda", "partial"],
)
def test_another_loss_function_is_refused_and_the_same_one_resumes(tmp_path, first, same, other):
    out = tmp_path / "run.nc"
    ref = _run(loss_fn=first)
    with pytest.raises(Interrupted, match="; 9 of 28 points saved"):
        _run(loss_fn=first, metric=Tripwire(at=PROBE + CENTRE + 3 * 10 + 2), out=out)
    before = out.read_bytes()
    with pytest.raises(LossmapError) as info:
        _run(loss_fn=other, out=out)
    message = str(info.value)
    differing = message.split("was made with other settings: ")[1].split("; rerun with")[0]
    assert differing.startswith("loss_function (file: ") and ";" not in differing  # the only difference
    assert "--overwrite" in message
    assert "\n" not in message and out.read_bytes() == before
    count = Tripwire()
    ds = _run(loss_fn=same, metric=count, out=out)  # an equal but separately made function resumes
    assert count.calls == PROBE + CENTRE + 3 * (28 - 9)
    _assert_same(ds, ref, ("loss", "mean_out"))


def test_another_metric_or_forward_function_is_refused(tmp_path):
    out = tmp_path / "run.nc"

    def forward(model, batch):
        return model(batch[0])

    def other_forward(model, batch):
        return model(batch[0]).double().float()

    _run(out=out, forward=forward)
    _run(out=out, forward=forward)  # the same function: complete, nothing to do
    with pytest.raises(LossmapError, match=r"settings: forward_function \(file: test_resume\.test_another_metric_or_forward_function_is_refused\.<locals>\.forward sha256:[0-9a-f]{12}…, now: .*other_forward sha256:[0-9a-f]{12}…\);"):
        _run(out=out, forward=other_forward)
    with pytest.raises(LossmapError, match=r"settings: metric_functions \(file: \{accuracy: .*, mean_out: test_resume\.Tripwire sha256:[0-9a-f]{12}…\}, now: \{accuracy: .*, mean_out: .*<lambda>"):
        _run(out=out, forward=forward, metric=lambda o, b: o.mean())
    with pytest.raises(LossmapError, match=r"settings: forward_function \(file: .*forward sha256:[0-9a-f]{12}…, now: the model's\);"):
        _run(out=out)


def test_callable_identity_of_every_kind_of_callable():
    from lossmap.fingerprint import callable_identity

    class Scaled:
        def __init__(self, k):
            self.k = k

        def __call__(self, out, batch):
            return out.mean() * self.k

        def method(self, out, batch):
            return out.sum()

    pair = [lambda o, b: o.sum(), lambda o, b: o.mean()]  # two lambdas on one line are told apart
    namespace: dict = {}
    exec("def nosource(o, b):\n    return o.sum()\n", namespace)  # no file to read the source from
    kinds = {
        "default": None,
        "function": _loss_a,
        "lambda": _LAMBDA_LOSS,
        "lambda 1": pair[0],
        "lambda 2": pair[1],
        "partial": functools.partial(_weighted, weight=0.5),
        "partial with a tensor": functools.partial(_weighted, weight=torch.tensor(0.5)),
        "partial with a callable": functools.partial(_weighted, weight=Scaled(1)),
        "partial of a lambda": functools.partial(_LAMBDA_LOSS),
        "callable object": Scaled(2),
        "bound method": Scaled(2).method,
        "builtin": torch.sum,
        "builtin method": "x".upper,
        "torch loss module": nn.CrossEntropyLoss(),
        "no source": namespace["nosource"],
    }
    ids = {kind: callable_identity(fn) for kind, fn in kinds.items()}
    assert ids["default"] is None
    named = {k: v for k, v in ids.items() if v is not None}
    assert len(set(named.values())) == len(named), ids  # all different
    assert ids["function"].startswith("test_resume._loss_a sha256:") and len(ids["function"].split(":")[1]) == 64
    assert ids["lambda 1"].startswith("test_resume.test_callable_identity_of_every_kind_of_callable.<locals>.<lambda> sha256:")
    assert ids["partial"].startswith("functools.partial(test_resume._weighted) sha256:")
    assert ids["callable object"].startswith("test_resume.test_callable_identity_of_every_kind_of_callable.<locals>.Scaled sha256:")
    assert ids["bound method"].startswith("test_resume.test_callable_identity_of_every_kind_of_callable.<locals>.Scaled.method sha256:")
    assert ids["builtin"] == "torch._VariableFunctionsClass.sum" and ids["builtin method"] == "str.upper"
    assert ids["torch loss module"].startswith("torch.nn.modules.loss.CrossEntropyLoss sha256:")
    assert ids["no source"].startswith("nosource sha256:")
    # the same again, made anew, is the same; only the source counts, not an object's state
    assert callable_identity(Scaled(5)) == ids["callable object"]
    assert callable_identity(functools.partial(_weighted, weight=0.5)) == ids["partial"]
    assert callable_identity(functools.partial(_weighted, weight=torch.tensor(0.5))) == ids["partial with a tensor"]
    assert callable_identity(functools.partial(_weighted, weight=0.25)) != ids["partial"]
    assert callable_identity(functools.partial(functools.partial(_weighted), weight=0.5)) == ids["partial"]  # Python flattens it
    # a lambda is its code, not the line around it: the same lambda passed in two different calls is the same
    assert callable_identity(_SAME_IN_A_CALL) == callable_identity(_SAME_IN_A_LIST) != callable_identity(_DOUBLED_IN_A_CALL)


def test_files_that_cannot_be_resumed(tmp_path):
    foreign = tmp_path / "plain.nc"
    ds = _run()
    del ds.attrs["settings"]
    lossmap.save(ds, None, foreign)
    with pytest.raises(LossmapError, match="does not record the settings.*--overwrite"):
        _run(out=foreign)
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"not a landscape")
    with pytest.raises(LossmapError, match="cannot read landscape file.*--overwrite"):
        _run(out=junk)
    _assert_same(_run(out=junk, overwrite=True), ds)


@pytest.mark.parametrize("every, expected", [(4, [4, 8, 12, 16, 20, 22]), (1, list(range(2, 23, 2)))])
def test_flush_every_points(tmp_path, caplog, every, expected):
    caplog.set_level(logging.INFO, logger="lossmap")
    _run(out=tmp_path / "run.nc", x="-1:1:22", y=None, chunk=2, flush_every=every, flush_seconds=1e9)
    saved = [int(r.getMessage().split()[1]) for r in caplog.records if r.getMessage().startswith("saved ")]
    assert saved == expected


def test_flush_seconds_zero_writes_every_chunk(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lossmap")
    _run(out=tmp_path / "run.nc", x="-1:1:9", y=None, chunk=4, flush_every=10**6, flush_seconds=0)
    saved = [int(r.getMessage().split()[1]) for r in caplog.records if r.getMessage().startswith("saved ")]
    assert saved == [4, 8, 9]  # nothing is written before the first point is finished


def test_bad_flush_and_chunk_values():
    with pytest.raises(LossmapError, match="flush every 0 points"):
        _run(flush_every=0)
    with pytest.raises(LossmapError, match="flush every -1 seconds"):
        _run(flush_seconds=-1)
    with pytest.raises(LossmapError, match="chunk 0"):
        _run(chunk=0)


def test_an_error_in_the_middle_keeps_finished_points(tmp_path):
    out = tmp_path / "run.nc"

    def broken(out_, target, calls=[0]):  # noqa: B006 - a counter
        calls[0] += 1
        if calls[0] > PROBE + CENTRE + 3 * 7:
            raise LossmapError("metric broke")
        return out_.mean()

    with pytest.raises(LossmapError, match="metric broke"):
        lossmap.compute(_model(), _data(), **GRID2, chunk=3, batch_size=16, metrics={"mean_out": broken}, out=out)
    assert store.progress(store.load(out)) == (6, 28)


def test_stale_temporaries_are_removed(tmp_path):
    out = tmp_path / "run.nc"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".run.nc.{dead.pid}.tmp"
    stale.write_bytes(b"half")
    live = tmp_path / f".run.nc.{os.getppid()}.tmp"  # a running process's file stays
    live.write_bytes(b"busy")
    _run(out=out)
    assert not stale.exists() and live.exists()


def test_deal_is_balanced_and_covers_every_chunk():
    pending = [0, 2, 3, 5, 8, 9, 10]
    for world in (1, 2, 3, 7, 9):
        rounds = distributed.deal(pending, world)
        taken = [c for r in rounds for c in r if c >= 0]
        assert sorted(taken) == pending and len(taken) == len(set(taken))
        per_rank = [sum(r[k] >= 0 for r in rounds) for k in range(world)]
        assert max(per_rank) - min(per_rank) <= 1
        assert all(len(r) == world for r in rounds)


def test_single_process_ignores_world_size_one(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.setup("cpu") is None and distributed.is_primary()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "1")
    assert not distributed.is_primary()
    with pytest.raises(LossmapError, match="MASTER_ADDR.*torchrun"):
        distributed.setup("cpu")


# --------------------------------------------------------------------------- killed processes

SCRIPT = textwrap.dedent(
    """
    import logging, sys, torch
    from torch import nn
    import lossmap

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(512, 20, generator=g), torch.randint(0, 4, (512,), generator=g))
    out = sys.argv[1] if sys.argv[1] != "-" else None
    ds = lossmap.compute(model, data, x="-1:1:13", y="-1:1:11", chunk=3, batch_size=64, out=out,
                         flush_every=1, flush_seconds=0)
    if out is None:
        lossmap.save(ds, None, sys.argv[2])
    print("finished", flush=True)
    """
)


def _start(script: Path, *args: str) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return proc, lines, reader


def _wait_for(lines: list[str], proc: subprocess.Popen, prefix: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not any(line.startswith(prefix) for line in lines):
        if proc.poll() is not None and not any(line.startswith(prefix) for line in lines):
            time.sleep(0.2)
            if any(line.startswith(prefix) for line in lines):
                return
            raise AssertionError(f"process ended ({proc.returncode}) before {prefix!r}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"no {prefix!r} within {timeout}s")
        time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted_run(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    ref_path = tmp_path / "ref.nc"
    proc, lines, reader = _start(script, "-", str(ref_path))
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    ref = store.load(ref_path)

    out = tmp_path / "run.nc"
    # time one full run with output, to spread the kills over it
    proc, lines, reader = _start(script, str(out))
    _wait_for(lines, proc, "evaluating 143 of 143 points")
    t0 = time.monotonic()
    assert proc.wait(timeout=120) == 0
    full = time.monotonic() - t0
    _assert_same(store.load(out), ref, ("loss", "accuracy"))
    out.unlink()

    rng = np.random.default_rng(20261127)
    previous, partial_seen = 0, 0
    for attempt in range(6):
        proc, lines, reader = _start(script, str(out))
        _wait_for(lines, proc, "saved " if attempt == 0 else "resuming" if previous < 143 else "finished")
        time.sleep(rng.uniform(0.0, 0.35 * full))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        reader.join(timeout=10)
        reported = max([int(line.split()[1]) for line in lines if line.startswith("saved ")] or [0])
        ds = store.load(out)  # opens after every kill
        done, total = store.progress(ds)
        assert total == 143 and done >= reported and done >= previous
        mask = store.done_mask(ds)
        for name in ("loss", "accuracy"):
            assert np.array_equal(ds[name].values[mask], ref[name].values[mask])
            assert np.isnan(ds[name].values[~mask]).all()
        partial_seen += done < total
        previous = done
    assert partial_seen >= 2, "the kills all came too late to test anything"

    proc, lines, reader = _start(script, str(out))
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    reader.join(timeout=10)
    final = store.load(out)
    assert store.is_complete(final)
    _assert_same(final, ref, ("loss", "accuracy"))
    assert not list(tmp_path.glob(".run.nc.*.tmp"))


@pytest.mark.slow
def test_sigterm_saves_and_says_so(tmp_path):
    script = tmp_path / "run.py"
    text = SCRIPT.replace("flush_every=1, flush_seconds=0", "flush_every=10**6, flush_seconds=1e9")
    script.write_text(text.replace('x="-1:1:13", y="-1:1:11"', 'x="-1:1:61", y="-1:1:41"'))
    out = tmp_path / "run.nc"
    proc, lines, reader = _start(script, str(out))
    _wait_for(lines, proc, "evaluating 2501 of 2501 points")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    err = proc.stderr.read()
    assert "Terminated: terminated (SIGTERM); " in err and "points saved in" in err
    n = int(err.split("terminated (SIGTERM); ")[1].split()[0])
    assert 0 < n < 2501
    assert store.progress(store.load(out)) == (n, 2501)


# --------------------------------------------------------------------------- the command line

def _cli(argv, capsys):
    from lossmap.cli import main

    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_rerun_reports_complete_and_refuses_other_settings(cli_env, capsys):
    root, base = cli_env
    rc, out, err = _cli(base, capsys)
    assert rc == 0, err
    first = store.load(root / "o.nc")
    rc, out, err = _cli(base, capsys)
    assert rc == 0 and "o.nc is complete (15 points): nothing to compute" in err
    for extra, field in ((["--seed", "4"], "seed (file: 0, now: 4)"), (["--normalization", "layer"], "normalization"),
                         (["--samples", "20"], "samples (file: 40, now: 20)")):
        rc, out, err = _cli(base + extra, capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("lossmap: error: ") and field in lines[0], err
    rc, out, err = _cli(base + ["--flush-every", "0"], capsys)
    assert rc == 2 and "flush every 0 points" in err
    _assert_same(store.load(root / "o.nc"), first, ("loss", "accuracy"))


def test_cli_ctrl_c_says_how_many_points_were_saved_and_rerun_resumes(cli_env, capsys, monkeypatch):
    import lossmap.objective as objective

    root, base = cli_env
    rc, _, err = _cli(base[:-1] + [str(root / "ref.nc")], capsys)
    assert rc == 0, err
    real = objective.make_engine

    def tripping(*args, **kwargs):
        ev = real(*args, **kwargs)
        inner, calls = ev.evaluate_stats, [0]  # what a run calls per chunk: the metrics and their errors

        def evaluate_stats(coeffs):
            calls[0] += 1
            if calls[0] == 2:
                raise KeyboardInterrupt
            return inner(coeffs)

        ev.evaluate_stats = evaluate_stats
        return ev

    monkeypatch.setattr(objective, "make_engine", tripping)
    rc, out, err = _cli(base + ["--flush-every", "100"], capsys)
    lines = err.strip().splitlines()
    assert rc == 130
    assert lines[-1].endswith(f"lossmap: interrupted; 8 of 15 points saved in {root / 'o.nc'}; rerun the same command to resume")
    monkeypatch.setattr(objective, "make_engine", real)
    rc, out, err = _cli(base, capsys)
    assert rc == 0 and "resuming" in err and "8 of 15 points are done, 7 to go" in err
    _assert_same(store.load(root / "o.nc"), store.load(root / "ref.nc"), ("loss", "accuracy"))


def test_a_second_writer_is_refused_and_no_lock_file_stays(tmp_path):
    out = tmp_path / "run.nc"
    with store.writer_lock(out):  # as another run would hold it
        with pytest.raises(LossmapError, match="another lossmap run is writing .*run.nc.* right now"):
            _run(out=out)
        assert (tmp_path / ".run.nc.lock").exists()  # the holder's lock stays
    assert not out.exists()
    _run(out=out)
    with pytest.raises(LossmapError, match="seed"):
        _run(out=out, seed=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.directions.safetensors", "run.nc"]


def test_points_whose_value_is_nan_or_inf_count_as_done(tmp_path):
    out = tmp_path / "run.nc"
    calls = [0]

    def wild(outputs, target):
        calls[0] += 1
        return torch.tensor(float("nan") if calls[0] % 2 else float("inf"))

    kw = dict(x="-1:1:6", chunk=2, batch_size=48, out=out)
    calls[0] = -PROBE - 1  # the probe's and the pass at θ0's calls are numbers -1 and 0: the points' calls are 1…6
    first = lossmap.compute(_model(), _data(), metrics={"wild": wild}, **kw)
    assert calls[0] == 6 and np.isnan(first.wild.values[::2]).all() and np.isinf(first.wild.values[1::2]).all()
    again = lossmap.compute(_model(), _data(), metrics={"wild": wild}, **kw)
    assert calls[0] == 6 + PROBE  # a NaN or inf value is a finished point, not a missing one
    assert np.array_equal(again.wild.values, first.wild.values, equal_nan=True)
    assert store.is_complete(store.load(out))


def test_a_resumed_run_keeps_the_files_chunking(tmp_path, monkeypatch):
    out = tmp_path / "run.nc"
    with pytest.raises(Interrupted, match="; 8 of 28 points saved"):
        _run(metric=Tripwire(at=PROBE + CENTRE + 3 * 9 + 1), out=out, chunk=4)
    assert store.load(out).attrs["chunk"] == 4
    seen = []
    import lossmap.objective as objective

    real = objective.make_engine

    def spy(*args, **kwargs):
        ev = real(*args, **kwargs)
        inner = ev.evaluate_stats  # what a run calls per chunk: the metrics and their errors
        ev.evaluate_stats = lambda coeffs: (seen.append(len(coeffs)), inner(coeffs))[1]
        return ev

    monkeypatch.setattr(objective, "make_engine", spy)
    ds = _run(out=out, chunk=3)
    assert seen == [4] * 5  # the 20 missing points in the file's chunks of 4, not in chunks of 3
    _assert_same(ds, _run(chunk=4))


def test_every_setting_is_compared_on_resume(tmp_path):
    """The settings stored in a file are exactly the fields a resume compares (none silently skipped)."""
    from lossmap.landscape import SETTINGS_FIELDS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    ds = lossmap.compute(model, (torch.randn(8, 3), torch.zeros(8, dtype=torch.long)), "-1:1:3", out=tmp_path / "s.nc")
    assert set(store.meta(ds)["settings"]) == set(SETTINGS_FIELDS)
    settings = store.meta(ds)["settings"]
    assert settings["loss_function"] == "cross_entropy" and settings["loss_convention"] == 2  # the default, by name
    assert settings["metric_functions"] is None and settings["forward_function"] is None


def test_a_file_from_before_bf16_was_recorded_still_resumes(tmp_path):
    """A file whose settings lack a field added later (bf16) resumes with its default, and not with another value."""
    kw = dict(**GRID2, chunk=3, batch_size=16)
    ref = lossmap.compute(_model(), _data(), **kw)
    out = tmp_path / "old.nc"
    ds = lossmap.compute(_model(), _data(), **kw, out=out)
    settings = dict(store.meta(ds)["settings"])
    del settings["bf16"]
    ds.attrs["settings"] = settings
    mask = np.ones((7, 4), bool)
    mask[2:5, 1] = False
    store.save(store.partial_dataset(ds, mask), out)
    with pytest.raises(LossmapError, match=r"settings: bf16 \(file: not recorded, now: true\);"):
        lossmap.compute(_model(), _data(), **kw, out=out, bf16=True)
    again = lossmap.compute(_model(), _data(), **kw, out=out)
    _assert_same(again, ref, ("loss", "accuracy"))


def test_a_file_of_the_old_loss_convention_loads_but_is_not_resumed(tmp_path):
    """lossmap 0.1 called loss_fn(outputs, batch) and summed MSE over outputs: its files load and plot, but a
    resume across the change is refused with one line naming the convention."""
    kw = dict(**GRID2, chunk=3, batch_size=16)
    out = tmp_path / "old.nc"
    ds = lossmap.compute(_model(), _data(), **kw, out=out)
    settings = {k: v for k, v in store.meta(ds)["settings"].items()
                if k not in ("loss_convention", "loss_function", "metric_functions", "forward_function", "output_transform")}
    ds.attrs["settings"] = settings
    mask = np.ones((7, 4), bool)
    mask[2:5, 1] = False
    store.save(store.partial_dataset(ds, mask), out)
    assert store.progress(lossmap.load(out)) == (25, 28)
    with pytest.raises(LossmapError, match=r"loss_convention \(file: 1, lossmap 0\.1: loss_fn\(outputs, batch\).*now: 2\)") as info:
        lossmap.compute(_model(), _data(), **kw, out=out)
    assert "\n" not in str(info.value) and "--overwrite" in str(info.value)


def test_numpy_batches_enter_the_data_hash(tmp_path):
    """Batches holding numpy arrays are hashed by content, so other data is not taken for the same."""
    from lossmap.data.batches import Batch
    from lossmap.data.source import Cached

    def batches_hash(batches):
        return Cached(batches).fingerprint()

    a = [Batch((np.zeros(3), 1), None, None, 3)]
    b = [Batch((np.ones(3), 1), None, None, 3)]
    assert batches_hash(a) != batches_hash(b)
    assert batches_hash(a) == batches_hash([Batch((np.zeros(3), 1), None, None, 3)])
