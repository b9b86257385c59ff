"""A Hessian-vector product as a symmetric linear operator on flat float64 vectors.

The tensors of a model live as ``{name: tensor}`` dicts (any dtype, any device); scipy's solvers work on
flat float64 numpy vectors. :class:`HessianOperator` sits between the two: it flattens and unflattens in
the order of its template's names (row-major inside each tensor), converts in pieces of at most 2**20
values, and counts the HVPs it makes.

A *block* restricts the operator to some of the named tensors: it is the sub-block ``H[B, B]`` of the
Hessian on the tensors ``B`` (a per-layer Hessian), computed as ``(H v)[B]`` for a ``v`` that is zero
outside ``B``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from ..errors import LossmapError
from ..space import pieces

__all__ = ["HessianOperator", "matrix_operator", "flatten", "unflatten", "layer_blocks", "quiet_blas"]

HVP = Callable[[dict[str, torch.Tensor]], Mapping[str, torch.Tensor]]


def _sizes(template: Mapping[str, torch.Tensor], names: Sequence[str]) -> list[int]:
    return [int(template[n].numel()) for n in names]


def flatten(tensors: Mapping[str, torch.Tensor], names: Sequence[str]) -> np.ndarray:
    """Concatenate ``tensors[name]`` for ``name`` in ``names`` (row-major) into one float64 vector.

    Args:
        tensors: the tensors, any dtype and device.
        names: which tensors, in which order.

    Returns:
        np.ndarray: float64, shape ``(sum of numel,)``; converted in pieces (no float64 copy of a whole tensor
        is made on the torch side).

    Example:
        >>> flatten({"a": torch.ones(2, 2), "b": torch.zeros(1)}, ["a", "b"]).tolist()
        [1.0, 1.0, 1.0, 1.0, 0.0]
    """
    out = np.empty(sum(int(tensors[n].numel()) for n in names), dtype=np.float64)
    at = 0
    for n in names:
        for piece in pieces(tensors[n].detach()):
            flat = piece.reshape(-1)
            out[at : at + flat.numel()] = flat.to("cpu", torch.float64).numpy()
            at += flat.numel()
    return out


def unflatten(vector: np.ndarray, template: Mapping[str, torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Split a flat vector into tensors shaped, typed and placed like ``template[name]``.

    Args:
        vector: float vector of length ``sum(template[n].numel() for n in names)``.
        template: tensors giving each name's shape, dtype and device.
        names: which tensors, in which order (the order :func:`flatten` used).

    Returns:
        dict[str, torch.Tensor]: new tensors (never views of ``vector``).

    Example:
        >>> t = unflatten(np.arange(3.0), {"w": torch.zeros(1, 3)}, ["w"])
        >>> t["w"].tolist()
        [[0.0, 1.0, 2.0]]
    """
    vector = np.asarray(vector).reshape(-1)
    out: dict[str, torch.Tensor] = {}
    at = 0
    for n, size in zip(names, _sizes(template, names)):
        ref = template[n]
        dst = torch.empty(ref.shape, dtype=ref.dtype, device=ref.device)
        flat_dst = dst.view(-1)
        for lo in range(0, size, 1 << 20):
            hi = min(size, lo + (1 << 20))
            src = torch.from_numpy(np.ascontiguousarray(vector[at + lo : at + hi]))
            flat_dst[lo:hi].copy_(src)
        out[n] = dst
        at += size
    if at != vector.size:
        raise ValueError(f"vector has {vector.size} values, the tensors {list(names)} hold {at}")
    return out


def layer_blocks(names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Group tensor names by the module that owns them (the name without its last ``.part``).

    Args:
        names: tensor names such as ``"0.weight"``, ``"fc1.bias"``.

    Returns:
        dict[str, tuple[str, ...]]: module path → its tensor names, in first-seen order; a name without a
        dot is its own block.

    Example:
        >>> layer_blocks(["0.weight", "0.bias", "2.weight"])
        {'0': ('0.weight', '0.bias'), '2': ('2.weight',)}
    """
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.rsplit(".", 1)[0] if "." in n else n, []).append(n)
    return {k: tuple(v) for k, v in groups.items()}


def _check_block(block: Sequence[str] | None, names: Sequence[str]) -> tuple[str, ...]:
    if block is None:
        return tuple(names)
    if isinstance(block, str):
        block = [block]
    block = tuple(block)
    if not block:
        raise LossmapError("the block selection is empty: name at least one tensor, e.g. block=['fc1.weight']")
    unknown = [n for n in block if n not in names]
    if unknown:
        raise LossmapError(f"block tensor(s) {unknown} are not among the selected tensors {list(names)}: pick from those")
    if len(set(block)) != len(block):
        raise LossmapError(f"block {list(block)} names a tensor twice: name each tensor once")
    return tuple(n for n in names if n in block)  # the template's order


class HessianOperator:
    """A symmetric operator ``v ↦ H v`` on flat float64 vectors, from an HVP on tensor dicts.

    Args:
        hvp: ``hvp(v) -> H v`` with ``v`` a dict over all of ``template``'s names (shaped, typed and placed
            like the template); returns a dict with (at least) the same names.
        template: ``{name: tensor}`` giving the names, order, shapes, dtype and device (e.g. θ0).
        block: optional subset of the names: the operator is then the sub-block ``H[block, block]``
            (other tensors get zeros in ``v``). An empty block raises :class:`LossmapError`.

    Attributes:
        names (tuple[str, ...]): the tensors the flat vector covers, in template order.
        shape (tuple[int, int]): ``(n, n)``, ``n`` the number of values in those tensors.
        count (int): HVPs made so far (one per :meth:`matvec` that computed one; see :meth:`remember`).

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> op = HessianOperator(lambda v: {"x": A @ v["x"]}, {"x": torch.zeros(2, dtype=torch.float64)})
        >>> op.matvec(np.array([1.0, 0.0])).tolist(), op.count
        ([2.0, 1.0], 1)
    """

    def __init__(self, hvp: HVP, template: Mapping[str, torch.Tensor], block: Sequence[str] | None = None):
        all_names = tuple(template)
        if not all_names:
            raise LossmapError("no tensors are selected: the Hessian needs at least one parameter tensor")
        self.hvp = hvp
        self.template = dict(template)
        self.all_names = all_names
        self.names = _check_block(block, all_names)
        n = sum(_sizes(self.template, self.names))
        if n == 0:
            raise LossmapError(f"the tensors {list(self.names)} hold no values: select tensors with parameters")
        self.shape = (n, n)
        self.count = 0
        self._known: tuple[np.ndarray, np.ndarray] | None = None

    def remember(self, x: np.ndarray, hx: np.ndarray) -> None:
        """Keep ``H x`` for the next product: if that is of ``x`` (to rounding, ``‖x' − x‖ ≤ 1e-14 ‖x‖``: a vector
        normalized twice can differ in the last bit), it returns a copy of ``hx`` and counts no HVP (the determinism
        probe's product is then a Lanczos run's first). Any next product forgets it."""
        self._known = (np.array(x, dtype=np.float64).reshape(-1), np.array(hx, dtype=np.float64).reshape(-1))

    def unflatten(self, vector: np.ndarray) -> dict[str, torch.Tensor]:
        """The tensors (of :attr:`names`) of a flat vector, shaped like the template."""
        return unflatten(vector, self.template, self.names)

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
        """The flat float64 vector of ``tensors`` over :attr:`names`."""
        return flatten(tensors, self.names)

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """``H x`` (float64) for a flat vector ``x``; counts one HVP (none when :meth:`remember` had it)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        known, self._known = self._known, None
        if known is not None and known[0].shape == x.shape and (
                np.linalg.norm(known[0] - x) <= 1e-14 * np.linalg.norm(x)):
            return known[1].copy()
        v = self.unflatten(x)
        for n in self.all_names:
            if n not in v:
                ref = self.template[n]
                v[n] = torch.zeros(ref.shape, dtype=ref.dtype, device=ref.device)
        out = self.hvp({n: v[n] for n in self.all_names})
        self.count += 1
        return flatten(out, self.names)

    def linear_operator(self) -> LinearOperator:
        """This operator as a :class:`scipy.sparse.linalg.LinearOperator` (float64; symmetric)."""
        return LinearOperator(self.shape, matvec=self.matvec, rmatvec=self.matvec, dtype=np.float64)


def matrix_operator(
    matrix: np.ndarray, template: Mapping[str, torch.Tensor] | None = None, block: Sequence[str] | None = None
) -> HessianOperator:
    """A :class:`HessianOperator` for a dense symmetric matrix (closed forms, tests).

    Args:
        matrix: ``(n, n)`` symmetric array, acting on the flattened ``template``.
        template: tensors whose values number ``n`` in all (default: one float64 vector ``{"x": (n,)}``).
        block: optional subset of the template's names, as in :class:`HessianOperator`.

    Returns:
        HessianOperator: ``matvec(x) == matrix[B, B] @ x`` (``B`` the block's indices), counting products.

    Example:
        >>> op = matrix_operator(np.diag([1.0, 2.0]))
        >>> op.matvec(np.ones(2)).tolist()
        [1.0, 2.0]
    """
    a = np.asarray(matrix, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise LossmapError(f"matrix of shape {a.shape} is not square: pass an (n, n) array")
    if template is None:
        template = {"x": torch.zeros(a.shape[0], dtype=torch.float64)}
    names = tuple(template)
    if sum(_sizes(template, names)) != a.shape[0]:
        raise LossmapError(f"matrix of shape {a.shape} does not match the template's {sum(_sizes(template, names))} values")

    def hvp(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return unflatten(a @ flatten(v, names), template, names)

    return HessianOperator(hvp, template, block)


@contextlib.contextmanager
def quiet_blas() -> Iterator[None]:
    """numpy's and scipy's BLAS on one thread for the duration (torch's own threads untouched).

    The solvers alternate short BLAS calls on long vectors (ARPACK's orthogonalization, a QR) with HVPs. A
    multi-threaded OpenBLAS keeps its workers spinning after each call, and on a machine with few cores they
    take the cores torch's HVP needs: on 2 cores the products inside ``eigsh`` ran about 1.8× slower than
    alone. The vector work is memory-bound, so one thread loses little there. Libraries inside torch's own
    folders (a BLAS torch ships) are left alone.

    Example:
        >>> with quiet_blas():
        ...     float(np.ones(3) @ np.ones(3))
        3.0
    """
    from threadpoolctl import ThreadpoolController

    torch_libs = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "torch")  # torch/ and torch.libs/
    controller = ThreadpoolController()
    ours = [lib.filepath for lib in controller.lib_controllers
            if lib.user_api == "blas" and not lib.filepath.startswith(torch_libs)]
    if not ours:
        yield
        return
    with controller.select(filepath=ours).limit(limits=1):
        yield
