"""The U-Net's training loss: multi-scale MSE + SSIM (+ perceptual).

It is called as ``total, parts = loss_fn(model(inputs), clean_images)`` and returns a scalar tensor to
back-propagate and a dict of plain floats for logging.

kornia's SSIM conventions, which bite here (kornia 0.9):

- ``kornia.losses.ssim_loss`` returns ``mean(clamp((1 - SSIM) / 2, 0, 1))``, i.e. HALF of the usual ``1 - SSIM``;
  it lies in [0, 1] (0 = identical, 0.5 = unrelated, 1 = perfectly anti-correlated). ``loss_ssim_weight``
  multiplies this value.
- ``max_val`` must be a Python ``float`` (``1.0`` for [0, 1] images; an int raises TypeError).
- Its ``eps=1e-12`` in the denominator biases SSIM of identical images below 1 (about 1e-5 loss for black
  images); we pass ``eps=0.0`` (the denominator is at least ``c1 * c2 > 0`` anyway), so identical images give a
  loss of exactly 0.
- ``padding="same"`` pads by reflection and needs H and W larger than ``window // 2``; the window is reduced
  (to the largest odd size not above the smaller side) at small scales.
- Half-precision inputs are evaluated in float32 by kornia; we also cast outputs to float32 so the loss is
  safe under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.losses import ssim_loss
from torch import nn

from .backbones import FeatureExtractor


def ssim_window_for(size: tuple[int, int], window: int) -> int:
    """The SSIM window actually used on an image of ``size`` (h, w): ``window`` reduced to fit, odd; 0 = none."""
    side = min(size)
    fit = side if side % 2 else side - 1
    w = min(window, fit)
    return w if w >= 3 else 0


def _to_device(module: nn.Module, device: torch.device) -> None:
    """Move ``module`` to ``device`` once, when it is not already there (the loss follows its inputs)."""
    first = next(module.parameters(), None)
    if first is not None and first.device != device:
        module.to(device)


class ReconstructionLoss(nn.Module):
    """Multi-scale reconstruction loss of the pixel U-Net.

    For each scale ``s`` in ``outputs`` (integer keys; other keys are ignored) the target is area-downsampled to
    the output's size (``adaptive_avg_pool2d``, an exact s x s mean for divisible sizes) and

        term_s = loss_mse_weight * MSE + loss_ssim_weight * kornia ssim_loss  [+ loss_perceptual_weight * P at s=1]
        total  = sum_s loss_scale_weights[s] * term_s

    where ``P`` is the MSE between :class:`FeatureExtractor` features of the full-scale reconstruction and of
    the target (the target's features without gradient). Terms with weight 0 are not computed.

    Args:
        config: a :class:`~colab_utils.config.Config` of the U-Net (its ``model`` fields ``out_scales``,
            ``loss_scale_weights``, ``loss_mse_weight``, ``loss_ssim_weight``, ``loss_perceptual_weight``,
            ``ssim_window``, ``feature_layers``, and ``backbone``, ``pretrained`` for the perceptual term).
        perceptual_extractor: the frozen extractor for the perceptual term; built from the config when
            ``loss_perceptual_weight > 0`` and none is given. It is a sub-module, so ``.to(device)`` moves it, and
            it is moved to the target's device automatically on first use.

    ``forward(outputs, target)``: ``outputs`` ``{s: (B, C, H // s, W // s)}`` in [0, 1], ``target`` (B, C, H, W)
    in [0, 1] -> ``(total, parts)``: a scalar float32 tensor (exactly 0 for identical images) and a dict
    ``{"mse@s", "ssim@s", "perceptual", "total"}`` of floats (unweighted terms, weighted total).
    """

    def __init__(self, config, perceptual_extractor: FeatureExtractor | None = None) -> None:
        super().__init__()
        m = config.model
        self.scale_weights = {int(s): float(w) for s, w in zip(m.out_scales, m.loss_scale_weights)}
        self.mse_weight = float(m.loss_mse_weight)
        self.ssim_weight = float(m.loss_ssim_weight)
        self.perceptual_weight = float(m.loss_perceptual_weight)
        self.ssim_window = int(m.ssim_window)
        if self.perceptual_weight > 0 and perceptual_extractor is None:
            perceptual_extractor = FeatureExtractor(config.backbone, layers=tuple(m.feature_layers), pretrained=config.pretrained)
        self.extractor = perceptual_extractor if self.perceptual_weight > 0 else None

    def forward(self, outputs: dict, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        scales = sorted(k for k in outputs if isinstance(k, int))
        if not scales:
            raise ValueError("outputs hold no reconstruction (no integer scale keys)")
        target = target.float()
        total = target.new_zeros(())
        names: list[str] = []
        values: list[torch.Tensor] = []
        for s in scales:
            if s not in self.scale_weights:
                raise ValueError(f"output scale {s} has no weight: Config.out_scales={tuple(self.scale_weights)}")
            out = outputs[s].float()
            tgt = target if out.shape == target.shape else F.adaptive_avg_pool2d(target, out.shape[-2:])
            if out.shape != tgt.shape:
                raise ValueError(f"output at scale {s} has shape {tuple(out.shape)}, target {tuple(tgt.shape)}")
            term = out.new_zeros(())
            if self.mse_weight:
                mse = F.mse_loss(out, tgt)
                term = term + self.mse_weight * mse
                names.append(f"mse@{s}")
                values.append(mse.detach())
            window = ssim_window_for(tuple(out.shape[-2:]), self.ssim_window)
            if self.ssim_weight and window:
                ssim = ssim_loss(out, tgt, window_size=window, max_val=1.0, eps=0.0)
                term = term + self.ssim_weight * ssim
                names.append(f"ssim@{s}")
                values.append(ssim.detach())
            if s == 1 and self.extractor is not None:
                _to_device(self.extractor, out.device)
                with torch.no_grad():
                    f_target = self.extractor(tgt)
                perceptual = F.mse_loss(self.extractor(out).float(), f_target.float())
                term = term + self.perceptual_weight * perceptual
                names.append("perceptual")
                values.append(perceptual.detach())
            total = total + self.scale_weights[s] * term
        names.append("total")
        values.append(total.detach())
        parts = dict(zip(names, torch.stack(values).tolist()))  # one device sync for all parts
        return total, parts
