"""Data loaders, the seed network and checkpoints."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lossmap.data import MNIST_MEAN, MNIST_STD, digits, load_data, mnist, npz
from lossmap.errors import LossmapError
from lossmap.models import MnistCNN, load_checkpoint, load_model, save_checkpoint

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def test_seed_net_parameter_count_and_output():
    net = MnistCNN()
    assert sum(p.numel() for p in net.parameters()) == 1_199_882
    out = net.eval()(torch.zeros(2, 1, 28, 28))
    assert out.shape == (2, 10)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2))


def test_digits_split_is_disjoint_and_mnist_shaped():
    train, test = digits("train"), digits("test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.tensors[0].shape[1:] == (1, 28, 28)
    border = train.tensors[0][:, :, :4, :]
    torch.testing.assert_close(border, torch.full_like(border, -MNIST_MEAN / MNIST_STD))  # blank MNIST-like frame
    tr = {bytes(r.numpy().tobytes()) for r in train.tensors[0]}
    assert not any(bytes(r.numpy().tobytes()) in tr for r in test.tensors[0][:50])
    assert sorted(torch.unique(test.tensors[1]).tolist()) == list(range(10))
    with pytest.raises(LossmapError, match="split 'val'"):
        digits("val")


@pytest.mark.parametrize("test_fraction, seed", [(0.2, 0), (0.3, 4)])
def test_digits_are_scikit_learns_images_in_its_stratified_split(test_fraction, seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    _, test_idx = train_test_split(np.arange(1797), test_size=test_fraction, random_state=seed, stratify=bunch.target)
    test = digits("test", test_fraction=test_fraction, seed=seed)
    train = digits("train", test_fraction=test_fraction, seed=seed)
    order = np.sort(test_idx)
    assert test.tensors[1].tolist() == bunch.target[order].tolist()
    assert len(train) == 1797 - len(order)
    # as documented: scaled to 20x20 (bilinear), centred in a blank 28x28 frame, normalized like MNIST
    small = torch.from_numpy(bunch.images[order] / 16.0).float()[:, None]
    big = torch.nn.functional.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    expected = (torch.nn.functional.pad(big, (4, 4, 4, 4)) - MNIST_MEAN) / MNIST_STD
    torch.testing.assert_close(test.tensors[0], expected, rtol=0, atol=1e-6)


def test_digits_from_a_scikit_learn_that_keeps_its_file_elsewhere_are_the_same(monkeypatch, tmp_path):
    import importlib.machinery
    import importlib.util

    import sklearn.datasets

    from lossmap.data import sets

    before = digits("test")
    real, asked = importlib.util.find_spec, []

    def moved(name, *args):
        if name != "sklearn":
            return real(name, *args)
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)  # a package folder without the file
        spec.submodule_search_locations = [str(tmp_path)]
        return spec

    def load_digits(*args, **kwargs):
        asked.append(True)
        return real_load(*args, **kwargs)

    real_load = sklearn.datasets.load_digits
    monkeypatch.setattr(sets.importlib.util, "find_spec", moved)
    monkeypatch.setattr(sklearn.datasets, "load_digits", load_digits)
    after = digits("test")
    assert asked  # scikit-learn was asked for the data
    assert torch.equal(before.tensors[0], after.tensors[0]) and torch.equal(before.tensors[1], after.tensors[1])


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_reader(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28))
    labels = rng.integers(0, 10, size=7)
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, gz)
    ds = mnist(tmp_path, "test")
    np.testing.assert_allclose(ds.tensors[0][:, 0].numpy(), (images / 255.0 - MNIST_MEAN) / MNIST_STD, rtol=1e-6)
    assert ds.tensors[1].tolist() == labels.tolist()
    assert len(load_data(f"mnist:{tmp_path}:test")) == 7
    with pytest.raises(LossmapError, match="no train-images-idx3-ubyte"):
        mnist(tmp_path, "train")
    raw = (tmp_path / f"t10k-images-idx3-ubyte{suffix}")
    data = gzip.decompress(raw.read_bytes()) if gz else raw.read_bytes()
    raw.write_bytes(gzip.compress(data[:-100]) if gz else data[:-100])
    with pytest.raises(LossmapError, match="truncated"):
        mnist(tmp_path, "test")


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="the full MNIST set is not beside the repository")
def test_real_mnist_test_split():
    ds = mnist(SHARED_MNIST, "test")
    assert len(ds) == 10_000 and ds.tensors[0].shape == (10_000, 1, 28, 28)
    assert abs(float(ds.tensors[0].mean())) < 0.05 and abs(float(ds.tensors[0].std()) - 1) < 0.05


def test_npz_and_specs(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((5, 3), np.float32), y=np.arange(5))
    ds = npz(tmp_path / "d.npz")
    assert ds.tensors[0].dtype == torch.float32 and ds.tensors[1].dtype == torch.int64
    assert len(load_data(f"npz:{tmp_path / 'd.npz'}")) == 5
    np.savez(tmp_path / "bad.npz", x=np.ones((5, 3)))
    with pytest.raises(LossmapError, match="needs arrays 'x' and 'y'"):
        npz(tmp_path / "bad.npz")
    assert len(load_data("digits:test")) == 360
    with pytest.raises(LossmapError, match="not understood"):
        load_data("imagenet")
    (tmp_path / "factory.py").write_text("def boom():\n    raise RuntimeError('no disk')\n")
    with pytest.raises(LossmapError, match="raised RuntimeError: no disk"):
        load_data(f"{tmp_path / 'factory.py'}:boom")


def test_model_specs_and_checkpoints(tmp_path):
    assert isinstance(load_model("mnist-cnn"), MnistCNN)
    (tmp_path / "m.py").write_text("import torch\ndef build():\n    return torch.nn.Linear(3, 2)\ndef notmodel():\n    return 3\n")
    assert isinstance(load_model(f"{tmp_path / 'm.py'}:build"), torch.nn.Linear)
    with pytest.raises(LossmapError, match="returned int"):
        load_model(f"{tmp_path / 'm.py'}:notmodel")
    with pytest.raises(LossmapError, match="has no callable 'nope'"):
        load_model(f"{tmp_path / 'm.py'}:nope")

    torch.manual_seed(0)
    src = MnistCNN()
    for name in ("a.safetensors", "a.pt"):
        save_checkpoint(src, tmp_path / name)
        dst = load_checkpoint(MnistCNN(), tmp_path / name)
        assert all(torch.equal(p, q) for p, q in zip(src.state_dict().values(), dst.state_dict().values()))
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    load_checkpoint(MnistCNN(), tmp_path / "wrapped.pth")
    save_checkpoint(torch.nn.Linear(3, 2), tmp_path / "small.safetensors")
    with pytest.raises(LossmapError, match=r"missing keys conv1.weight.*unexpected keys (bias, weight|weight, bias)"):
        load_checkpoint(MnistCNN(), tmp_path / "small.safetensors")
    other = MnistCNN()
    other.fc2 = torch.nn.Linear(128, 7)
    save_checkpoint(other, tmp_path / "seven.safetensors")
    with pytest.raises(LossmapError, match=r"fc2.weight: checkpoint \(7, 128\) vs model \(10, 128\)"):
        load_checkpoint(MnistCNN(), tmp_path / "seven.safetensors")
    with pytest.raises(LossmapError, match="does not exist"):
        load_checkpoint(MnistCNN(), tmp_path / "none.pt")
