"""The tutorial loop as a whole process (the baseline of the command-line comparison in run.py).

    python bench/tutorial_script.py CHECKPOINT DATA_SPEC SAMPLES GRID OUT.npz

What users write today: the net, its checkpoint, two filter-normalized Gaussian directions, then per
point ``vector_to_parameters(θ0 + αδ + βη)`` and a DataLoader pass under ``no_grad``; results saved
with numpy. Default allocator, no tuning.
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def main():
    ckpt, spec, samples, grid, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    from lossmap.data import load_data  # the same images as the other contenders

    x, y = load_data(spec).tensors
    loader = DataLoader(TensorDataset(x[:samples], y[:samples]), batch_size=128)
    model = Net()
    model.load_state_dict(load_file(ckpt))
    model.eval()
    gen = torch.Generator().manual_seed(0)
    dirs = []
    for _ in range(2):
        d = []
        for p in model.parameters():
            r = torch.randn(p.shape, generator=gen)
            if p.dim() <= 1:
                r.zero_()
            else:
                r *= p.detach().flatten(1).norm(dim=1).view(-1, *[1] * (p.dim() - 1)) / r.flatten(1).norm(dim=1).view(-1, *[1] * (p.dim() - 1))
            d.append(r.reshape(-1))
        dirs.append(torch.cat(d))
    theta0 = parameters_to_vector(model.parameters()).detach().clone()
    axis = np.linspace(-1, 1, grid)
    loss = np.zeros((grid, grid))
    for i, a in enumerate(axis):
        for j, b in enumerate(axis):
            vector_to_parameters(theta0 + a * dirs[0] + b * dirs[1], model.parameters())
            total = 0.0
            with torch.no_grad():
                for xb, yb in loader:
                    total += F.nll_loss(model(xb), yb, reduction="sum").item()
            loss[i, j] = total / min(samples, len(y))
    np.savez(out, x=axis, y=axis, loss=loss)


if __name__ == "__main__":
    main()
