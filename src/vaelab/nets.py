"""Encoder and decoder building blocks: multilayer perceptrons."""

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}


def mlp(sizes, activation="relu") -> nn.Sequential:
    """Returns Linear layers of `sizes` with `activation` after each one.

    >>> mlp([784, 400], "relu")   # Linear(784, 400), ReLU()
    """
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class GaussianEncoder(nn.Module):
    """q(z|x) as a diagonal Normal: x (B, x_dim) -> z_loc, z_scale (B, z_dim)."""

    def __init__(self, x_dim: int, z_dim: int, hidden=(400,), activation="relu"):
        super().__init__()
        self.body = mlp([x_dim, *hidden], activation)
        self.loc = nn.Linear(hidden[-1], z_dim)
        self.log_scale = nn.Linear(hidden[-1], z_dim)

    def forward(self, x: torch.Tensor):
        h = self.body(x)
        return self.loc(h), torch.exp(self.log_scale(h))


class BernoulliDecoder(nn.Module):
    """p(x|z) as independent Bernoulli pixels: z (B, z_dim) -> logits (B, x_dim)."""

    def __init__(self, z_dim: int, x_dim: int, hidden=(400,), activation="relu"):
        super().__init__()
        self.body = mlp([z_dim, *hidden], activation)
        self.logits = nn.Linear(hidden[-1], x_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits(self.body(z))
