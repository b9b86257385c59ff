"""Data sources: the embedded digits set, MNIST IDX folders, .npz files and user factories.

Every loader returns a :class:`torch.utils.data.TensorDataset` of ``(x, y)`` with images shaped
``N×1×28×28`` (float32, normalized with the MNIST mean and standard deviation) and int64 labels.
"""

from __future__ import annotations

import gzip
import importlib.util
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


#: the default split (test_fraction 0.2, seed 0) as a bit mask over the 1,797 images (1 = test), packed
#: big-endian: scikit-learn's ``train_test_split(range(1797), test_size=0.2, random_state=0, stratify=target)``,
#: kept here so that loading the data needs no import of scikit-learn (over a second of every command that
#: reads digits); tests/test_data.py checks it against scikit-learn's own split
_DEFAULT_TEST_MASK = (
    "000004883524104000064100934205001a00080100240028062c12001000940a009019120420f8a0028110a000080a8820441524494240a0"
    "0a0000004004d80000818020004805c400104008a0100005404800301000020ec409000224840083a8013c20a6980a0000000b08400804a0"
    "184802024041c1008004404684376a810216004480004042a0a4180a5000840b8561c608108008004c80c02004068e00010882008100380"
    "803c008190000100e01008410a0210033282904c044c080680e0102830082008822a6402c24042108a860809081a00c02820242120138a41500"
)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as ``(pixels [N, 64] in 0..16, labels [N] int64)``, read from the file scikit-learn
    ships (``sklearn/datasets/data/digits.csv.gz``: 64 pixels and the label per row) without importing it."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise LossmapError("the digits data set comes with scikit-learn, which is not installed: pip install scikit-learn")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():  # a scikit-learn that keeps it elsewhere: ask it
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.data, bunch.target.astype(np.int64)
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def _digits_test_mask(target: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Which images form the test split: a stratified shuffle split (scikit-learn's), stored for the default."""
    if test_fraction == 0.2 and seed == 0 and len(target) == 1797:
        return np.unpackbits(np.frombuffer(bytes.fromhex(_DEFAULT_TEST_MASK), dtype=np.uint8))[: len(target)].astype(bool)
    from sklearn.model_selection import train_test_split

    _, test_idx = train_test_split(np.arange(len(target)), test_size=test_fraction, random_state=seed, stratify=target)
    mask = np.zeros(len(target), dtype=bool)
    mask[test_idx] = True
    return mask


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
    _split_name(split)
    pixels, target = _digits_arrays()
    images = torch.from_numpy(pixels.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0)
    labels = torch.from_numpy(target)
    images = F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False).clamp_(0, 1)
    images = F.pad(images, (4, 4, 4, 4))
    in_test = _digits_test_mask(target, test_fraction, seed)
    chosen = torch.from_numpy(np.flatnonzero(~in_test if split == "train" else in_test))
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
