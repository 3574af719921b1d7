"""The engine wheel `build.py addon` puts in the extension zip for Install Engine."""
import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine_wheel import build_engine_wheel, engine_requirements, project  # noqa: E402


@pytest.fixture(scope="module")
def addon_zip():
    r = subprocess.run([sys.executable, str(ROOT / "build.py"), "addon"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return zipfile.ZipFile(r.stdout.strip().splitlines()[-1])


def test_the_wheel_is_pure_python_and_holds_only_what_the_engine_runs(tmp_path):
    wheel = build_engine_wheel(tmp_path)
    assert wheel.name == "splat_restore-0.1.0-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "engine/cli.py" in names and "engine/configs/sd-turbo/unet_config.json" in names
    assert "blender_addon/engine_link/protocol.py" in names
    assert not [n for n in names if n.startswith("training/") or n == "blender_addon/operators.py"]
    meta = zipfile.ZipFile(wheel).read("splat_restore-0.1.0.dist-info/METADATA").decode()
    assert 'Requires-Dist: numpy<2; extra == "faces"' in meta and "Requires-Dist: diffusers>=0.30" in meta


def test_rebuilding_gives_the_same_bytes(tmp_path):
    """Install Engine stamps the wheel's hash: an unchanged engine must not look like an upgrade."""
    first = build_engine_wheel(tmp_path / "a").read_bytes()
    assert build_engine_wheel(tmp_path / "b").read_bytes() == first


def test_the_installed_wheel_runs_the_engine_without_the_checkout(tmp_path):
    wheel = build_engine_wheel(tmp_path)
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, wheel],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-c", "import engine.cli, json; print(json.dumps(engine.__file__))"],
                       capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(target)})
    assert r.returncode == 0, r.stderr
    assert Path(json.loads(r.stdout)).is_relative_to(target)


def test_the_addon_zip_carries_the_wheel_and_its_pins_outside_the_manifest(addon_zip):
    zf = addon_zip
    assert "engine_wheel/splat_restore-0.1.0-py3-none-any.whl" in zf.namelist()
    pins = json.loads(zf.read("engine_wheel/pins.json"))
    assert pins == {"torch": os.environ.get("SPLAT_RESTORE_TORCH", "torch==2.13.0"),
                    "mediapipe": "mediapipe==0.10.21"}
    assert b"wheels" not in zf.read("blender_manifest.toml")


def test_the_addon_zip_pins_the_engines_dependencies_at_the_versions_the_tests_run_with(addon_zip):
    """These tests run in the engine venv: what the zip pins is what is installed here, down to the dependencies
    of dependencies; torch and mediapipe keep their own pins (pins.json, $SPLAT_RESTORE_TORCH)."""
    shipped = addon_zip.read("engine_wheel/constraints.txt").decode()
    pinned = dict(line.split("==") for line in shipped.splitlines())
    for name in ("diffusers", "transformers", "peft", "huggingface-hub", "numpy", "opencv-python-headless",
                 "protobuf", "tokenizers", "filelock"):
        assert pinned[name] == metadata.version(name), name
    assert "torch" not in pinned and "mediapipe" not in pinned
    # computed in a fresh interpreter, as build.py does: importing setuptools (some earlier test may have) puts its
    # vendored packages' metadata on this process's path
    code = "import engine_wheel as w; print(w.installed_constraints(w.engine_requirements(w.project())), end='')"
    fresh = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert shipped == fresh.stdout


@pytest.mark.parametrize("requirement", engine_requirements(project()))
def test_every_engine_requirement_stops_before_the_next_major_version(requirement):
    req = Requirement(requirement)
    tested = Version(metadata.version(req.name))
    assert tested in req.specifier, f"{requirement}: the tests run with {tested}"
    assert Version(f"{tested.major + 1}") not in req.specifier, f"{requirement}: no bound below {tested.major + 1}"
