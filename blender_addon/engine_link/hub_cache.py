"""Where models fetched from the Hugging Face hub live, and whether one is whole. Standard library only: the engine
writes these files (engine/weights/fetch.py) and the add-on reads them to list models without the hub library.

In the hub's cache, a repo is `<cache>/models--<org>--<name>/` (blobs/, snapshots/<commit>/, refs/). Beside those a
fetch keeps its own state in `.splat-restore/`:
    fetching      present from before a fetch's first byte until every file is in place: a fetch that was
                  cancelled or killed leaves it, and the engine refuses the model (naming the fetch command)
    partial/      files being downloaded, under stable names, so the next fetch continues them
    fetched.json  what a complete fetch brought: {"repo", "commit", "files": [paths], "bytes"}
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = ".splat-restore"
FETCHING = "fetching"
PARTIAL = "partial"
RECORD = "fetched.json"
# the variables the hub reads for its cache, most specific first
CACHE_VARIABLES = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")


def default_hf_home(environ=os.environ) -> Path:
    """HF_HOME as huggingface_hub computes it: $HF_HOME, else $XDG_CACHE_HOME/huggingface, else
    ~/.cache/huggingface (on Windows too)."""
    if environ.get("HF_HOME"):
        return Path(os.path.expandvars(environ["HF_HOME"])).expanduser()
    return Path(environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()).expanduser() / "huggingface"


def hub_cache(environ=os.environ) -> Path:
    """The folder the hub keeps models in, for a process started with `environ`."""
    for var in CACHE_VARIABLES:
        if environ.get(var):
            return Path(os.path.expandvars(environ[var])).expanduser()
    return default_hf_home(environ) / "hub"


def hf_home_env(hf_home: str) -> dict:
    """What an engine process's environment gets for the cache under `hf_home` (the add-on's preference): HF_HOME,
    and HF_HUB_CACHE under it, as a cache variable set for Blender would otherwise win. {} keeps the hub's own."""
    return {"HF_HOME": hf_home, "HF_HUB_CACHE": str(Path(hf_home) / "hub")} if hf_home else {}


def with_hf_home(environ: dict, hf_home: str) -> dict:
    return {**environ, **hf_home_env(hf_home)}


def repo_folder(cache: Path, repo_id: str) -> Path:
    return Path(cache) / ("models--" + repo_id.replace("/", "--"))


def state_dir(cache: Path, repo_id: str) -> Path:
    return repo_folder(cache, repo_id) / STATE_DIR


def interrupted(cache: Path, repo_id: str) -> bool:
    """A fetch of `repo_id` began and did not finish (cancelled, killed, failed, or still running)."""
    return (state_dir(cache, repo_id) / FETCHING).exists()


def read_record(cache: Path, repo_id: str) -> dict | None:
    try:
        record = json.loads((state_dir(cache, repo_id) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), list) else None


@dataclass(frozen=True)
class ModelState:
    present: bool  # a complete fetch, all its files still there, no fetch begun since
    interrupted: bool  # a fetch began and did not finish: the engine refuses the model until one does
    bytes_on_disk: int  # everything under the repo's folder: blobs, copies, partial downloads
    partial_bytes: int  # of which downloads to be continued

    def describe(self) -> str:
        if self.present:
            return f"Present, {human_bytes(self.bytes_on_disk)} on disk"
        if self.interrupted:
            return (f"Not complete ({human_bytes(self.bytes_on_disk)} downloaded so far, "
                    f"{human_bytes(self.partial_bytes)} of it partial): Fetch continues it")
        if self.bytes_on_disk:
            return f"Not fetched ({human_bytes(self.bytes_on_disk)} of other files in its cache folder)"
        return "Not fetched"


def _bytes_under(folder: Path) -> int:
    """Regular files only: snapshot entries are symlinks to blobs, counted once as the blob."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(root, name)):
                total += st.st_size
    return total


def model_state(cache: Path, repo_id: str) -> ModelState:
    folder = repo_folder(cache, repo_id)
    record = read_record(cache, repo_id)
    stopped = interrupted(cache, repo_id)
    snapshot = folder / "snapshots" / str((record or {}).get("commit", ""))
    present = bool(record) and not stopped and bool(record.get("commit")) and all(
        (snapshot / f).is_file() for f in record["files"])
    return ModelState(present, stopped, _bytes_under(folder) if folder.is_dir() else 0,
                      _bytes_under(state_dir(cache, repo_id) / PARTIAL))


def delete_model(cache: Path, repo_id: str) -> None:
    """Remove the repo from the cache: the record and the marker go first, so a half-deleted folder never looks
    complete to the add-on (the hub's own lookup fails on the missing files)."""
    folder = repo_folder(cache, repo_id)
    state = state_dir(cache, repo_id)
    if state.is_dir():
        (state / RECORD).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():
        raise OSError(f"could not delete all of {folder}: stop the engine (Stop Engine) or close programs using it, "
                      f"then delete again")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
