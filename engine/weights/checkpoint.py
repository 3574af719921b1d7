"""ModelRunner checkpoints: one .safetensors file with what training changes, the prompt embedding and JSON metadata.

Tensor keys are the model's parameter names with peft's adapter name and `.base_layer` taken out
(`unet.down_blocks.0.attentions.0.proj_in.lora_A.weight`, `vae.decoder.skip_conv_1.weight`), so they do not depend
on how the adapters were named when the file was written.

A fine-tune of a restorer that works (`training --init`) holds only its new LoRA and the prompt embedding; its
metadata's `init` names the restorer it starts from (weights/lineage.py rebuilds it from there).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..model import LoraSpec, RestorerConfig, Pix2PixTurbo

FORMAT = "splat-restore"
# 2: the `init` lineage. Files without one are still written as 1, so engines from before it read them; an older
# engine given a fine-tune of an init says "update Splat Restore" instead of failing on its tensors.
FORMAT_VERSION = 2
META_KEY = "splat_restore"
PROMPT_KEY = "prompt_embeds"


class CheckpointError(RuntimeError):
    pass


@dataclass
class CheckpointInfo:
    """The recipe behind a set of weights: where LoRA sits (lora), how the forward runs (restorer), which base and
    prompt, where it came from, and the licence its owner put on it (licenses.LICENSES id, "" for none)."""
    lora: LoraSpec
    restorer: RestorerConfig
    base: str
    base_fingerprint: str
    prompt: str
    source: str = "splat-restore"
    notes: list = field(default_factory=list)
    license: str = ""
    # for a fine-tune of another restorer: {"weights": its id (path or hub id), "fingerprint": of its weights,
    # "source", "license", and "base" when it was loaded on another base than its own}; empty otherwise
    init: dict = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        d.update(format=FORMAT, format_version=FORMAT_VERSION if self.init else 1)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CheckpointInfo":
        d = json.loads(text)
        if d.get("format") != FORMAT:
            raise ValueError(f"format is {d.get('format')!r}, not {FORMAT!r}")
        if d.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"format version {d['format_version']} is newer than this engine reads "
                             f"({FORMAT_VERSION}); update Splat Restore")
        return cls(lora=LoraSpec(**d["lora"]), restorer=RestorerConfig(**d["restorer"]), base=d["base"],
                   base_fingerprint=d["base_fingerprint"], prompt=d["prompt"], source=d.get("source", ""),
                   notes=d.get("notes", []), license=d.get("license", ""), init=d.get("init") or {})


_ADAPTER_SEGMENT = re.compile(r"\.(lora_[AB]|lora_embedding_[AB])\.[^.]+\.")


def canonical_key(name: str) -> str:
    """`...conv1.lora_A.vae_skip.weight` -> `...conv1.lora_A.weight`;
    `...conv.base_layer.weight` -> `...conv.weight`."""
    return _ADAPTER_SEGMENT.sub(r".\1.", name).replace(".base_layer.", ".")


def trainable_state(model: Pix2PixTurbo) -> dict[str, torch.Tensor]:
    ids = {id(p) for p in model.trainable_parameters()}
    return {canonical_key(n): p.detach() for n, p in model.named_parameters() if id(p) in ids}


def save_checkpoint(path: str | os.PathLike, model: Pix2PixTurbo, info: CheckpointInfo) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.to("cpu", torch.float32).contiguous() for k, v in trainable_state(model).items()}
    tensors[PROMPT_KEY] = model.prompt_embeds.to("cpu", torch.float32).contiguous()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: info.to_json()})


def read_info(path: str | os.PathLike) -> CheckpointInfo:
    """Only the metadata (cheap: the header), with every way a file can be wrong reported against its name."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"weights file {path} is not a readable .safetensors file (truncated or another "
                              f"format?): {e}") from None
    if META_KEY not in meta:
        raise CheckpointError(f"weights file {path} is a safetensors file but not a Splat Restore checkpoint "
                              f"(no '{META_KEY}' metadata). A pix2pix-turbo .pkl can be converted with "
                              f"`python -m engine import-pix2pix-turbo`")
    try:
        return CheckpointInfo.from_json(meta[META_KEY])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"weights file {path} has unreadable Splat Restore metadata: {e}") from None


def read_checkpoint(path: str | os.PathLike) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    info = read_info(path)
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"weights file {path} could not be read: {e}") from None
    if PROMPT_KEY not in tensors:
        raise CheckpointError(f"weights file {path} has no prompt embedding ('{PROMPT_KEY}')")
    return info, tensors


def load_trainable_state(model: Pix2PixTurbo, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy tensors into the model's trainable parameters; every one must be there with the right shape."""
    params = {canonical_key(n): p for n, p in model.named_parameters()}
    wanted = set(trainable_state(model))
    given = set(tensors) - {PROMPT_KEY}
    missing, unexpected = sorted(wanted - given), sorted(given - wanted)
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit this model: {len(missing)} missing tensors "
                              f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}). "
                              f"Was it made for another base or LoRA layout?")
    with torch.no_grad():
        for key in wanted:
            p, t = params[key], tensors[key]
            if p.shape != t.shape:
                raise CheckpointError(f"{source}: tensor {key} has shape {tuple(t.shape)}, the model expects "
                                      f"{tuple(p.shape)}. Was it made for another base?")
            p.copy_(t.to(p.dtype))
