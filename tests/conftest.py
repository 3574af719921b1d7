import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    from tiny_base import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def tiny_weights(tiny_base, tmp_path_factory) -> Path:
    """A checkpoint for the tiny base with non-trivial (random) trained parts."""
    from tiny_base import write_tiny_checkpoint

    return write_tiny_checkpoint(tiny_base, tmp_path_factory.mktemp("weights") / "tiny.safetensors")

try:
    import bpy  # noqa: F401
except ImportError:  # the Blender tests run in .venv-blender (build.py test runs both suites)
    collect_ignore = ["blender"]
