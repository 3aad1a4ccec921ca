"""Latent distributions: the global latent's posterior head and conditional prior, and the spatial latent maps."""

from __future__ import annotations

import torch
from torch import nn

from precip_cvae.model._layers import LOGVAR_MAX, LOGVAR_MIN, _gaussian_noise, _mlp, _pad_to, _split_gaussian


class LatentHead(nn.Module):
    """Posterior parameters from the two embeddings: [h_Y; h_X] -> (mu, logvar) of q(z | Y, X, S).

    Parameters
    ----------
    d_in : d_y + d_x.
    d_z : latent size.
    dropout : dropout probability inside the MLP.

    Shapes
    ------
    (B, d_y + d_x) -> mu (B, d_z), logvar (B, d_z), logvar clamped to [LOGVAR_MIN, LOGVAR_MAX] (log of a variance
    in latent units, i.e. nats scale).
    """

    def __init__(self, d_in: int, d_z: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = _mlp(d_in, max(d_in // 2, 2 * d_z), 2 * d_z, dropout)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _split_gaussian(self.mlp(h))


class ConditionalPrior(nn.Module):
    """Learned prior p(z | X): h_X -> (mu_p, logvar_p). Only built when ``ModelConfig.prior == "conditional"``.

    Parameters
    ----------
    d_x : embedding size of h_X.
    d_z : latent size.
    dropout : dropout probability inside the MLP.

    Shapes
    ------
    (B, d_x) -> mu_p (B, d_z), logvar_p (B, d_z) (clamped like the posterior's).
    """

    def __init__(self, d_x: int, d_z: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = _mlp(d_x, max(d_x, 2 * d_z), 2 * d_z, dropout)

    def forward(self, h_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _split_gaussian(self.mlp(h_x))


class SpatialContext:
    """How the decoder draws its spatial latents in one pass, and what it records.

    ``encoder_maps``: the posterior encoder's feature maps by level (posterior mode), or None (prior mode);
    ``temperature`` scales the standard deviation of the draws. After the pass, ``kl`` holds, per latent scale
    (its factor), the KL(q || p) of each latent map summed over its pixels, (B, channels) (posterior mode only), and
    ``pixels`` the number of pixels of that scale's maps.
    """

    def __init__(
        self,
        encoder_maps: list[torch.Tensor] | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        self.encoder_maps, self.temperature, self.generator = encoder_maps, temperature, generator
        self.kl: dict[int, torch.Tensor] = {}
        self.pixels: dict[int, int] = {}


class SpatialLatent(nn.Module):
    """Latent maps at one decoder scale: a conditional prior p(z_s | features) and, with the posterior encoder's
    map at the same scale, a posterior q(z_s | features, Y); the draw is added to the features by a 1×1 conv.

    Shapes
    ------
    features (B, c, h, w), encoder map (B, c_enc, h', w') with h' <= h, w' <= w -> (B, c, h, w).
    """

    def __init__(self, channels: int, encoder_channels: int, latent_channels: int, factor: int) -> None:
        super().__init__()
        self.factor, self.latent_channels = factor, latent_channels
        self.prior = nn.Conv2d(channels, 2 * latent_channels, 3, padding=1)
        self.posterior = nn.Conv2d(channels + encoder_channels, 2 * latent_channels, 3, padding=1)
        self.inject = nn.Conv2d(latent_channels, channels, 1)

    def forward(self, x: torch.Tensor, level: int, context: SpatialContext) -> torch.Tensor:
        p_mu, p_logvar = self.prior(x).chunk(2, dim=1)
        p_logvar = p_logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        if context.encoder_maps is not None:
            enc = _pad_to(context.encoder_maps[level].to(x.dtype), tuple(x.shape[-2:]))
            mu, logvar = self.posterior(torch.cat([x, enc], dim=1)).chunk(2, dim=1)
            logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
            kl = 0.5 * (p_logvar - logvar + (logvar.exp() + (mu - p_mu) ** 2) / p_logvar.exp() - 1.0)
            context.kl[self.factor] = kl.float().sum(dim=(2, 3))
            context.pixels[self.factor] = int(x.shape[-2] * x.shape[-1])
        else:
            mu, logvar = p_mu, p_logvar
        eps = _gaussian_noise(tuple(mu.shape), mu, context.generator)
        z = mu + context.temperature * torch.exp(0.5 * logvar) * eps
        return x + self.inject(z)
