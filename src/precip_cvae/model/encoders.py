"""The two encoders: the coarse predictors to a vector h_X, the high-resolution field (and statics) to h_Y."""

from __future__ import annotations

import torch
from torch import nn

from precip_cvae.model._layers import ENCODER_WIDTH_CAP, POOL_SIZE, _channels, _group_norm, _mlp


class EncoderX(nn.Module):
    """Summarize the coarse predictors into one vector.

    Two 3×3 convolutions at the coarse resolution, adaptive average pooling to a fixed 4 × 4 map (which keeps
    the coarse spatial layout and also works for inputs smaller than 4 × 4, down to 1 × 1), then an MLP.
    No normalization inside the conv stack (the inputs are already standardized, and a per-sample norm on a
    1 × 1 map would erase the signal); a LayerNorm on the output gives h_X unit scale.

    Parameters
    ----------
    in_channels : C, number of predictor variables.
    d_x : size of the embedding h_X.
    base_filters : width of the first convolution (the second is twice as wide).
    dropout : dropout probability inside the MLP (0 disables it).

    Shapes
    ------
    (B, C, h, w) standardized predictors -> (B, d_x) embedding (unitless).
    """

    def __init__(self, in_channels: int, d_x: int, base_filters: int, dropout: float = 0.0) -> None:
        super().__init__()
        c1, c2 = base_filters, 2 * base_filters
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(POOL_SIZE),
            nn.Flatten(),
        )
        self.mlp = _mlp(c2 * POOL_SIZE * POOL_SIZE, d_x, d_x, dropout)
        # Unit-scale embedding: without it h_X starts ~20x smaller than z and the decoder would begin by ignoring it.
        self.norm = nn.LayerNorm(d_x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp(self.convs(x)))


class EncoderY(nn.Module):
    """Summarize a high-resolution field together with the static maps into one vector.

    A 3×3 stem at full resolution, then ``n_down`` stride-2 3×3 convolutions (widths base × 2^k, capped at
    4 × base), each followed by GroupNorm and SiLU; adaptive average pooling to 4 × 4, an MLP and a LayerNorm.

    Parameters
    ----------
    in_channels : 1 + S_ch (the target field plus the static maps).
    d_y : size of the embedding h_Y.
    base_filters : width at full resolution.
    n_down : number of stride-2 stages (the model uses :func:`n_scales` of the grid).
    dropout : dropout probability inside the MLP.

    Shapes
    ------
    (B, 1 + S_ch, H, W) -> (B, d_y).
    """

    def __init__(self, in_channels: int, d_y: int, base_filters: int, n_down: int, dropout: float = 0.0) -> None:
        super().__init__()
        width = _channels(base_filters, 0)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), _group_norm(width), nn.SiLU()]
        for level in range(1, n_down + 1):
            out = _channels(base_filters, level, ENCODER_WIDTH_CAP)
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), _group_norm(out), nn.SiLU()]
            width = out
        layers += [nn.AdaptiveAvgPool2d(POOL_SIZE), nn.Flatten()]
        self.convs = nn.Sequential(*layers)
        self.mlp = _mlp(width * POOL_SIZE * POOL_SIZE, d_y, d_y, dropout)
        # Same scale as h_X, so neither dominates the latent head at the start.
        self.norm = nn.LayerNorm(d_y)

    def forward(self, y_and_statics: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp(self.convs(y_and_statics)))

    def features(self, y_and_statics: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The embedding and the feature map after each stage: level k has ceil(H / 2^k) x ceil(W / 2^k) pixels."""
        maps, x = [], y_and_statics
        layers = list(self.convs)
        for i in range(0, len(layers) - 2, 3):  # (conv, norm, act) per level; the pooling and flatten last
            x = layers[i + 2](layers[i + 1](layers[i](x)))
            maps.append(x)
        return self.norm(self.mlp(layers[-1](layers[-2](x)))), maps
