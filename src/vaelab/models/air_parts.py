"""AIR's parts: the spatial transformer moving glimpses in and out of windows; the guide's LSTM step."""

import torch
import torch.nn.functional as F
from torch import nn

# Spatial transformer convention: normalised coordinates in [-1, 1] address
# pixel *areas* (align_corners=False), so a window of side canvas/s pixels is
# exactly 2/s wide in those coordinates, whatever the glimpse size.
ALIGN_CORNERS = False


def window_to_image(z_where: torch.Tensor, glimpses: torch.Tensor, image_size: int) -> torch.Tensor:
    """Writes (B, g, g) glimpses into (B, image_size²) images at windows z_where = (s, x, y).

    An image point p reads the glimpse at s·(p − (x, y)); outside the window, zeros.
    """
    s, xy = z_where[:, :1], z_where[:, 1:]
    zero = torch.zeros_like(s)
    theta = torch.cat([s, zero, -s * xy[:, :1], zero, s, -s * xy[:, 1:]], 1).view(-1, 2, 3)
    n = glimpses.shape[0]
    grid = F.affine_grid(theta, [n, 1, image_size, image_size], align_corners=ALIGN_CORNERS)
    out = F.grid_sample(glimpses.unsqueeze(1), grid, align_corners=ALIGN_CORNERS)
    return out.view(n, image_size * image_size)


def image_to_window(z_where: torch.Tensor, images: torch.Tensor, glimpse_size: int) -> torch.Tensor:
    """Cuts the windows z_where out of (B, 1, H, W) images as (B, glimpse_size²) glimpses.

    A glimpse point g reads the image at g / s + (x, y): the inverse of window_to_image.
    """
    s, xy = z_where[:, :1], z_where[:, 1:]
    zero = torch.zeros_like(s)
    inv = 1 / s
    theta = torch.cat([inv, zero, xy[:, :1], zero, inv, xy[:, 1:]], 1).view(-1, 2, 3)
    n = images.shape[0]
    grid = F.affine_grid(theta, [n, 1, glimpse_size, glimpse_size], align_corners=ALIGN_CORNERS)
    return F.grid_sample(images, grid, align_corners=ALIGN_CORNERS).view(n, glimpse_size * glimpse_size)


def boxes_from_where(z_where: torch.Tensor, image_size: int) -> torch.Tensor:
    """Returns windows z_where = (s, x, y) as pixel boxes (x0, y0, width, height): (..., 4)."""
    side = image_size / z_where[..., 0]
    cx = (z_where[..., 1] + 1) / 2 * image_size
    cy = (z_where[..., 2] + 1) / 2 * image_size
    return torch.stack([cx - side / 2, cy - side / 2, side, side], -1)


def annealed_prior(start, end: float, epochs: int, epoch: int) -> float:
    """Returns the prior probability of epoch `epoch`: geometric from `start` to `end` over `epochs`."""
    if start is None or epoch > epochs:
        return end
    return start * (end / start) ** ((epoch - 1) / epochs)


class GuideStep(nn.Module):
    """The guide's recurrent core: an LSTM whose image projection is computed once per image."""

    def __init__(self, x_dim, latent_dim, hidden):
        super().__init__()
        self.hidden = hidden
        self.from_image = nn.Linear(x_dim, 4 * hidden)
        self.from_state = nn.Linear(latent_dim + hidden, 4 * hidden, bias=False)

    def forward(self, image_part, latents, state):
        h, c = state
        gates = image_part + self.from_state(torch.cat([latents, h], 1))
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c
