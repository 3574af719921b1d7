"""What `--weights` names, decided the same way by the engine and the add-on (standard library only)."""
from __future__ import annotations

import json
from pathlib import Path

DIFIX_HUB_ID = "nvidia/difix"
# the add-on's Model choice: (id, label, description)
MODELS = (("checkpoint", "My checkpoint", "Weights you trained or imported (.safetensors)"),
          ("difix", "NVIDIA Difix (non-commercial)",
           "NVIDIA's published Difix weights: a restorer on day one, for non-commercial use only"))


def looks_like_hub_id(text: str) -> bool:
    """`org/name`, not a path: no leading ./ / ~, no backslash, exactly one slash."""
    return not text.startswith((".", "/", "~")) and "\\" not in text and text.count("/") == 1 \
        and not text.endswith("/") and not Path(text).is_absolute()


def weights_exist(weights: str) -> bool:
    """A file or folder here, or a hub id the engine looks up in its Hugging Face cache."""
    return bool(weights) and (Path(weights).exists() or looks_like_hub_id(weights))


DIFIX_REF_HUB_ID = "nvidia/difix_ref"
HEADER_LIMIT = 100 * 1024 * 1024  # a safetensors header larger than this is no checkpoint of ours


def takes_reference(weights: str) -> bool:
    """Whether `weights` restore with a reference photo, told without loading them (the add-on's panel note; the
    engine's ready line says it for sure once they are loaded): NVIDIA's Difix-ref by hub id or by its layout, or a
    Splat Restore checkpoint whose recipe says it takes two views (training --reference)."""
    if not weights:
        return False
    path = Path(weights)
    try:
        if path.is_dir():
            return _difix_ref_folder(path)
        if path.is_file():
            return _checkpoint_views(path) == 2
    except (OSError, ValueError, AttributeError, TypeError):  # unreadable or not ours: the engine will say
        return False
    return looks_like_hub_id(weights.strip()) and weights.strip().lower() == DIFIX_REF_HUB_ID


def _difix_ref_folder(folder: Path) -> bool:
    """As the engine tells Difix-ref's layout (weights/published.py views_of): model_index.json's "unet" entry names
    a library other than diffusers (the hub-side multi-view UNet code)."""
    index = folder / "model_index.json"
    if not index.is_file():
        return False
    unet = json.loads(index.read_text(encoding="utf-8")).get("unet")
    return isinstance(unet, list) and bool(unet) and isinstance(unet[0], str) and unet[0] != "diffusers"


def _checkpoint_views(path: Path) -> int:
    """restorer.views from a checkpoint's safetensors header (1 where it says nothing)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 0 < size <= HEADER_LIMIT:
            return 1
        header = json.loads(f.read(size))
    meta = (header.get("__metadata__") or {}).get("splat_restore")
    restorer = json.loads(meta).get("restorer", {}) if isinstance(meta, str) else {}
    return int(restorer.get("views", 1)) if isinstance(restorer, dict) else 1
