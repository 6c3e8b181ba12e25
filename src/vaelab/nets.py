"""Encoder and decoder building blocks: multilayer perceptrons, and convolutional networks for images."""

import math

import torch
import torch.nn.functional as F
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


def joined_layer(linear: nn.Linear, inputs: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """`linear` of cat([inputs, condition], -1), the two broadcast, without repeating `inputs`' product.

    The layer's weight is split by columns: inputs (..., n) meet the first n,
    the condition the rest, and the two products are added, broadcasting. When
    the condition varies along a dimension the inputs do not (M2's q(z|x, y)
    enumerated over the classes: x (B, D), y (C, 1, C)), the inputs' product is
    computed once, not once per class. Equal to the concatenated layer up to
    rounding (the sum is split in two).
    """
    n = inputs.shape[-1]
    return F.linear(inputs, linear.weight[:, :n], linear.bias) + F.linear(condition, linear.weight[:, n:])


class GaussianEncoder(nn.Module):
    """q(z|x) as a diagonal Normal: x (B, x_dim) -> z_loc, z_scale (B, z_dim).

    With a `condition` (..., c) the input is cat([x, condition], -1), x's
    first-layer product taken once however far the condition broadcasts it
    (:func:`joined_layer`).
    """

    def __init__(self, x_dim: int, z_dim: int, hidden=(400,), activation="relu"):
        super().__init__()
        self.body = mlp([x_dim, *hidden], activation)
        self.loc = nn.Linear(hidden[-1], z_dim)
        self.log_scale = nn.Linear(hidden[-1], z_dim)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None):
        if condition is None:
            h = self.body(x)
        else:
            h = self.body[1:](joined_layer(self.body[0], x, condition))
        return self.loc(h), torch.exp(self.log_scale(h))


class BernoulliDecoder(nn.Module):
    """p(x|z) as independent Bernoulli pixels: z (B, z_dim) -> logits (B, x_dim)."""

    def __init__(self, z_dim: int, x_dim: int, hidden=(400,), activation="relu"):
        super().__init__()
        self.body = mlp([z_dim, *hidden], activation)
        self.logits = nn.Linear(hidden[-1], x_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits(self.body(z))


# --- convolutional networks (--net conv) -------------------------------------------
NETS = ("mlp", "conv")
CHANNELS = (32, 64)  # the two convolutions' channels, halving the image each time


def _quartered(size: int) -> int:
    """An image side after two 3x3 stride-2 convolutions padded by 1: ceil(ceil(size / 2) / 2)."""
    return math.ceil(math.ceil(size / 2) / 2)


class ConvEncoder(nn.Module):
    """q(z|x) as a diagonal Normal from convolutions: (..., H*W [+ condition]) -> z_loc, z_scale (..., z_dim).

    The input is the flat image, with any condition (the CVAE's one-hot label)
    appended as the MLP's is: the image is cut off and reshaped to (1, H, W),
    through two 3x3 stride-2 convolutions (any H and W), flattened, and the
    condition joins the dense layers after them. A `condition` may also come
    apart, (..., c) broadcasting against the images (..., H*W): the
    convolutions then run once per image, however far the condition
    broadcasts it (M2's enumeration over the classes).
    """

    def __init__(self, image_shape, condition_size: int, z_dim: int, hidden=(400,), activation="relu"):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.x_dim = self.image_shape[0] * self.image_shape[1]
        act = ACTIVATIONS[activation]
        self.convs = nn.Sequential(
            nn.Conv2d(1, CHANNELS[0], 3, stride=2, padding=1),
            act(),
            nn.Conv2d(CHANNELS[0], CHANNELS[1], 3, stride=2, padding=1),
            act(),
            nn.Flatten(),
        )
        features = CHANNELS[1] * _quartered(self.image_shape[0]) * _quartered(self.image_shape[1])
        self.body = mlp([features + condition_size, *hidden], activation)
        self.loc = nn.Linear(hidden[-1], z_dim)
        self.log_scale = nn.Linear(hidden[-1], z_dim)

    def forward(self, inputs: torch.Tensor, condition: torch.Tensor | None = None):
        features = self._features(inputs[..., : self.x_dim])
        if condition is None:  # the condition, if any, appended to the image
            h = self.body(torch.cat([features, inputs[..., self.x_dim :]], -1))
        else:
            h = self.body[1:](joined_layer(self.body[0], features, condition))
        return self.loc(h), torch.exp(self.log_scale(h))

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """The convolutions' flattened features of flat images (..., H*W): (..., features)."""
        lead = images.shape[:-1]
        maps = self.convs(images.reshape(-1, 1, *self.image_shape))
        return maps.reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """p(x|z) as Bernoulli pixels from transposed convolutions: (..., in_dim) -> logits (..., H*W).

    Dense layers to a (64, ceil(H/4), ceil(W/4)) map, two 4x4 stride-2
    transposed convolutions to at least (H, W), cropped to (H, W).
    """

    def __init__(self, in_dim: int, image_shape, hidden=(400,), activation="relu"):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.start = (CHANNELS[1], _quartered(self.image_shape[0]), _quartered(self.image_shape[1]))
        act = ACTIVATIONS[activation]
        self.body = nn.Sequential(
            mlp([in_dim, *hidden], activation), nn.Linear(hidden[-1], math.prod(self.start)), act()
        )
        self.deconvs = nn.Sequential(
            nn.ConvTranspose2d(CHANNELS[1], CHANNELS[0], 4, stride=2, padding=1),
            act(),
            nn.ConvTranspose2d(CHANNELS[0], 1, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        maps = self.body(z.reshape(-1, z.shape[-1])).reshape(-1, *self.start)
        height, width = self.image_shape
        logits = self.deconvs(maps)[:, 0, :height, :width]
        return logits.reshape(*lead, height * width)


def encoder_and_decoder(net: str, image_shape, condition_size: int, z_dim: int, hidden, activation):
    """Returns (encoder, decoder) of kind `net` ("mlp" or "conv") for images of `image_shape`."""
    x_dim = image_shape[0] * image_shape[1]
    if net == "conv":
        return (
            ConvEncoder(image_shape, condition_size, z_dim, hidden, activation),
            ConvDecoder(z_dim + condition_size, image_shape, hidden[::-1], activation),
        )
    return (
        GaussianEncoder(x_dim + condition_size, z_dim, hidden, activation),
        BernoulliDecoder(z_dim + condition_size, x_dim, hidden[::-1], activation),
    )
