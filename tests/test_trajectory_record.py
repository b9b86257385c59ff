"""Recording a run and reading it back: schedules, the manifest, atomic writes, and every bad run folder."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lossmap.errors import LossmapError
from lossmap.trajectory import Recorder, Schedule, load_run
from lossmap.trajectory.run import MANIFEST


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))


# ---- schedules ------------------------------------------------------------------------------------------


def test_schedules_keep_the_steps_they_name():
    every = Schedule.every(5)
    assert [s for s in range(23) if every.wants(s)] == [0, 5, 10, 15, 20]
    # 1, 10, 100, 1000 are 10^0 … 10^3; step 0 comes too unless zero=False
    assert Schedule.log(1, 1000, 4).steps == (0, 1, 10, 100, 1000)
    assert Schedule.log(1, 1000, 4, zero=False).steps == (1, 10, 100, 1000)
    assert Schedule.log(1, 4, 10).steps == (0, 1, 2, 3, 4)  # rounding collapses a short range
    log = Schedule.log(10, 100_000, 30)
    ratios = np.diff(np.log(np.array(log.steps[1:], dtype=float)))
    assert np.all(np.abs(ratios - np.log(10_000) / 29) < 0.06)  # evenly spaced in log, up to rounding
    assert Schedule.at([7, 3, 7]).steps == (3, 7) and Schedule.at(range(2)).wants(1)
    assert Schedule.coerce(None).wants(13) and Schedule.coerce(4).wants(8) and not Schedule.coerce(4).wants(6)
    assert Schedule.coerce([2, 9]).steps == (2, 9)
    for bad in (lambda: Schedule.every(0), lambda: Schedule.log(0, 10, 3), lambda: Schedule.log(5, 5, 3),
                lambda: Schedule.log(1, 10, 1), lambda: Schedule.at([]), lambda: Schedule.at([-1]),
                lambda: Schedule.coerce("often"), lambda: Schedule.every(2.5)):
        with pytest.raises(LossmapError) as exc:
            bad()
        one_line(exc)


# ---- round trip -----------------------------------------------------------------------------------------


def train(model: nn.Module, rec: Recorder, steps: int, lr: float = 0.1):
    """A plain SGD loop that calls the recorder after every step; returns the states it saw, by step."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    seen = {0: {k: v.clone() for k, v in model.state_dict().items()}}
    losses = {}
    rec.save(model, step=0, epoch=0, lr=lr)
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        seen[step] = {k: v.clone() for k, v in model.state_dict().items()}
        losses[step] = float(loss.detach())
        rec.save(model, step=step, epoch=step // 4, lr=opt.param_groups[0]["lr"], loss=loss,
                 grad_norm=torch.tensor(1.5), note="sgd")
    return seen, losses


def test_round_trip_manifest_and_checkpoints(tmp_path):
    model = net()
    t0 = time.time()
    rec = Recorder(tmp_path / "run", schedule=Schedule.every(2))
    assert rec.due(0) and rec.due(2) and not rec.due(3)
    seen, losses = train(model, rec, 7)
    t1 = time.time()
    assert rec.steps == [0, 2, 4, 6] and not rec.due(4) and rec.due(8)

    run = load_run(tmp_path / "run", min_checkpoints=3)
    np.testing.assert_array_equal(run.steps, [0, 2, 4, 6])
    assert run.names == list(model.state_dict())  # the state dict's order, integer buffers included
    assert run.shapes == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert run.tensors["1.num_batches_tracked"].dtype == "I64"
    assert run.parameters == tuple(n for n, _ in model.named_parameters())
    for c in run.checkpoints:
        state = load_file(str(c.path))
        assert state.keys() == seen[c.step].keys()
        assert all(torch.equal(state[k], seen[c.step][k]) for k in state), c.step
        fresh = net()
        fresh.load_state_dict(state)  # weights-only checkpoints reload as they are
        assert c.lr == pytest.approx(0.1) and c.epoch == c.step // 4
        assert t0 <= c.time <= t1
        if c.step:
            assert c.loss == pytest.approx(losses[c.step], rel=1e-6)
            assert c.scalars == {"grad_norm": 1.5, "note": "sgd"}
        else:
            assert c.loss is None and c.scalars == {}
    times = [c.time for c in run.checkpoints]
    assert times == sorted(times)
    raw = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert raw["format"] == "lossmap.run" and [e["file"] for e in raw["checkpoints"]] == [c.path.name for c in run.checkpoints]


def test_force_resume_amend_and_tied_weights(tmp_path):
    model = net()
    rec = Recorder(tmp_path / "run", schedule=[0, 10])
    assert rec.save(model, step=3) is None  # not on the schedule
    assert rec.save(model, step=3, force=True) is not None
    assert rec.save(model, step=3, force=True) is None  # already recorded
    rec.save(model, step=0)
    again = Recorder(tmp_path / "run", schedule=[0, 10])  # a resumed loop continues the folder
    assert again.steps == [0, 3] and not again.due(0) and again.due(10)
    assert again.amend(3, loss=0.25, accuracy=0.5) and not again.amend(7, loss=1.0)
    c = {c.step: c for c in load_run(tmp_path / "run").checkpoints}[3]
    assert c.loss == 0.25 and c.scalars == {"accuracy": 0.5}
    with pytest.raises(LossmapError) as exc:
        Recorder(tmp_path / "run", resume=False)
    assert "run" in one_line(exc)

    tied = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    tied[1].weight = tied[0].weight  # shared storage, as in language models
    Recorder(tmp_path / "tied").save(tied, step=0)
    state = load_file(str(tmp_path / "tied" / "step-000000000.safetensors"))
    assert torch.equal(state["0.weight"], state["1.weight"])
    assert load_run(tmp_path / "tied").parameters == ("0.weight",)  # named once, as named_parameters does

    Recorder(tmp_path / "part", model_filter="3.*").save(model, step=0)
    part = load_run(tmp_path / "part")
    assert part.names == ["3.weight", "3.bias"] and part.model_filter == "3.*"


def test_bad_arguments_to_save(tmp_path):
    rec = Recorder(tmp_path / "run")
    model = net()
    for kwargs in ({"step": -1}, {"step": 1.5}, {"step": True}, {"step": 1, "loss": torch.ones(3)},
                   {"step": 1, "lr": "high"}, {"step": 1, "extra": [1, 2]}):
        with pytest.raises(LossmapError) as exc:
            rec.save(model, **kwargs)
        one_line(exc)
    with pytest.raises(LossmapError) as exc:
        Recorder(tmp_path / "f", model_filter="conv*").save(model, step=0)
    assert "conv*" in one_line(exc)
    assert rec.steps == []


# ---- atomic writes --------------------------------------------------------------------------------------


def test_a_failed_write_leaves_the_previous_manifest_and_no_temporary(tmp_path, monkeypatch):
    model = net()
    rec = Recorder(tmp_path / "run")
    rec.save(model, step=0)
    rec.save(model, step=1)
    before = (tmp_path / "run" / MANIFEST).read_bytes()
    real_replace = os.replace

    def fail_on_manifest(src, dst, *a, **k):
        if str(dst).endswith(MANIFEST):
            raise OSError("disk full")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", fail_on_manifest)
    with pytest.raises(LossmapError) as exc:
        rec.save(model, step=2)
    assert "manifest" in one_line(exc)
    monkeypatch.undo()
    assert (tmp_path / "run" / MANIFEST).read_bytes() == before
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    run = load_run(tmp_path / "run")  # the checkpoint of step 2 is on disk but not listed: still a valid run
    np.testing.assert_array_equal(run.steps, [0, 1])
    assert rec.due(2) and rec.save(model, step=2) is not None  # the failed save left the recorder as it was
    np.testing.assert_array_equal(load_run(tmp_path / "run").steps, [0, 1, 2])
    before = (tmp_path / "run" / MANIFEST).read_bytes()

    def fail_on_checkpoint(src, dst, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail_on_checkpoint)
    with pytest.raises(LossmapError):
        Recorder(tmp_path / "run").save(model, step=5)
    monkeypatch.undo()
    assert (tmp_path / "run" / MANIFEST).read_bytes() == before  # the manifest never names a file not written
    assert not (tmp_path / "run" / "step-000000005.safetensors").exists()


# ---- bad run folders ------------------------------------------------------------------------------------


def make_run(folder, model=None, steps=(0, 1, 2)):
    rec = Recorder(folder)
    for s in steps:
        rec.save(model or net(), step=s)
    return folder


def manifest(folder):
    return json.loads((folder / MANIFEST).read_text())


def test_every_bad_run_folder_is_a_one_line_error(tmp_path):
    cases = {}
    cases["missing"] = (tmp_path / "nope", "does not exist")
    (tmp_path / "bare").mkdir()
    cases["no manifest"] = (tmp_path / "bare", MANIFEST)
    empty = make_run(tmp_path / "empty")
    body = manifest(empty)
    body["checkpoints"] = []
    (empty / MANIFEST).write_text(json.dumps(body))
    cases["empty"] = (empty, "no checkpoints")
    damaged = make_run(tmp_path / "damaged")
    (damaged / MANIFEST).write_text("{not json")
    cases["damaged manifest"] = (damaged, "damaged")
    lost = make_run(tmp_path / "lost")
    (lost / "step-000000001.safetensors").unlink()
    cases["missing file"] = (lost, "step-000000001.safetensors")
    twice = make_run(tmp_path / "twice")
    body = manifest(twice)
    body["checkpoints"].append(dict(body["checkpoints"][0]))
    (twice / MANIFEST).write_text(json.dumps(body))
    cases["duplicate step"] = (twice, "twice")
    mixed = make_run(tmp_path / "mixed", steps=(0, 1))
    Recorder(mixed).save(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), step=2)
    cases["other tensors"] = (mixed, "step-000000002.safetensors")
    shapes = make_run(tmp_path / "shapes", model=nn.Linear(4, 3), steps=(0, 1))
    Recorder(shapes).save(nn.Linear(4, 5), step=2)
    cases["other shapes"] = (shapes, "weight")
    truncated = make_run(tmp_path / "truncated")
    path = truncated / "step-000000002.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    cases["truncated file"] = (truncated, "step-000000002.safetensors")
    for what, (folder, needle) in cases.items():
        with pytest.raises(LossmapError) as exc:
            load_run(folder)
        assert needle in one_line(exc), what
    with pytest.raises(LossmapError) as exc:
        load_run(make_run(tmp_path / "short", steps=(0, 1)), min_checkpoints=3)
    assert "at least 3" in one_line(exc)
