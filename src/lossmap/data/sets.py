"""Data sources: the embedded digits set, MNIST IDX folders, .npz files and user factories.

Every loader returns a :class:`torch.utils.data.TensorDataset` of ``(x, y)`` with images shaped
``N×1×28×28`` (float32, normalized with the MNIST mean and standard deviation) and int64 labels.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..errors import LossmapError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

__all__ = ["digits", "mnist", "npz", "load_data", "MNIST_MEAN", "MNIST_STD"]


def _normalize(images01: torch.Tensor) -> torch.Tensor:
    return (images01 - MNIST_MEAN) / MNIST_STD


def _split_name(split: str) -> str:
    if split not in ("train", "test"):
        raise LossmapError(f"data split {split!r} is unknown: use 'train' or 'test'")
    return split


def digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> TensorDataset:
    """scikit-learn's 8×8 digits (1,797 images), resized to MNIST's 28×28 layout.

    Each 8×8 image is scaled to 20×20 (bilinear) and centred in a 28×28 frame, as MNIST digits are.
    The split is a fixed stratified shuffle (``seed``), so ``train`` and ``test`` never overlap.

    Args:
        split (str): ``train`` or ``test``.
        test_fraction (float): the share of the images in the test split.
        seed (int): the seed of the split.

    Returns:
        TensorDataset: images ``[N, 1, 28, 28]`` (float32, normalized like MNIST) and labels ``[N]`` (int64).

    Examples:
        >>> from lossmap.data import digits
        >>> test = digits("test")
        >>> len(test), tuple(test[0][0].shape)
        (360, (1, 28, 28))
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _split_name(split)
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    images = F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False).clamp_(0, 1)
    images = F.pad(images, (4, 4, 4, 4))
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=bunch.target)
    chosen = torch.from_numpy(np.sort(train_idx if split == "train" else test_idx))
    return TensorDataset(_normalize(images[chosen]).contiguous(), labels[chosen].contiguous())


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise LossmapError(f"cannot read IDX file {str(path)!r} ({exc}): the file is damaged or not gzip") from exc
    if len(raw) < 4:
        raise LossmapError(f"IDX file {str(path)!r} is empty or truncated")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise LossmapError(f"{str(path)!r} is not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise LossmapError(f"IDX file {str(path)!r} is truncated: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise LossmapError(f"MNIST folder {str(folder)!r} has no {stem}[.gz]: point it at the folder with the four IDX files")


def mnist(folder: str | Path, split: str = "train") -> TensorDataset:
    """MNIST from a folder of the standard IDX files (``train-images-idx3-ubyte[.gz]`` …), gzipped or not.

    Args:
        folder (str | Path): the folder with the four IDX files.
        split (str): ``train`` or ``test``.

    Returns:
        TensorDataset: images ``[N, 1, 28, 28]`` (float32, normalized) and labels ``[N]`` (int64).

    Raises:
        LossmapError: the folder or a file is missing or damaged.

    Examples:
        >>> from lossmap.data import mnist
        >>> test = mnist("data/mnist", "test")                    # needs MNIST on disk  # doctest: +SKIP
        >>> len(test)                                             # doctest: +SKIP
        10000
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LossmapError(f"MNIST folder {str(folder)!r} does not exist: give the folder that holds the IDX files")
    prefix = "train" if _split_name(split) == "train" else "t10k"
    images = _read_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find_idx(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise LossmapError(f"MNIST files in {str(folder)!r} do not match: {images.shape} images, {labels.shape} labels")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return TensorDataset(_normalize(x).contiguous(), torch.from_numpy(labels.astype(np.int64)))


def npz(path: str | Path) -> TensorDataset:
    """A ``.npz`` file with arrays ``x`` (inputs, used as stored) and ``y`` (labels or targets).

    Args:
        path (str | Path): the ``.npz`` file.

    Returns:
        TensorDataset: ``x`` and ``y`` as tensors.

    Examples:
        >>> import pathlib, tempfile, numpy as np
        >>> from lossmap.data import npz
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "d.npz"
        >>> np.savez(path, x=np.zeros((5, 3), dtype="float32"), y=np.arange(5))
        >>> len(npz(path))
        5
    """
    path = Path(path)
    if not path.is_file():
        raise LossmapError(f"npz file {str(path)!r} does not exist: check the path")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays or "y" not in arrays:
                raise LossmapError(f"npz file {str(path)!r} needs arrays 'x' and 'y'; it has {sorted(arrays.files)}")
            x, y = arrays["x"], arrays["y"]
    except LossmapError:
        raise
    except Exception as exc:
        raise LossmapError(f"cannot read npz file {str(path)!r}: {exc}") from exc
    if len(x) != len(y):
        raise LossmapError(f"npz file {str(path)!r}: x has {len(x)} samples but y has {len(y)}")
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if not xt.is_floating_point():
        xt = xt.float()
    yt = torch.from_numpy(np.ascontiguousarray(y))
    if not yt.is_floating_point():
        yt = yt.long()
    return TensorDataset(xt, yt)


def load_data(spec: str) -> Any:
    """Resolve a data spec, as ``--data`` does.

    Args:
        spec (str): ``digits[:train|test]``, ``mnist:DIR[:train|test]``, ``npz:FILE``, or
            ``package.module:factory`` / ``file.py:factory`` returning a Dataset, DataLoader or iterable of
            batches.

    Returns:
        Any: the data, as ``lossmap.compute`` takes it.

    Raises:
        LossmapError: an unknown spec, a missing file, or a factory that fails.

    Examples:
        >>> from lossmap.data import load_data
        >>> len(load_data("digits:train"))
        1437
    """
    if spec == "digits" or spec.startswith("digits:"):
        _, _, split = spec.partition(":")
        return digits(split or "train")
    if spec.startswith("mnist:"):
        rest = spec[len("mnist:") :]
        split = "train"
        head, sep, tail = rest.rpartition(":")
        if sep and tail in ("train", "test"):
            rest, split = head, tail
        if not rest:
            raise LossmapError("data spec 'mnist:' needs a folder, e.g. 'mnist:data/mnist:test'")
        return mnist(rest, split)
    if spec.startswith("npz:"):
        return npz(spec[len("npz:") :])
    from ..models import resolve_factory

    factory = resolve_factory(spec, "data")
    try:
        return factory()
    except Exception as exc:
        raise LossmapError(f"data factory {spec!r} raised {type(exc).__name__}: {exc}") from exc
