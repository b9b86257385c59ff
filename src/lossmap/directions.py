"""Directions in parameter space: random (Gaussian, normalized), target (B − A, plane through A, B, C).

A :class:`Directions` holds one or two directions as ``{name: tensor}`` dicts shaped like the moved
tensors, plus what is needed to reproduce and label them.

Normalization (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"):

* ``filter`` — for every tensor with ≥ 2 dims, each slice along dim 0 (a conv filter, a row of a
  linear layer) is rescaled to the Frobenius norm of the same slice of θ0;
* ``layer`` — each tensor is rescaled to the norm of the same tensor of θ0;
* ``model`` — the whole direction is rescaled to the norm of the whole θ0 (over the moved tensors);
* ``none`` — the raw Gaussian values.

Tensors with ≤ 1 dim (biases, norm-layer scale/shift) follow ``bias``: ``zero`` (default; "ignore
bias/BN": they do not move), ``filter`` (rescaled as one slice to the norm of θ0's tensor, under the
``filter`` and ``layer`` normalizations) or ``keep`` (the raw Gaussian values). Under ``model``
normalization ``filter`` and ``keep`` both mean "included in the whole-vector rescaling".
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .errors import LossmapError
from .space import pieces, check_finite, select_tensors, tensor_hash

NORMALIZATIONS = ("filter", "layer", "model", "none")
BIAS_POLICIES = ("zero", "filter", "keep")
_EPS = 1e-10

__all__ = [
    "Directions",
    "random_directions",
    "target_directions",
    "normalize",
    "NORMALIZATIONS",
    "BIAS_POLICIES",
]


def _dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    # float64 in slices of 2**20 values: no float64 copy of a whole (possibly huge) tensor
    total, step = 0.0, 1 << 20
    for n in a:
        x, y = a[n].reshape(-1), b[n].reshape(-1)
        for lo in range(0, x.numel(), step):
            total += float(torch.dot(x[lo : lo + step].double(), y[lo : lo + step].double()))
    return total


def _norm(a: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(_dot(a, a))


def _sub_scaled_(dst: torch.Tensor, src: torch.Tensor, coef: float) -> torch.Tensor:
    """``dst - src * coef``, in place in ``dst`` and in pieces where it can be: the product is
    rounded exactly as ``src * coef`` would be, but no full-size temporary is made
    (``sub_(src, alpha=coef)`` may fuse the two and round once, which changes the bits)."""
    if dst.dtype != torch.result_type(dst, src) or dst.shape != src.shape:
        return dst - src * coef  # the result's dtype or shape is not dst's
    if dst.is_contiguous() and src.is_contiguous():
        for d, s in zip(pieces(dst), pieces(src)):
            d.sub_(s * coef)
    else:
        dst.sub_(src * coef)
    return dst


@dataclass
class Directions:
    """One or two directions with their provenance.

    Args:
        tensors (list[dict[str, torch.Tensor]]): the directions, each ``{tensor name: tensor}`` shaped like the
            moved tensors of the model.
        kind (str): ``random``, ``target`` or ``custom``.
        seed (int | None): the seed random directions were drawn from.
        normalization (str): how they were scaled (``filter``, ``layer``, ``model``, ``none``).
        bias_policy (str): what tensors with ≤ 1 dim got (``zero``, ``filter``, ``keep``).
        orthogonalized (bool): whether the second was made orthogonal to the first.
        include_buffers (bool): whether floating-point buffers move too.
        tensor_filter (str | None): the glob patterns that chose the moved tensors.
        markers (dict[str, list[float]]): a label → its coordinates in this coordinate system (e.g. the models
            of an interpolation).
        labels (list[str]): axis labels.
        origin_sha256 (str): the hash of θ0 the directions were made for.

    Examples:
        >>> import torch, lossmap
        >>> net = torch.nn.Linear(3, 2)
        >>> d = lossmap.Directions(tensors=[{n: torch.ones_like(p) for n, p in net.named_parameters()}])
        >>> d.count, d.names
        (1, ['weight', 'bias'])
        >>> ds = lossmap.compute(net, (torch.randn(8, 3), torch.randn(8, 2)), x="-1:1:3", directions=d)
        >>> ds.attrs["directions_kind"]
        'custom'
    """

    tensors: list[dict[str, torch.Tensor]]
    kind: str = "custom"
    seed: int | None = None
    normalization: str = "none"
    bias_policy: str = "keep"
    orthogonalized: bool = False
    include_buffers: bool = False
    tensor_filter: str | None = None
    markers: dict[str, list[float]] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    origin_sha256: str = ""

    @property
    def count(self) -> int:
        """The number of directions (1 or 2)."""
        return len(self.tensors)

    def __repr__(self) -> str:
        values = sum(t.numel() for t in self.tensors[0].values()) if self.tensors else 0
        seed = "" if self.seed is None else f", seed={self.seed}"
        return (f"Directions(kind={self.kind!r}, count={self.count}, tensors={len(self.names) if self.tensors else 0} "
                f"({values:,} values each){seed}, normalization={self.normalization!r}, bias={self.bias_policy!r}"
                f"{', buffers' if self.include_buffers else ''})")

    @property
    def names(self) -> list[str]:
        """The names of the moved tensors, in model order."""
        return list(self.tensors[0])

    def cosine(self) -> float | None:
        """The cosine between the two directions, summed in float64.

        Returns:
            float | None: the cosine; None for one direction or a zero direction.
        """
        if self.count < 2:
            return None
        n0, n1 = _norm(self.tensors[0]), _norm(self.tensors[1])
        if n0 == 0 or n1 == 0:
            return None
        return _dot(self.tensors[0], self.tensors[1]) / (n0 * n1)

    def norms(self) -> list[float]:
        """The Euclidean norm of each direction over all its tensors.

        Returns:
            list[float]: one norm per direction (float64 sums).
        """
        return [_norm(d) for d in self.tensors]

    def check(self, live: Mapping[str, torch.Tensor], what: str = "directions") -> None:
        """Check that these directions cover exactly the given tensors.

        Args:
            live (Mapping[str, torch.Tensor]): the tensors that will move (names and shapes).
            what (str): how the error message names the directions.

        Raises:
            LossmapError: a tensor without a direction, a direction without a tensor, or a shape mismatch.
        """
        names = set(self.names)
        missing = [n for n in live if n not in names]
        extra = [n for n in self.names if n not in live]
        bad = [
            f"{n}: direction {tuple(self.tensors[0][n].shape)} vs model {tuple(live[n].shape)}"
            for n in live
            if n in names and tuple(self.tensors[0][n].shape) != tuple(live[n].shape)
        ]
        if missing or extra or bad:
            parts = []
            if missing:
                parts.append(f"no direction for {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}")
            if extra:
                parts.append(f"directions for tensors the model does not move: {', '.join(extra[:4])}{' …' if len(extra) > 4 else ''}")
            if bad:
                parts.append("shape mismatch " + "; ".join(bad[:4]))
            raise LossmapError(
                f"{what} do not match the model ({'; '.join(parts)}): make the directions for this model "
                "(same architecture, same tensor selection)"
            )
        for i, d in enumerate(self.tensors[1:], start=1):
            if list(d) != self.names:
                raise LossmapError(f"{what}: direction d{i} names differ from d0's; the file is damaged")

    def metadata(self) -> dict[str, Any]:
        """The provenance as a landscape's attributes record it.

        Returns:
            dict[str, Any]: ``directions_kind``, ``seed``, ``normalization``, ``bias_policy``, … .
        """
        return {
            "directions_kind": self.kind,
            "seed": -1 if self.seed is None else int(self.seed),
            "normalization": self.normalization,
            "bias_policy": self.bias_policy,
            "orthogonalized": bool(self.orthogonalized),
            "directions_cosine": float("nan") if self.cosine() is None else self.cosine(),
            "include_buffers": bool(self.include_buffers),
            "tensor_filter": self.tensor_filter or "",
            "markers": self.markers,
            "direction_labels": json.dumps(self.labels),
            "directions_origin_sha256": self.origin_sha256,
        }

    def save(self, path: str | Path) -> Path:
        """Save as safetensors: keys ``d0.<name>``, ``d1.<name>``; the provenance in the header metadata.

        Args:
            path (str | Path): the file to write.

        Returns:
            Path: the path written.

        Examples:
            >>> import pathlib, tempfile, torch, lossmap
            >>> d = lossmap.random_directions(torch.nn.Linear(3, 2), count=2, seed=1)
            >>> path = d.save(pathlib.Path(tempfile.mkdtemp()) / "d.safetensors")
            >>> again = lossmap.Directions.load(path)
            >>> again.seed, again.normalization, torch.equal(again.tensors[1]["weight"], d.tensors[1]["weight"])
            (1, 'filter', True)
        """
        from safetensors.torch import save_file

        path = Path(path)
        flat = {f"d{i}.{n}": t.detach().cpu().contiguous() for i, d in enumerate(self.tensors) for n, t in d.items()}
        header = {k: json.dumps(v) for k, v in self.metadata().items() if k != "directions_cosine"}
        header["format"] = "lossmap.directions"
        header["names"] = json.dumps(self.names)
        try:
            save_file(flat, str(path), metadata=header)
        except OSError as exc:
            raise LossmapError(f"cannot write directions file {str(path)!r}: {exc}") from exc
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Directions":
        """Read directions saved by :meth:`save` (or any safetensors file with ``d0.``/``d1.`` keys).

        Args:
            path (str | Path): the ``.safetensors`` file.

        Returns:
            Directions: the directions and their provenance (a plain file gives ``kind="custom"``).
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise LossmapError(f"directions file {str(path)!r} does not exist: check the path")
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = fh.metadata() or {}
                flat = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:
            raise LossmapError(f"cannot read directions file {str(path)!r}: it is damaged or not safetensors ({exc})") from exc
        if header.get("format") != "lossmap.directions":
            # a plain safetensors file with d0./d1. keys is accepted as custom directions
            header = {}
        names = json.loads(header["names"]) if "names" in header else sorted({k.split(".", 1)[1] for k in flat if "." in k})
        tensors: list[dict[str, torch.Tensor]] = []
        for i in range(2):
            keys = [f"d{i}.{n}" for n in names]
            if all(k in flat for k in keys):
                tensors.append({n: flat[f"d{i}.{n}"] for n in names})
        if not tensors or any(not k.startswith(("d0.", "d1.")) for k in flat):
            raise LossmapError(f"directions file {str(path)!r} needs keys 'd0.<tensor name>' (and 'd1.…'): it has {list(flat)[:3]}")
        get = lambda key, default: json.loads(header[key]) if key in header else default  # noqa: E731
        seed = get("seed", -1)
        return cls(
            tensors=tensors,
            kind=get("directions_kind", "custom"),
            seed=None if seed in (-1, None) else int(seed),
            normalization=get("normalization", "none"),
            bias_policy=get("bias_policy", "keep"),
            orthogonalized=bool(get("orthogonalized", False)),
            include_buffers=bool(get("include_buffers", False)),
            tensor_filter=get("tensor_filter", "") or None,
            markers=get("markers", {}),
            labels=json.loads(get("direction_labels", "[]")),
            origin_sha256=get("directions_origin_sha256", ""),
        )


def _check_choice(value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise LossmapError(f"{what} {value!r} is unknown: choose one of {', '.join(choices)}")
    return value


@torch.no_grad()
def normalize(
    direction: Mapping[str, torch.Tensor],
    origin: Mapping[str, torch.Tensor],
    normalization: str = "filter",
    bias: str = "zero",
) -> dict[str, torch.Tensor]:
    """A normalized copy of ``direction`` relative to ``origin`` (see the module docstring).

    Args:
        direction (Mapping[str, torch.Tensor]): the raw direction.
        origin (Mapping[str, torch.Tensor]): θ0, the tensors whose norms the direction takes.
        normalization (str): ``filter``, ``layer``, ``model`` or ``none``.
        bias (str): tensors with ≤ 1 dim: ``zero``, ``filter`` or ``keep``.

    Returns:
        dict[str, torch.Tensor]: the normalized direction (``direction`` is not changed).

    Examples:
        >>> import torch
        >>> from lossmap.directions import normalize
        >>> theta = {"w": torch.tensor([[3.0, 4.0], [0.0, 1.0]]), "b": torch.ones(2)}
        >>> d = normalize({"w": torch.ones(2, 2), "b": torch.ones(2)}, theta)
        >>> d["w"].norm(dim=1).round(decimals=4).tolist(), d["b"].tolist()   # rows as long as θ0's; biases stay
        ([5.0, 1.0], [0.0, 0.0])
    """
    return _normalize_({n: d.detach().clone() for n, d in direction.items()}, origin, normalization, bias)


@torch.no_grad()
def _normalize_(
    direction: dict[str, torch.Tensor], origin: Mapping[str, torch.Tensor], normalization: str, bias: str
) -> dict[str, torch.Tensor]:
    """:func:`normalize` in place (no copy of the direction: large models keep one copy per direction)."""
    _check_choice(normalization, NORMALIZATIONS, "normalization")
    _check_choice(bias, BIAS_POLICIES, "bias policy")
    for name, d in direction.items():
        w = origin[name].detach().to(d.dtype)
        if d.dim() <= 1 and bias == "zero":
            d.zero_()
        elif normalization == "filter" or normalization == "layer":
            if d.dim() <= 1:
                if bias == "filter":
                    d.mul_(w.norm() / (d.norm() + _EPS))
            elif normalization == "filter":
                dims = tuple(range(1, d.dim()))
                scale = torch.linalg.vector_norm(w, dim=dims, keepdim=True) / (torch.linalg.vector_norm(d, dim=dims, keepdim=True) + _EPS)
                d.mul_(scale)
            else:
                d.mul_(w.norm() / (d.norm() + _EPS))
    if normalization == "model":
        moving = [n for n, d in direction.items() if not (d.dim() <= 1 and bias == "zero")]
        w_norm = _norm({n: origin[n] for n in moving})
        d_norm = _norm({n: direction[n] for n in moving})
        for n in moving:
            direction[n].mul_(w_norm / (d_norm + _EPS))
    return direction


def _origin_of(model_or_state: nn.Module | Mapping[str, torch.Tensor], include_buffers: bool, tensor_filter) -> dict[str, torch.Tensor]:
    """The tensors that move: a model's selection, or a state dict's floating-point tensors (matching the filter)."""
    if isinstance(model_or_state, nn.Module):
        return {n: t.detach() for n, t in select_tensors(model_or_state, include_buffers, tensor_filter).items()}
    patterns = [p.strip() for p in tensor_filter.split(",")] if isinstance(tensor_filter, str) else list(tensor_filter or [])
    return {n: t for n, t in model_or_state.items() if t.is_floating_point()
            and (not patterns or any(fnmatch.fnmatchcase(n, p) for p in patterns))}


def random_directions(
    model: nn.Module,
    count: int = 2,
    seed: int = 0,
    normalization: str = "filter",
    bias: str = "zero",
    orthogonalize: bool = False,
    include_buffers: bool = False,
    tensor_filter: str | None = None,
) -> Directions:
    """``count`` (1 or 2) Gaussian directions drawn from ``torch.Generator().manual_seed(seed)``, normalized.

    Values are drawn on the CPU in float32 in tensor order (all of d0, then all of d1), so the same
    seed gives the same directions on every device and dtype. With ``orthogonalize`` d1 loses its
    component along d0 and is then rescaled to its previous overall norm (so it stays orthogonal;
    its per-filter scales change by the small cosine that two random high-dimensional vectors have).

    Args:
        model (nn.Module): the model; its current tensors are θ0 (the model is not changed).
        count (int): 1 or 2.
        seed (int): the generator's seed.
        normalization (str): ``filter`` (Li et al. 2018), ``layer``, ``model`` or ``none``.
        bias (str): tensors with ≤ 1 dim: ``zero`` (they do not move), ``filter`` or ``keep``.
        orthogonalize (bool): make d1 orthogonal to d0.
        include_buffers (bool): move floating-point buffers (batch-norm statistics) too.
        tensor_filter (str | None): move only the tensors whose names match these comma-separated globs.

    Returns:
        Directions: ``kind="random"``, with θ* marked at the origin.

    Examples:
        >>> import torch, lossmap
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> d = lossmap.random_directions(net, count=2, seed=0)
        >>> w = net[0].weight.detach()
        >>> torch.allclose(d.tensors[0]["0.weight"].norm(dim=1), w.norm(dim=1))   # filter-normalized rows
        True
        >>> bool(d.tensors[0]["0.bias"].any())                                   # biases stay put
        False
    """
    if count not in (1, 2):
        raise LossmapError(f"count {count!r}: lossmap makes 1 or 2 directions")
    _check_choice(normalization, NORMALIZATIONS, "normalization")
    _check_choice(bias, BIAS_POLICIES, "bias policy")
    origin = _origin_of(model, include_buffers, tensor_filter)
    check_finite(origin)
    gen = torch.Generator().manual_seed(int(seed))
    dirs = []
    for _ in range(count):  # one direction at a time, normalized in place: no second copy of it
        draw = {n: torch.randn(t.shape, generator=gen, dtype=torch.float32).to(device=t.device, dtype=t.dtype) for n, t in origin.items()}
        dirs.append(_normalize_(draw, origin, normalization, bias))
    if orthogonalize and count == 2:
        d0, d1 = dirs
        n0sq, n1 = _dot(d0, d0), _norm(d1)
        if n0sq > 0:
            coef = _dot(d1, d0) / n0sq
            for n in d1:
                d1[n] = _sub_scaled_(d1[n], d0[n], coef)
            new = _norm(d1)
            if new > 0:
                for n in d1:
                    d1[n].mul_(n1 / new)
    norm_name = "filter-normalized" if normalization == "filter" else f"{normalization}-normalized"
    labels = [f"α (δ: random, {norm_name})", f"β (η: random, {norm_name})"][:count]
    return Directions(
        tensors=dirs,
        kind="random",
        seed=int(seed),
        normalization=normalization,
        bias_policy=bias,
        orthogonalized=bool(orthogonalize and count == 2),
        include_buffers=include_buffers,
        tensor_filter=tensor_filter,
        markers={"θ*": [0.0] * count},
        labels=labels,
        origin_sha256=tensor_hash(origin),
    )


def target_directions(
    a: nn.Module | Mapping[str, torch.Tensor],
    b: nn.Module | Mapping[str, torch.Tensor],
    c: nn.Module | Mapping[str, torch.Tensor] | None = None,
    include_buffers: bool = True,
    tensor_filter: str | None = None,
    names: Sequence[str] = ("A", "B", "C"),
) -> Directions:
    """Directions through two or three models, with A as the origin.

    Every floating-point tensor that differs between the models moves — batch-norm running statistics
    included (``include_buffers``, the "states" directions of Li et al.) — so that α = 0 is A and α = 1 is B
    exactly, in evaluation mode too. Two models: d0 = B − A (α = 0 is A, α = 1 is B). Three models: the
    plane through A, B, C with d0 = B − A and d1 = the Gram–Schmidt residual of C − A against d0, rescaled
    to ‖B − A‖, so the plane's coordinates are isometric (one unit = ‖B − A‖ on both axes) and equal-aspect
    plots are true to distance. ``markers`` gives each model's exact coordinates: A (0, 0), B (1, 0), C (t, s).

    Args:
        a (nn.Module | Mapping[str, torch.Tensor]): model A (the origin) or its state dict.
        b (nn.Module | Mapping[str, torch.Tensor]): model B, same architecture.
        c (nn.Module | Mapping[str, torch.Tensor] | None): model C for the plane through three models.
        include_buffers (bool): move floating-point buffers too (default: yes).
        tensor_filter (str | None): move only the tensors whose names match these comma-separated globs.
        names (Sequence[str]): the models' labels on the plots.

    Returns:
        Directions: ``kind="target"``, unnormalized, with the models as markers.

    Examples:
        >>> import torch, lossmap
        >>> a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        >>> d = lossmap.target_directions(a, b)
        >>> torch.equal(d.tensors[0]["weight"], b.weight.detach() - a.weight.detach()), d.markers
        (True, {'A': [0.0], 'B': [1.0]})
    """
    pa = _origin_of(a, include_buffers, tensor_filter)
    pb = _origin_of(b, include_buffers, tensor_filter)
    for label, p in ((names[1], pb),) + (((names[2], _origin_of(c, include_buffers, tensor_filter)),) if c is not None else ()):
        if list(p) != list(pa) or any(p[n].shape != pa[n].shape for n in pa):
            raise LossmapError(f"model {label} does not have model {names[0]}'s tensors and shapes: use checkpoints of one architecture")
    check_finite(pa, f"model {names[0]}")
    check_finite(pb, f"model {names[1]}")
    d0 = {n: (pb[n].detach() - pa[n].detach()) for n in pa}
    n0 = _norm(d0)
    if n0 == 0:
        raise LossmapError(f"models {names[0]} and {names[1]} are identical: interpolate between different parameter sets")
    if c is None:
        return Directions(
            tensors=[d0], kind="target", normalization="none", bias_policy="keep",
            include_buffers=include_buffers, tensor_filter=tensor_filter,
            markers={names[0]: [0.0], names[1]: [1.0]},
            labels=[f"α ({names[0]} → {names[1]})"], origin_sha256=tensor_hash(pa),
        )
    pc = _origin_of(c, include_buffers, tensor_filter)
    check_finite(pc, f"model {names[2]}")
    r = {n: (pc[n].detach() - pa[n].detach()) for n in pa}
    t = _dot(r, d0) / (n0 * n0)
    for n in r:  # in place, in pieces: no second copy of the residual
        r[n] = _sub_scaled_(r[n], d0[n], t)
    nr = _norm(r)
    if nr <= 1e-6 * n0:  # collinear up to float32 rounding
        raise LossmapError(f"models {names[0]}, {names[1]}, {names[2]} lie on one line: no plane passes through them")
    for v in r.values():  # in place, the residual becomes d1, as long as d0
        v.mul_(n0 / nr)
    return Directions(
        tensors=[d0, r], kind="target", normalization="none", bias_policy="keep",
        include_buffers=include_buffers, tensor_filter=tensor_filter,
        markers={names[0]: [0.0, 0.0], names[1]: [1.0, 0.0], names[2]: [t, nr / n0]},
        labels=[f"α ({names[0]} → {names[1]})", f"β (toward {names[2]}, orthogonalized)"],
        origin_sha256=tensor_hash(pa),
    )
