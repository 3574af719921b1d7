"""Running the restorer on frames: device and dtype, batching, padding and tiling. Pure arrays in and out."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import defaultdict
from typing import Iterable

import numpy as np
import torch

from blender_addon.engine_link.licenses import license_by_id

from . import __version__
from .weights.checkpoint import CheckpointInfo
from .fastpath import FastForward
from .jobs import UsageError
from .weights.loading import load_restorer
from .model import Pix2PixTurbo
from .tiling import blend_tiles, pad_to_multiple, plan_tiles

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
REFERENCES_KEPT = 4  # reference arrays whose latents a runner keeps (the service's photo cache holds as many)


class DeviceError(ValueError):
    """A device that cannot be used, or a model that does not fit on it: one line a user can act on."""


class ReferenceError(UsageError):  # noqa: A001 - the engine's name for it; Python's weakref one is never used here
    """A reference photo given to weights that cannot use one, missing for weights that need one, or unusable."""


def reference_problem(views: int, reference: str | None, weights: str) -> str | None:
    """Why weights with `views` (from their recipe) cannot run with the reference photo named `reference` (None:
    no reference), or None. `weights` as messages name them ("the weights nvidia/difix_ref")."""
    from .faces.reference import cannot_use, needs_one

    if views == 1 and reference is not None:
        return cannot_use(reference, weights)
    if views > 1 and reference is None:
        return needs_one(weights)
    return None


def fit_reference(reference: np.ndarray, h: int, w: int) -> np.ndarray:
    """The reference at (h, w): centre-cropped to that aspect (nothing stretched), then resized (INTER_AREA)."""
    import cv2

    rh, rw = reference.shape[:2]
    if rh * w > rw * h:  # taller than the job: keep the middle rows
        keep = max(1, round(rw * h / w))
        reference = reference[(rh - keep) // 2:(rh - keep) // 2 + keep]
    else:
        keep = max(1, round(rh * w / h))
        reference = reference[:, (rw - keep) // 2:(rw - keep) // 2 + keep]
    if reference.shape[:2] != (h, w):
        reference = cv2.resize(reference, (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(reference, dtype=np.float32)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name} asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
                              f"use --device cpu, or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"--device {name} asked for, but this machine has {count} CUDA GPU"
                              f"{'s' if count != 1 else ''} (cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("--device mps asked for, but Metal is not available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def list_devices() -> list[dict]:
    """The devices `--device` takes here, for the add-on's GPU menu: id, name, and for GPUs total and free memory
    in bytes."""
    devices = [{"id": "cpu", "name": f"CPU ({os.cpu_count()} threads)"}]
    for k in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        free, total = torch.cuda.mem_get_info(k)
        devices.append({"id": f"cuda:{k}", "name": torch.cuda.get_device_name(k), "memory": total, "free": free})
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append({"id": "mps", "name": "Apple Metal"})
    return devices


def nvidia_gpus(timeout: float = 5.0) -> list[str]:
    """GPU names nvidia-smi lists, or [] (no driver tools, no GPU, or no answer in time)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        r = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                           timeout=timeout, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in r.stdout.splitlines() if line.strip()] if r.returncode == 0 else []


def unused_gpu_note(requested: str, device: torch.device, gpus: list[str], torch_cuda: str | None,
                    torch_version: str = torch.__version__) -> str | None:
    """What to tell a user whose frames run on the CPU although an NVIDIA GPU is there; None if nothing to say."""
    if requested != "auto" or device.type != "cpu" or not gpus:
        return None  # --device cpu was a choice, not an accident
    seen = f"nvidia-smi sees {', '.join(gpus)}, but the engine runs on the CPU (much slower)"
    if torch_cuda is None:  # PyPI's Windows wheels, and any +cpu wheel, have no CUDA at all
        release = torch_version.split("+")[0]
        return (f"{seen}: this torch {torch_version} is a CPU-only build. Install a CUDA build into the engine's "
                f"venv: python -m pip install --force-reinstall torch=={release} "
                f"--index-url https://download.pytorch.org/whl/cu128")
    return (f"{seen}: torch {torch_version} is built for CUDA {torch_cuda} but cannot use the GPU; update the "
            f"NVIDIA driver (nvidia-smi shows the CUDA version it supports) or install a torch built for an older "
            f"CUDA")


def warn_if_gpu_unused(requested: str, device: torch.device) -> None:
    if requested == "auto" and device.type == "cpu":  # nvidia-smi is only asked when it could matter
        note = unused_gpu_note(requested, device, nvidia_gpus(), torch.version.cuda)
        if note:
            print(f"note: {note}", file=sys.stderr)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


class ModelRunner:
    """A loaded restorer. `restore` takes float32 (H, W, 3) arrays in [0, 1] of any size and returns the same."""

    def __init__(self, model: Pix2PixTurbo, info: CheckpointInfo | None = None, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 1, tile: int | None = None, overlap: int | None = None,
                 compile: str = "auto", compile_cache: str | None = None):
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        try:
            self.model = model.to(self.device, self.dtype).eval()
        except torch.OutOfMemoryError:
            raise DeviceError(f"out of memory loading the model onto {self.device} ({self.dtype}): free the GPU "
                              f"(other programs, another engine), pick another with --device cuda:N, or use "
                              f"--device cpu") from None
        self.forward = FastForward(self.model, self.device, compile, compile_cache)
        self.info = info
        self.name = info.source if info else "this restorer"  # what errors call the weights
        # the last few reference arrays given (newest last), each with its latent per model-call shape: a run
        # encodes its photo once per shape, and faces mode alternates the whole photo and its face crop
        self._references: list[tuple[np.ndarray, dict]] = []
        self.batch_size = max(1, int(batch_size))
        # every model call is padded to one of these batch sizes, so a session compiles a few shapes, once each
        self.buckets = sorted({1, self.batch_size})
        # the size the model was trained at (512 for SD-Turbo): face crops are cut at it, larger frames tiled at it
        self.model_size = int(model.unet.config.sample_size * 8)
        self.tile = int(tile or self.model_size)
        self.overlap = int(overlap if overlap is not None else self.tile // 8) // 8 * 8
        if self.tile % 8 or self.tile < 64 or self.overlap >= self.tile:
            raise ValueError(f"tile must be a multiple of 8 of at least 64 with overlap < tile; got tile "
                             f"{self.tile}, overlap {self.overlap}")
        # tiles and face crops, the shapes most frames come in; frames of other sizes are compiled when first seen
        self.forward.compile_async((b, 3, side, side) for side in sorted({self.tile, self.model_size})
                                   for b in self.buckets)

    @classmethod
    def from_pretrained(cls, weights: str | os.PathLike, base: str | None = None, accept_license: bool = False,
                        **kwargs) -> "ModelRunner":
        pick_device(kwargs.get("device", "auto"))  # a bad --device fails before a minute of loading
        model, info = load_restorer(weights, base, accept_license=accept_license)
        runner = cls(model, info, **kwargs)
        runner.name = str(weights)
        return runner

    @property
    def takes_reference(self) -> bool:
        """Whether these weights restore each frame beside a reference photo (Difix-ref, reference-trained)."""
        return self.model.config.views == 2

    def describe(self) -> dict:
        info = self.info
        lic = license_by_id(info.license) if info else None
        return {"device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "batch_size": self.batch_size, "tile": self.tile, "overlap": self.overlap,
                "base": info.base if info else None, "prompt": info.prompt if info else None,
                "source": info.source if info else None, "license": lic.describe() if lic else None,
                "compile": self.forward.status(), "takes_reference": self.takes_reference}

    @property
    def provenance(self) -> dict[str, str]:
        """Text written into each restored PNG: which model made it, under which licence."""
        if self.info is None:
            return {}
        lic = license_by_id(self.info.license)
        text = {"Software": f"Splat Restore {__version__}", "Splat Restore model": self.info.source}
        if lic:
            text["Splat Restore license"] = lic.describe()
        return text

    def bucket(self, n: int) -> int:
        """The batch size a call with `n` frames is padded to."""
        return next((b for b in self.buckets if b >= n), n)

    def _to_model(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device).permute(0, 3, 1, 2)
        return x.to(self.dtype) * 2 - 1

    @torch.inference_mode()
    def reference_latent(self, reference: np.ndarray, h: int, w: int) -> torch.Tensor:
        """The reference's latent for model calls of (h, w), encoded on first use. References are told apart by
        identity: another array (a new photo) is encoded afresh, and the oldest of REFERENCES_KEPT is let go."""
        entry = next((e for e in self._references if e[0] is reference), None)
        if entry is None:
            if reference.ndim != 3 or reference.shape[2] != 3 or not np.issubdtype(reference.dtype, np.floating):
                raise ReferenceError(f"the reference photo must be float RGB (H, W, 3) in [0, 1], not "
                                     f"{reference.dtype} {reference.shape}")
            entry = (reference, {})
            self._references = self._references[-(REFERENCES_KEPT - 1):] + [entry]
        latents = entry[1]
        if (h, w) not in latents:
            x = self._to_model(fit_reference(reference, h, w)[None])
            latents[(h, w)] = self.model.encode_reference(x).contiguous()
        return latents[(h, w)]

    @torch.inference_mode()
    def run_model(self, batch: np.ndarray, reference_latent: torch.Tensor | None = None) -> np.ndarray:
        """(N, H, W, 3) float [0, 1], H and W multiples of 8 -> same shape, restored. Padded with black frames to
        a bucket's batch size (a new batch size would be a new compile); their outputs are dropped.
        `reference_latent` (from `reference_latent`) goes beside every frame for weights that take a reference."""
        n = len(batch)
        if self.bucket(n) > n:
            batch = np.concatenate([batch, np.zeros((self.bucket(n) - n, *batch.shape[1:]), batch.dtype)])
        x = self._to_model(batch)
        y = self.forward(x) if reference_latent is None else self.forward(x, reference_latent)
        out = ((y[:n].float() + 1) * 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        if self.dtype != torch.float32 and np.isnan(out).any():  # the VAE configs say force_upcast: be sure
            raise RuntimeError(f"the model overflowed in {str(self.dtype).replace('torch.', '')} on this frame; "
                               f"restore it with --dtype fp32")
        return out

    def restore(self, images: Iterable[np.ndarray], tiled: bool = True,
                reference: np.ndarray | None = None) -> list[np.ndarray]:
        """tiled=False restores each image in one piece whatever --tile says (face crops at the model's size).
        `reference`: float32 (H, W, 3) RGB in [0, 1] of any size, for weights that take one (`takes_reference`);
        each model call gets it cropped and resized to its own shape (a tile, a frame, a face crop)."""
        problem = reference_problem(self.model.config.views, None if reference is None else "reference photo",
                                    f"the weights {self.name}")
        if problem:
            raise ReferenceError(problem)
        images = list(images)
        jobs = []  # (image index, tile or None, padded array)
        plans = {}
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            if not tiled or (h <= self.tile and w <= self.tile):
                jobs.append((i, None, pad_to_multiple(img, 8)))
                continue
            padded = pad_to_multiple(img, 8)
            tiles = plan_tiles(padded.shape[0], padded.shape[1], self.tile, self.overlap)
            plans[i] = (tiles, padded.shape[:2])
            jobs += [(i, t, padded[t.y:t.y + t.h, t.x:t.x + t.w]) for t in tiles]
        by_shape = defaultdict(list)
        for j, job in enumerate(jobs):
            by_shape[job[2].shape].append(j)
        outputs = [None] * len(jobs)
        for shape, indices in by_shape.items():
            latent = None if reference is None else self.reference_latent(reference, *shape[:2])
            for k in range(0, len(indices), self.batch_size):
                chunk = indices[k:k + self.batch_size]
                for j, out in zip(chunk, self.run_model(np.stack([jobs[j][2] for j in chunk]), latent)):
                    outputs[j] = out
        per_image = defaultdict(list)
        for (i, tile, _), out in zip(jobs, outputs):
            per_image[i].append((tile, out))
        results = []
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            mine = per_image[i]
            if i in plans:
                tiles, (ph, pw) = plans[i]
                full = blend_tiles([t for t, _ in mine], [o for _, o in mine], ph, pw, self.overlap)
            else:
                full = mine[0][1]
            results.append(np.ascontiguousarray(full[:h, :w]))
        return results
