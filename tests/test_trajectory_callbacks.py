"""The Lightning and Hugging Face callbacks against the real frameworks: each checkpoint equals a plain
PyTorch replay of the same updates from the recorded initial weights, at the step it is filed under."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from lossmap.trajectory import Schedule, load_run


def data(n: int = 32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)


def replay(state: dict, steps: int, batches: list, lr: float):
    """``steps`` plain SGD updates of a Linear(4, 2) from ``state``, cycling over ``batches``; returns the
    final state and the loss of each update (at the weights before it)."""
    net = nn.Linear(4, 2)
    net.load_state_dict(state)
    losses = []
    for t in range(steps):
        x, y = batches[t % len(batches)]
        loss = F.mse_loss(net(x), y)
        net.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= lr * p.grad
        losses.append(float(loss.detach()))
    return net.state_dict(), losses


def assert_state_close(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_importing_lossmap_trajectory_imports_no_framework():
    code = ("import sys, lossmap.trajectory, lossmap.trajectory.callbacks; "
            "print([m for m in ('lightning', 'pytorch_lightning', 'transformers', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_a_missing_framework_is_a_one_line_error(monkeypatch, tmp_path):
    from lossmap.errors import LossmapError
    from lossmap.trajectory.callbacks import HFCallback, LightningCallback

    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "transformers"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    for cls, needle in ((LightningCallback, "pip install lightning"), (HFCallback, "pip install transformers")):
        with pytest.raises(LossmapError) as exc:
            cls(tmp_path / "run")
        assert needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.slow  # importing lightning alone takes ~5 s
def test_lightning_callback_records_the_steps_it_names(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    from lossmap.trajectory.callbacks import LightningCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x, y = data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)
    cb = LightningCallback(tmp_path / "run", schedule=Schedule.every(3), module="net")
    assert isinstance(cb, L.Callback) and isinstance(cb, LightningCallback)
    assert pickle.loads(pickle.dumps(cb)).recorder.folder == cb.recorder.folder
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.callbacks.append(cb)
    trainer.fit(Module(), loader)

    run = load_run(tmp_path / "run")
    assert run.steps.tolist() == [0, 3, 6, 8]  # 4 batches × 2 epochs; the final weights always
    states = {c.step: load_file(str(c.path)) for c in run.checkpoints}
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    for c in run.checkpoints[1:]:
        expected, losses = replay(states[0], c.step, batches, 0.1)
        assert_state_close(states[c.step], expected)
        assert c.lr == pytest.approx(0.1)
        if c.step in (3, 6):
            assert c.loss == pytest.approx(losses[-1], rel=1e-5)  # the loss of the update that led here
            assert c.epoch == (c.step - 1) // 4


def test_hf_callback_records_steps_and_logged_losses(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from lossmap.trajectory.callbacks import HFCallback

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = nn.Linear(4, 2)

        def forward(self, x, labels=None):
            out = self.lin(x)
            return {"loss": F.mse_loss(out, labels), "logits": out}

    x, y = data(16)
    dataset = [{"x": x[i], "labels": y[i]} for i in range(16)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=6, per_device_train_batch_size=16, learning_rate=0.1,
        optim="sgd", lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, logging_steps=2,
        save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
    )
    cb = HFCallback(tmp_path / "run", schedule=Schedule.every(2))
    assert isinstance(cb, transformers.TrainerCallback)
    transformers.Trainer(model=Net(), args=args, train_dataset=dataset, callbacks=[cb]).train()

    run = load_run(tmp_path / "run")
    assert run.steps.tolist() == [0, 2, 4, 6]
    states = {c.step: load_file(str(c.path)) for c in run.checkpoints}
    strip = lambda s: {k.removeprefix("lin."): v for k, v in s.items()}  # noqa: E731
    for c in run.checkpoints[1:]:
        expected, losses = replay(strip(states[0]), c.step, [(x, y)], 0.1)  # one full batch per step
        assert_state_close(strip(states[c.step]), expected)
        assert c.lr == pytest.approx(0.1) and c.epoch == pytest.approx(c.step)
        assert c.loss == pytest.approx(sum(losses[-2:]) / 2, rel=1e-5)  # logged every 2 steps: their mean
