"""The architecture the layout promises: the core never imports Blender, the add-on never imports torch, the engine
never reaches up to training."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "diffusers", "peft", "transformers", "safetensors", "cv2", "mediapipe", "lpips", "gradio"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["engine", "training"])
def test_the_core_never_imports_blender(package):
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py") if "bpy" in imported_modules(p)]
    assert not offenders


def imports_training(path: Path) -> bool:
    """An import statement of `training`, or importlib/__import__ asked for it by name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in ("import_module", "__import__") and str(node.args[0].value).split(".")[0] == "training":
                return True
    return "training" in imported_modules(path)


def test_the_engine_imports_training_only_for_the_degrade_tab():
    """The engine is the floor training stands on; the web page's Degrade → Restore tab is the one optional use of
    training (engine/demo/degradation.py), and what both need lives in the engine (engine/measure/)."""
    offenders = [p.relative_to(ROOT).as_posix() for p in (ROOT / "engine").rglob("*.py") if imports_training(p)]
    assert offenders == ["engine/demo/degradation.py"]


def test_the_add_on_never_imports_torch_or_its_kin():
    offenders = {str(p.relative_to(ROOT)): sorted(imported_modules(p) & HEAVY)
                 for p in (ROOT / "blender_addon").rglob("*.py") if imported_modules(p) & HEAVY}
    assert not offenders


def test_no_engine_folder_is_a_crowd():
    """Past a dozen modules a folder gets subpackages (faces/, benches/, weights/, ...)."""
    for folder in [ROOT / "engine", *[p for p in (ROOT / "engine").iterdir() if p.is_dir()]]:
        modules = [p for p in folder.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
        assert len(modules) <= 12, f"{folder.relative_to(ROOT)} has {len(modules)} modules"
