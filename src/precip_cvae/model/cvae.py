"""The assembled conditional VAE, and its size and cost."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from precip_cvae.config import ModelConfig
from precip_cvae.model._layers import (
    ENCODER_WIDTH_CAP,
    _channels,
    _expand_batch,
    _gaussian_noise,
    fit_latent_scales,
    n_scales,
)
from precip_cvae.model.decoder import Decoder
from precip_cvae.model.encoders import EncoderX, EncoderY
from precip_cvae.model.latents import ConditionalPrior, LatentHead, SpatialContext


class CVAE(nn.Module):
    """Conditional VAE for p(Y_hr | X_lr, S).

    Parameters
    ----------
    in_channels : C, number of coarse predictor variables.
    n_statics : S_ch, number of static maps (may be 0; then ``statics`` may be None everywhere).
    lr_shape : (h, w) of the coarse grid, pixels.
    hr_shape : (H, W) of the high-resolution grid, pixels.
    config : sizes and options (``d_z``, ``base_filters``, ``d_x``, ``d_y``, ``prior``, ``decoder_statics``,
        ``dropout``).

    Notes
    -----
    Tensors: ``inputs`` (B, C, h, w) standardized; ``target`` (B, 1, H, W) normalized precipitation with invalid
    pixels already set to 0; ``statics`` (B, S_ch, H, W) or (1, S_ch, H, W), broadcast over the batch.
    With ``config.prior == "standard"`` the prior is N(0, I) and the model has no ``prior_net``.
    """

    def __init__(
        self,
        in_channels: int,
        n_statics: int,
        lr_shape: tuple[int, int],
        hr_shape: tuple[int, int],
        config: ModelConfig,
        dry_z: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if config.prior not in ("standard", "conditional"):
            raise ValueError(f"config.prior must be 'standard' or 'conditional', got {config.prior!r}")
        self.in_channels = int(in_channels)
        self.n_statics = int(n_statics)
        self.lr_shape = (int(lr_shape[0]), int(lr_shape[1]))
        self.hr_shape = (int(hr_shape[0]), int(hr_shape[1]))
        self.config = config
        self.d_z = config.d_z

        self.encoder_x = EncoderX(self.in_channels, config.d_x, config.base_filters, config.dropout)
        self.encoder_y = EncoderY(
            1 + self.n_statics, config.d_y, config.base_filters, n_scales(self.hr_shape), config.dropout
        )
        self.latent_head = LatentHead(config.d_y + config.d_x, config.d_z, config.dropout)
        self.prior_net = (
            ConditionalPrior(config.d_x, config.d_z, config.dropout) if config.prior == "conditional" else None
        )
        n_levels = n_scales(self.hr_shape)
        self.decoder = Decoder(
            config.d_z,
            config.d_x,
            self.hr_shape,
            config.base_filters,
            n_statics=self.n_statics,
            use_statics=config.decoder_statics,
            dropout=config.dropout,
            latent_scales=fit_latent_scales(tuple(config.latent_scales), self.hr_shape),
            latent_channels=config.latent_channels,
            encoder_channels=tuple(_channels(config.base_filters, k, ENCODER_WIDTH_CAP) for k in range(n_levels + 1)),
            output=config.output,
            dry_z=dry_z,
            width_cap=config.decoder_width_cap,
            block_width_cap=config.decoder_block_width_cap,
        )

    # -- shape checks: a wrong grid should fail here with a readable message, not deep inside a conv --

    def _check(self, name: str, tensor: torch.Tensor, channels: int, shape: tuple[int, int]) -> None:
        if tensor.dim() != 4 or tensor.shape[1] != channels or tuple(tensor.shape[-2:]) != shape:
            raise ValueError(
                f"{name}: expected shape (B, {channels}, {shape[0]}, {shape[1]}), got {tuple(tensor.shape)}"
            )

    def _statics(self, statics: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if self.n_statics == 0:
            return None
        if statics is None:
            raise ValueError(f"statics: the model was built with {self.n_statics} static maps, got None")
        self._check("statics", statics, self.n_statics, self.hr_shape)
        return _expand_batch(statics, batch)

    def _decoder_statics(self, statics: torch.Tensor | None, batch: int, n: int) -> torch.Tensor | None:
        """The static maps for decoding ``n`` draws of each of ``batch`` days: given once, (1, S_ch, H, W), they stay
        once (the decoder broadcasts them, :meth:`Decoder._head_conv`); given per day, each day's row is repeated
        ``n`` times. None when the decoder takes no statics."""
        if not self.decoder.use_statics:
            return None
        statics = self._statics(statics, batch)
        if statics.shape[0] == 1 or statics.stride(0) == 0:  # one set of maps, perhaps expanded: no copies
            return statics[:1]
        return statics.repeat_interleave(n, dim=0) if n > 1 else statics

    # -- the pieces --

    def encode_x(self, inputs: torch.Tensor) -> torch.Tensor:
        """Embed the coarse predictors: (B, C, h, w) -> h_X (B, d_x)."""
        self._check("inputs", inputs, self.in_channels, self.lr_shape)
        return self.encoder_x(inputs)

    def posterior(
        self, target: torch.Tensor, statics: torch.Tensor | None, h_x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of q(z | Y, X, S).

        Parameters
        ----------
        target : (B, 1, H, W) normalized precipitation.
        statics : (B or 1, S_ch, H, W), or None when the model has no statics.
        h_x : (B, d_x) from :meth:`encode_x`.

        Returns
        -------
        mu, logvar : (B, d_z) each.
        """
        mu, logvar, _ = self._posterior(target, statics, h_x)
        return mu, logvar

    @property
    def spatial(self) -> bool:
        """Whether the model has spatial latents."""
        return len(self.decoder.latents) > 0

    def _posterior(
        self, target: torch.Tensor, statics: torch.Tensor | None, h_x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
        """:meth:`posterior`, and the encoder's feature maps when the model has spatial latents."""
        self._check("target", target, 1, self.hr_shape)
        statics = self._statics(statics, target.shape[0])
        y = target if statics is None else torch.cat([target, statics.to(target.dtype)], dim=1)
        maps = None
        if self.spatial:
            h_y, maps = self.encoder_y.features(y)
        else:
            h_y = self.encoder_y(y)
        mu, logvar = self.latent_head(torch.cat([h_y, h_x], dim=1))
        return mu, logvar, maps

    def prior(self, h_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of p(z | X): (B, d_x) -> mu, logvar (B, d_z); zeros for the standard N(0, I) prior."""
        if self.prior_net is None:
            zeros = h_x.new_zeros(h_x.shape[0], self.d_z)
            return zeros, zeros.clone()
        return self.prior_net(h_x)

    def decode(
        self,
        z: torch.Tensor,
        h_x: torch.Tensor,
        statics: torch.Tensor | None,
        spatial: SpatialContext | None = None,
    ) -> torch.Tensor:
        """(B, d_z), (B, d_x), (B or 1, S_ch, H, W) or None -> (B, 1, H, W) normalized precipitation; spatial
        latents (if any) as ``spatial`` says (default: from their prior)."""
        statics = self._decoder_statics(statics, z.shape[0], 1)
        return self.decoder(z, h_x, statics, spatial)

    # -- training and sampling --

    def _decode_draws(
        self,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        h_x: torch.Tensor,
        statics: torch.Tensor | None,
        n: int,
        temperature: float,
        generator: torch.Generator | None,
        encoder_maps: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Decode ``n`` reparameterized draws of N(mu, temperature^2 exp(logvar)) per day: (B, n, 1, H, W); spatial
        latents from their posterior given ``encoder_maps``, else from their prior."""
        B = mu.shape[0]
        eps = _gaussian_noise((B, n, self.d_z), mu, generator)
        z = mu[:, None] + temperature * torch.exp(0.5 * logvar)[:, None] * eps
        # Decode all B * n draws as one batch; day b's draws are rows b*n ... b*n + n-1.
        h_rep = h_x.repeat_interleave(n, dim=0)
        statics_rep = self._decoder_statics(statics, B, n)
        maps = None if encoder_maps is None else [m.repeat_interleave(n, dim=0) for m in encoder_maps]
        spatial = SpatialContext(maps, temperature, generator)
        out = self.decoder(z.reshape(B * n, self.d_z), h_rep, statics_rep, spatial)
        return out.view(B, n, 1, *self.hr_shape)

    def forward(
        self,
        inputs: torch.Tensor,
        target: torch.Tensor,
        statics: torch.Tensor | None,
        generator: torch.Generator | None = None,
        n_prior: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Training pass: encode, draw one reparameterized posterior sample, decode it; with ``n_prior`` > 0 also
        decode that many reparameterized prior draws per day (for an ensemble loss term).

        Parameters
        ----------
        inputs : (B, C, h, w) standardized predictors.
        target : (B, 1, H, W) normalized precipitation (invalid pixels = 0).
        statics : (B or 1, S_ch, H, W), or None when the model has no statics.
        generator : source of the reparameterization noise (default: the global RNG).
        n_prior : prior draws decoded per day (0: none).

        Returns
        -------
        dict with "recon" (B, 1, H, W) normalized; "mu", "logvar" (B, d_z) of the posterior; "prior_mu",
        "prior_logvar" (B, d_z); "z" (B, d_z) the sample that was decoded; with ``n_prior`` > 0, "prior_samples"
        (B, n_prior, 1, H, W) normalized; with spatial latents "scale_kl" (factor -> (B, channels) KL of each latent
        map summed over its pixels) and "scale_pixels" (factor -> pixels of its maps).
        """
        h_x = self.encode_x(inputs)
        mu, logvar, maps = self._posterior(target, statics, h_x)
        prior_mu, prior_logvar = self.prior(h_x)
        z = mu + torch.exp(0.5 * logvar) * _gaussian_noise(tuple(mu.shape), mu, generator)
        spatial = SpatialContext(maps, 1.0, generator)
        recon = self.decode(z, h_x, statics, spatial)
        out = {
            "recon": recon,
            "mu": mu,
            "logvar": logvar,
            "prior_mu": prior_mu,
            "prior_logvar": prior_logvar,
            "z": z,
        }
        if self.spatial:
            out["scale_kl"] = spatial.kl
            out["scale_pixels"] = spatial.pixels
        if n_prior > 0:
            out["prior_samples"] = self._decode_draws(prior_mu, prior_logvar, h_x, statics, n_prior, 1.0, generator)
        return out

    def sample(
        self,
        inputs: torch.Tensor,
        statics: torch.Tensor | None,
        n_samples: int = 1,
        temperature: float = 1.0,
        mode: str = "prior",
        target: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw ``n_samples`` fields per day. Wrap in ``torch.no_grad()`` and call ``eval()`` first for inference.

        Parameters
        ----------
        inputs : (B, C, h, w) standardized predictors.
        statics : (B or 1, S_ch, H, W), or None when the model has no statics.
        n_samples : samples per day (K).
        temperature : multiplies the latent standard deviation; 0 decodes the latent mean.
        mode : "prior" — z from p(z | X) (N(0, I) for the standard prior); "posterior" — z from q(z | Y, X, S),
            which needs ``target``.
        target : (B, 1, H, W) normalized precipitation; required for ``mode="posterior"``.
        generator : source of the latent noise (default: the global RNG).

        Returns
        -------
        (B, n_samples, 1, H, W) normalized precipitation.
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        h_x = self.encode_x(inputs)
        maps = None
        if mode == "prior":
            mu, logvar = self.prior(h_x)
        elif mode == "posterior":
            if target is None:
                raise ValueError("sample(mode='posterior') needs the target field")
            mu, logvar, maps = self._posterior(target, statics, h_x)
        else:
            raise ValueError(f"mode must be 'prior' or 'posterior', got {mode!r}")
        return self._decode_draws(mu, logvar, h_x, statics, n_samples, temperature, generator, maps)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars in ``model``."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def flops_per_sample(
    model: CVAE,
    in_channels: int,
    n_statics: int,
    lr_shape: tuple[int, int],
    hr_shape: tuple[int, int],
    n_prior: int = 0,
) -> int:
    """Floating-point operations of one training forward pass (``model.forward``, with ``n_prior`` prior draws for an
    ensemble loss term) for a batch of one day.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts matrix products and convolutions
    (2 FLOPs per multiply-add) and ignores element-wise work (norms, activations, interpolation). A backward
    pass costs about twice as much again.

    Parameters
    ----------
    model : the model to measure (its train/eval state is restored afterwards).
    in_channels, n_statics : C and S_ch.
    lr_shape, hr_shape : (h, w) and (H, W), pixels.

    Returns
    -------
    int, FLOPs per sample.
    """
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    inputs = torch.zeros(1, in_channels, *lr_shape, device=device, dtype=dtype)
    target = torch.zeros(1, 1, *hr_shape, device=device, dtype=dtype)
    statics = torch.zeros(1, n_statics, *hr_shape, device=device, dtype=dtype) if n_statics > 0 else None
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(inputs, target, statics, n_prior=n_prior)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
