"""The engine as a pure-Python wheel, written with the standard library, for the extension zip to carry.

The add-on's Install Engine pip-installs this wheel into the venv it makes (blender_addon/engine_install.py). It holds
what `python -m engine` runs: the `engine` package (with its configs) and the torch-free `blender_addon.engine_link`
it imports (with `blender_addon/__init__.py`, which imports bpy only inside register(), never called there). Not
training, not the add-on's bpy modules. Written by hand rather than by setuptools so that `build.py addon` needs no
build backend from a registry, and so that the bytes depend only on the sources: a rebuilt zip carries the same
wheel, and Install Engine sees nothing to do.
"""
from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
EXTRA = "faces"  # what the engine needs for face-aware restore; mediapipe itself comes --no-deps (see pyproject)
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the oldest a zip can record: no build time in the bytes
# pinned by the zip's pins.json instead, where $SPLAT_RESTORE_TORCH may replace torch's pin
PINNED_ELSEWHERE = ("torch", "mediapipe")


def wheel_files(root: Path = ROOT) -> list[Path]:
    files = [p for p in sorted((root / "engine").rglob("*")) if p.suffix in (".py", ".json")]
    files += [root / "blender_addon" / "__init__.py"]
    files += sorted((root / "blender_addon" / "engine_link").glob("*.py"))
    return [p for p in files if p.is_file() and "__pycache__" not in p.parts]


def project(root: Path = ROOT) -> dict:
    import tomllib

    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def engine_requirements(project: dict) -> list[str]:
    """What the installed engine needs: the wheel's requirements with its faces extra, as Install Engine asks."""
    return [*project["dependencies"], *project["optional-dependencies"][EXTRA]]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def installed_constraints(requirements: list[str], skip=PINNED_ELSEWHERE) -> str:
    """pip constraints (`name==version`, one a line, sorted) for `requirements` and everything they pull in, at the
    versions installed in the running interpreter: run with the venv the tests ran in, they are what was tested.
    Optional dependencies (`extra == ...`) are not followed, nor anything reached only through `skip`."""
    from importlib import metadata

    versions, todo = {}, [requirement_name(r) for r in requirements]
    while todo:
        name = todo.pop()
        if name in versions or name in skip:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # a dependency for another platform or Python
            versions[name] = None
            continue
        versions[name] = dist.version
        todo += [requirement_name(r) for r in dist.requires or [] if not re.search(r"\bextra\s*==", r)]
    return "".join(f"{name}=={version}\n" for name, version in sorted(versions.items()) if version)


def metadata(project: dict) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}", f"Version: {project['version']}",
             f"Summary: {project['description']}", f"Requires-Python: {project['requires-python']}"]
    lines += [f"Requires-Dist: {req}" for req in project["dependencies"]]
    lines += [f"Provides-Extra: {EXTRA}"]
    lines += [f'Requires-Dist: {req}; extra == "{EXTRA}"' for req in project["optional-dependencies"][EXTRA]]
    return "\n".join(lines) + "\n"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_engine_wheel(out_dir: Path, root: Path = ROOT) -> Path:
    """Write `<name>-<version>-py3-none-any.whl` into out_dir and return its path."""
    about = project(root)
    dist = f"{about['name'].replace('-', '_')}-{about['version']}"
    entries = [(p.relative_to(root).as_posix(), p.read_bytes()) for p in wheel_files(root)]
    entries += [(f"{dist}.dist-info/METADATA", metadata(about).encode()),
                (f"{dist}.dist-info/WHEEL", b"Wheel-Version: 1.0\nGenerator: splat-restore engine_wheel.py\n"
                                            b"Root-Is-Purelib: true\nTag: py3-none-any\n")]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in entries)
    entries.append((f"{dist}.dist-info/RECORD", (record + f"{dist}.dist-info/RECORD,,\n").encode()))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, FIXED_TIME)
            info.external_attr, info.compress_type = 0o644 << 16, zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path
