"""A restorer fine-tuned from another one that already works (`python -m training fit/train --init WEIGHTS`).

The model is the init as the engine runs it (its own LoRA merged: UNet, VAE, skip convs, conv_in, prompt embedding and
recipe) plus a new LoRA on top, and only that new LoRA trains. peft's gaussian init sets its B to 0, so at step 0 the
model is the init exactly, and zeroing the new LoRA of any later checkpoint gives the init back: the lineage is real,
not a copy. The checkpoint holds the new LoRA and the prompt embedding; its metadata names the init (`init`: id and
fingerprint), and loading it loads the init from there, checks the fingerprint and adds the LoRA.

The fingerprint is of the files that hold the init's weights, not of loaded tensors, so a wrong init is refused before
seconds of loading: for a checkpoint file, the SHA-256 of its bytes (its metadata names its own base or init by
fingerprint, so a chain of fine-tunes is pinned all the way down); for a Difix folder, of its UNet and VAE weight
files' bytes and its UNet, VAE and scheduler configs (as parsed, so a re-saved config with another diffusers version
stamp still matches). Hashing NVIDIA's 3.5 GB of weights takes a few seconds; a 70 MB checkpoint a fraction of one.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from blender_addon.engine_link.weights import looks_like_hub_id

from .base import read_config, resolve_base
from .checkpoint import CheckpointError, CheckpointInfo
from ..model import LoraSpec, Pix2PixTurbo, add_lora

WEIGHT_FILE = re.compile(r"diffusion_pytorch_model(-\d+-of-\d+)?\.(safetensors|bin)$")


def init_id(weights: str | os.PathLike) -> str:
    """How a checkpoint names its init: an existing path made absolute (the engine may run from another folder),
    anything else as given (a hub id)."""
    path = Path(weights).expanduser()
    return str(path.resolve()) if path.exists() else str(weights)


def init_fingerprint(weights: str | os.PathLike) -> str:
    from .loading import is_checkpoint_file

    h = hashlib.sha256()
    if is_checkpoint_file(weights):
        _hash_file(h, Path(weights))
        return h.hexdigest()[:16]
    folder = resolve_base(weights, role="weights")
    for sub in ("unet", "vae"):
        files = sorted(p for p in (folder / sub).iterdir() if WEIGHT_FILE.match(p.name))
        if any(p.suffix == ".safetensors" for p in files):  # what diffusers loads when both are there
            files = [p for p in files if p.suffix == ".safetensors"]
        if not files:
            raise CheckpointError(f"weights folder {folder} has no {sub}/diffusion_pytorch_model.safetensors")
        for path in files:
            h.update(f"{sub}/{path.name}\n".encode())
            _hash_file(h, path)
    for name in ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"):
        h.update(json.dumps(read_config(folder, name), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)


def start_from_init(weights: str | os.PathLike, lora: LoraSpec, base: str | None = None,
                    accept_license: bool = False) -> tuple[Pix2PixTurbo, CheckpointInfo]:
    """The init restorer with its LoRA merged and a new, zero LoRA (`lora`) on top; only the new LoRA is trainable.
    Returns the model and the init's recipe."""
    from .loading import load_restorer

    model, info = load_restorer(weights, base, merge=True, accept_license=accept_license)
    add_lora(model.unet, model.vae, lora)
    model.lora_only = True
    return model, info


def lineage(weights: str | os.PathLike, info: CheckpointInfo, base: str | None = None) -> dict:
    """What a fine-tune's checkpoint records of its init (`info`: the init's recipe)."""
    record = {"weights": init_id(weights), "fingerprint": init_fingerprint(weights), "source": info.source,
              "license": info.license}
    if base:
        record["base"] = init_id(base)
    return record


def find_init(checkpoint: Path, init: dict, given: str | None) -> str:
    """Where the init is now: `given` (the engine's --base, which for a fine-tune names its init), else the recorded
    id, else a file or folder of the same name next to the checkpoint (a run folder moved with its init in it)."""
    if given:
        return given
    recorded = init["weights"]
    if Path(recorded).expanduser().exists() or looks_like_hub_id(recorded):
        return recorded
    beside = checkpoint.parent / Path(recorded).name
    if beside.exists():
        return str(beside)
    raise CheckpointError(f"weights file {checkpoint} is a fine-tune of {recorded}, which does not exist (nor "
                          f"{beside}); put the init back, or name it with --base PATH")


def load_finetuned(checkpoint: str | os.PathLike, info: CheckpointInfo, given: str | None = None,
                   check: bool = True, accept_license: bool = False) -> Pix2PixTurbo:
    """The init (found, then checked against its recorded fingerprint) with this checkpoint's LoRA, not merged."""
    from .checkpoint import load_trainable_state, read_checkpoint

    checkpoint = Path(checkpoint)
    init = find_init(checkpoint, info.init, given)
    if check:
        found = init_fingerprint(init)
        if found != info.init.get("fingerprint"):
            raise CheckpointError(
                f"weights file {checkpoint} was fine-tuned from {info.init['weights']} (fingerprint "
                f"{info.init.get('fingerprint')}), but the init at {init} has fingerprint {found}: it is another "
                f"restorer or was changed since; name the right one with --base PATH")
    model, _ = start_from_init(init, info.lora, info.init.get("base"), accept_license)
    _, tensors = read_checkpoint(checkpoint)
    # the init's own embedding, as trained with; kept in the file so the engine needs no text encoder for it
    model.register_buffer("prompt_embeds", tensors.pop("prompt_embeds").float(), persistent=False)
    load_trainable_state(model, tensors, f"weights file {checkpoint}")
    return model
