"""Fingerprints of the data: every kind of array a batch may carry hashes, by content."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from lossmap.fingerprint import feed


def digest(obj) -> str:
    h = hashlib.sha256()
    feed(h, obj)
    return h.hexdigest()


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.array(["a", "b", "c"]),  # text
        lambda: np.array(["2020-01-01", "2021-06-30"], dtype="datetime64[D]"),  # dates
        lambda: np.array([{"id": 1}, "x", 3], dtype=object),  # objects
        lambda: np.arange(6.0).reshape(2, 3),  # numbers
    ],
)
def test_numpy_arrays_of_any_dtype_hash_by_content(make):
    a, b = make(), make()
    assert digest(a) == digest(b)
    changed = b.copy()
    changed[-1] = changed[0] if changed.ndim == 1 else changed[0, 0] + 1
    assert digest(changed) != digest(a)


def test_a_numeric_array_hashes_like_its_tensor():
    """Numbers go through the tensor path, so numpy and torch batches of the same samples agree."""
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert digest(a) == digest(torch.from_numpy(a))
