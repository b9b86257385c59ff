"""Evaluation data: the embedded and standard data sets, batches, and sources that cache or stream them.

* :mod:`lossmap.data.sets` — ``digits`` (embedded), ``mnist`` (IDX folders), ``npz`` files, ``load_data(spec)``;
* :mod:`lossmap.data.batches` — what one batch is, and how it is split, moved and re-cut;
* :mod:`lossmap.data.source` — the data as batches on the device: cached when it fits a memory budget,
  streamed (with prefetching) when it does not, always in one fixed order.
"""

from .batches import Batch, split_batch
from .sets import MNIST_MEAN, MNIST_STD, digits, load_data, mnist, npz
from .source import Cached, Source, Streamed, make_source

__all__ = ["digits", "mnist", "npz", "load_data", "MNIST_MEAN", "MNIST_STD", "Batch", "split_batch", "Source", "Cached",
           "Streamed", "make_source"]
