"""Independent oracles the curvature tests share."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """The Hessian of the mean cross-entropy of ``model`` on all of ``(x, y)`` at once, over its parameters as one
    flat vector (``named_parameters`` order), by ``torch.autograd.functional.hessian``: no batching, no lossmap."""
    shapes = [(k, p.shape, p.numel()) for k, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(flat):
        params, at = {}, 0
        for k, shape, size in shapes:
            params[k] = flat[at : at + size].reshape(shape)
            at += size
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(f, flat0, vectorize=True).numpy()
