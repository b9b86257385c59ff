"""lossmap: loss landscapes of PyTorch models.

>>> import lossmap
>>> ds = lossmap.compute(model, data, x="-1:1:51", y="-1:1:51")   # filter-normalized random plane
"""

__version__ = "0.1.0"

from .directions import Directions, random_directions, target_directions  # noqa: E402
from .errors import LossmapError  # noqa: E402
from .landscape import compute, save  # noqa: E402
from .store import load  # noqa: E402

__all__ = ["compute", "save", "load", "Directions", "random_directions", "target_directions", "LossmapError", "__version__"]
