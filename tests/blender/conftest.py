"""Fixtures for the tests that run inside real Blender (the `bpy` wheel, in .venv-blender).

The engine runs from the main venv (its own interpreter), as it does for artists: Blender's Python never has torch.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="splat_blender_user_"))
bpy = pytest.importorskip("bpy")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from blender_addon.engine_link.client import find_venv_python  # noqa: E402


def engine_python() -> str:
    found = os.environ.get("SPLAT_RESTORE_ENGINE_PYTHON") or find_venv_python(ROOT)
    if not found:
        pytest.fail("no engine interpreter: run `python build.py setup` first")
    return str(found)


def run_engine(*args, **kw):
    return subprocess.run([engine_python(), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, **kw)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    code = ("import sys; from pathlib import Path; sys.path.insert(0, 'tests'); "
            "from tiny_base import make_tiny_base, write_tiny_checkpoint; "
            f"b = make_tiny_base(Path(r'{folder}') / 'base'); "
            f"write_tiny_checkpoint(b, Path(r'{folder}') / 'tiny.safetensors')")
    r = run_engine("-c", code)
    assert r.returncode == 0, r.stderr
    return folder / "tiny.safetensors"


@pytest.fixture(scope="session")
def tiny_difix(tmp_path_factory):
    """A tiny model in NVIDIA Difix's published layout, built by the engine's Python."""
    folder = tmp_path_factory.mktemp("difix") / "difix"
    r = run_engine("-c", f"import sys; from pathlib import Path; sys.path.insert(0, 'tests'); "
                         f"from tiny_base import make_tiny_difix; make_tiny_difix(Path(r'{folder}'))")
    assert r.returncode == 0, r.stderr
    return folder


@pytest.fixture(scope="session")
def addon(tiny_weights):
    import addon_utils

    bpy.ops.wm.read_factory_settings(use_empty=True)
    module = addon_utils.enable("blender_addon", default_set=True)
    assert module is not None, "the add-on did not enable"
    prefs = bpy.context.preferences.addons["blender_addon"].preferences
    prefs.engine_python, prefs.weights, prefs.device = engine_python(), str(tiny_weights), "cpu"
    yield prefs
    addon_utils.disable("blender_addon", default_set=True)


@pytest.fixture(autouse=True)
def no_exit_code_from_failed_restores():
    """Tests that fail restores on purpose must not turn this pytest process's exit code into 1."""
    yield
    if "blender_addon.exit_status" in sys.modules:
        sys.modules["blender_addon.exit_status"].FAILURES.clear()


@pytest.fixture
def scene(addon):
    from scene import build_scene

    return build_scene()


def engine_restore(src: Path, out_dir: Path, weights: Path) -> Path:
    r = run_engine("-m", "engine", "restore", src, "-o", out_dir, "--weights", weights, "--device", "cpu",
                   "--overwrite")
    assert r.returncode == 0, r.stderr
    return out_dir / src.name
