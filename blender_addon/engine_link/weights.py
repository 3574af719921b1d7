"""What `--weights` names, decided the same way by the engine and the add-on (standard library only)."""
from __future__ import annotations

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
