"""`python -m engine fetch ID`: what the engine needs of a hub repo, into the Hugging Face cache, so that a fetch
stopped at any point (Cancel in Blender kills this process) never leaves a model the engine would take as complete,
and the next fetch continues where it stopped.

- Before the first byte, the repo's `.splat-restore/fetching` marker (engine_link/hub_cache.py) is written; the
  engine refuses a repo carrying it (resolve_base names this command), and only a complete fetch removes it.
- Each file is downloaded here, not by the hub library: the hub's own downloads restart a file from zero after an
  interruption (a process-unique temporary file), which for a 3.4 GB UNet means starting over. Here a file grows
  under a stable name in `.splat-restore/partial/`, continued with an HTTP Range request, then checked (its size;
  sha256 for LFS files) and renamed into the hub's blobs/ folder under the ETag the hub itself would use.
- Then `snapshot_download` runs with every blob present: it only links them into snapshots/<commit>/ and records the
  ref and the tree listing that its offline lookup (resolve_base's) checks for completeness.
- The disk-space check comes first: what is still to download against what is free, both named in the refusal.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from blender_addon.engine_link import hub_cache
from blender_addon.engine_link.hub_cache import human_bytes
from blender_addon.engine_link.weights import looks_like_hub_id

from ..atomic import write_bytes_atomic
from .base import FETCH_PATTERNS, BaseModelError

CHUNK = 1 << 20
RETRIES = 5  # consecutive failures of one file's download before giving up (each retry continues the file)
REPORT_EVERY = 0.25  # seconds between progress events
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class FetchError(BaseModelError):
    pass


@dataclass(frozen=True)
class RepoEntry:
    path: str
    size: int
    key: str  # stable name of its partial download: its content hash (LFS sha256, else git blob id)
    sha256: str  # "" when the hub gives none (small non-LFS files: size checked only)


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def list_repo(repo_id: str) -> tuple[str, list[RepoEntry]]:
    """The commit `main` points at and the files of it the engine needs (FETCH_PATTERNS)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    api = HfApi(endpoint=endpoint())
    try:
        commit = api.repo_info(repo_id, revision="main").sha
        files = [f for f in api.list_repo_tree(repo_id, recursive=True, revision=commit) if isinstance(f, RepoFile)]
    except Exception as e:  # the hub raises a dozen types (offline, 401, 404, 5xx); each message says which
        raise FetchError(f"could not list {repo_id!r} on the Hugging Face hub ({endpoint()}): "
                         f"{type(e).__name__}: {first_line(e)}. Check the network, the repository id, and for a "
                         f"gated or private repository the access token (HF_TOKEN)") from None
    wanted = set(filter_repo_objects([f.path for f in files], allow_patterns=FETCH_PATTERNS))
    entries = [RepoEntry(f.path, int(f.size), f.lfs.sha256 if f.lfs else f.blob_id, f.lfs.sha256 if f.lfs else "")
               for f in files if f.path in wanted]
    if not entries:
        raise FetchError(f"{repo_id!r} on the Hugging Face hub has none of the files the engine needs "
                         f"(unet/, vae/, scheduler/ ...): is it a diffusers model?")
    return commit, sorted(entries, key=lambda e: e.path)


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def free_space(folder: Path) -> int:
    """Free bytes on the disk `folder` is (or will be) on: its nearest existing ancestor's."""
    for path in (folder, *folder.parents):
        if path.exists():
            return shutil.disk_usage(path).free
    return shutil.disk_usage(Path.cwd()).free


class Reporter:
    """Bytes done of total and a rate over the last few seconds, as events at most every REPORT_EVERY seconds."""

    def __init__(self, emit: Callable[[dict], None], done: int, total: int):
        self.emit, self.done, self.total = emit, done, total
        self.samples = [(time.monotonic(), done)]
        self.file = ""
        self.last = 0.0

    def add(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if force or now - self.last >= REPORT_EVERY:
            self.samples.append((now, self.done))
            while len(self.samples) > 2 and now - self.samples[1][0] > 3.0:  # the last 3 s, and one before
                self.samples.pop(0)
            (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
            rate = (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0
            self.emit({"event": "progress", "done": self.done, "total": self.total, "rate": round(rate),
                       "file": self.file})
            self.last = now


class _KeepAuthOnSameHost(urllib.request.HTTPRedirectHandler):
    """urllib carries every header across redirects; the token must not go to another host (a CDN)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urlsplit(newurl).hostname != urlsplit(req.full_url).hostname:
            new.remove_header("Authorization")
        return new


def _opener() -> urllib.request.OpenerDirector:
    try:  # python.org's macOS Python has no CA certificates of its own; certifi comes with the hub's HTTP client
        import certifi

        context = ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        context = ssl.create_default_context()
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _KeepAuthOnSameHost())


def download(url: str, headers: dict, part: Path, size: int, report: Reporter) -> None:
    """`part` grown to `size` bytes from `url`, continuing what it already holds; retried on dropped connections."""
    opener, failures = _opener(), 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if have > size:  # not this file (never counted as done): start again
            part.unlink()
            have = 0
        if have == size:
            return
        request = urllib.request.Request(url, headers={**headers, "Accept-Encoding": "identity",
                                                      **({"Range": f"bytes={have}-"} if have else {})})
        try:
            with opener.open(request, timeout=60) as response:
                if have and response.status != 206:  # the server ignored the range: the whole file comes again
                    report.add(-have)
                    have = 0
                with open(part, "r+b" if part.exists() else "wb") as f:
                    f.seek(have)
                    f.truncate()
                    while chunk := response.read1(CHUNK):  # what has arrived, not a whole CHUNK: steady progress
                        f.write(chunk)
                        report.add(len(chunk))
                        failures = 0
            if part.stat().st_size < size:
                raise ConnectionError(f"the connection closed at {part.stat().st_size} of {size} bytes")
        except urllib.error.HTTPError as e:
            raise FetchError(f"downloading {url} failed: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, HTTPException) as e:  # not disk errors
            failures += 1
            if failures > RETRIES:
                raise FetchError(f"downloading {url} failed {RETRIES} times in a row ({first_line(e)}); what "
                                 f"arrived is kept, fetch again to continue") from None
            time.sleep(min(2 ** failures, 10))


def partial_bytes(part: Path, entry: RepoEntry) -> int:
    """What a partial download holds of `entry` (none if it is longer than the file: it is started again)."""
    size = part.stat().st_size if part.is_file() else 0
    return size if size <= entry.size else 0


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK * 8):
            h.update(block)
    return h.hexdigest()


def fetch_file(repo_id: str, commit: str, entry: RepoEntry, folder: Path, report: Reporter) -> Path:
    """One file into blobs/<etag>, by way of a partial download; its blob."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo_id, entry.path, revision=commit, endpoint=endpoint())
    try:
        meta = get_hf_file_metadata(url)
    except Exception as e:
        raise FetchError(f"could not look up {entry.path} of {repo_id!r} on the hub: {type(e).__name__}: "
                         f"{first_line(e)}") from None
    if not meta.etag:
        raise FetchError(f"the hub gave no ETag for {entry.path} of {repo_id!r}: cannot place it in the cache")
    blob = folder / "blobs" / meta.etag.strip('"')
    part = folder / hub_cache.STATE_DIR / hub_cache.PARTIAL / entry.key
    if blob.is_file() and blob.stat().st_size == entry.size:  # the hub has it (an earlier fetch or download)
        report.add(entry.size - partial_bytes(part, entry), force=True)
        part.unlink(missing_ok=True)
        return blob
    part.parent.mkdir(parents=True, exist_ok=True)
    headers = build_hf_headers()  # the token, if any, from HF_TOKEN or the hub's login
    location = meta.location or url
    if urlsplit(location).hostname != urlsplit(url).hostname:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    report.file = entry.path
    download(location, headers, part, entry.size, report)
    expected = entry.sha256 or (meta.etag if SHA256.match(meta.etag) else "")
    if expected and sha256_of(part) != expected:
        part.unlink()
        raise FetchError(f"{entry.path} of {repo_id!r} arrived damaged (its sha256 is not the hub's); it was "
                         f"deleted: fetch again")
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, blob)
    report.add(0, force=True)
    return blob


def fetch(repo_id: str, emit: Callable[[dict], None] = lambda event: None) -> Path:
    """Fetch `repo_id` (resuming), report events through `emit`, return its snapshot folder."""
    from filelock import FileLock, Timeout

    commit, entries = list_repo(repo_id)
    cache = cache_dir()
    folder = hub_cache.repo_folder(cache, repo_id)
    snapshot = folder / "snapshots" / commit
    partial = folder / hub_cache.STATE_DIR / hub_cache.PARTIAL
    whole = [e for e in entries if (snapshot / e.path).is_file()]
    total = sum(e.size for e in entries)
    needed = total - sum(e.size for e in whole) - sum(partial_bytes(partial / e.key, e) for e in entries
                                                      if e not in whole)
    free = free_space(folder)
    emit({"event": "plan", "id": repo_id, "commit": commit, "files": len(entries), "total": total,
          "done": total - needed, "needed": needed, "free": free, "cache": str(cache)})
    if needed > free:
        raise FetchError(f"not enough disk space for {repo_id} in {cache}: it needs {human_bytes(needed)} more "
                         f"({needed} bytes), and {human_bytes(free)} ({free} bytes) are free. Free some space, or "
                         f"choose another Hugging Face cache folder (HF_HOME)")
    state = folder / hub_cache.STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(str(state / "fetch.lock"), timeout=0)
        lock.acquire()
    except Timeout:
        raise FetchError(f"another fetch of {repo_id} is running (it holds {state / 'fetch.lock'})") from None
    try:
        if len(whole) < len(entries) or hub_cache.read_record(cache, repo_id) is None \
                or hub_cache.interrupted(cache, repo_id):
            write_bytes_atomic(state / hub_cache.FETCHING, f"{commit}\n".encode())
        report = Reporter(emit, total - needed, total)
        blobs = {e.path: fetch_file(repo_id, commit, e, folder, report) for e in entries if e not in whole}
        snapshot = link_snapshot(repo_id)
        drop_copied_blobs(snapshot, blobs)
        record = {"repo": repo_id, "commit": snapshot.name, "files": [e.path for e in entries], "bytes": total}
        write_bytes_atomic(state / hub_cache.RECORD, json.dumps(record, indent=1).encode())
        (state / hub_cache.FETCHING).unlink(missing_ok=True)
    finally:
        lock.release()
    emit({"event": "done", "id": repo_id, "folder": str(snapshot), "total": total})
    return snapshot


def link_snapshot(repo_id: str) -> Path:
    """The hub's snapshot folder for `main`, every blob already present: links, the ref and the tree listing."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # nothing left to download; its bars would only clutter the log
    try:
        return Path(snapshot_download(repo_id, allow_patterns=FETCH_PATTERNS, endpoint=endpoint()))
    except Exception as e:
        raise FetchError(f"could not finish {repo_id!r} in the Hugging Face cache: {type(e).__name__}: "
                         f"{first_line(e)}") from None


def drop_copied_blobs(snapshot: Path, blobs: dict[str, Path]) -> None:
    """Where symlinks cannot be made (Windows without Developer Mode), the hub copies a blob it did not download
    itself into the snapshot: the blob would then take the model's size a second time. The hub's own downloads
    move it there instead, and so does this."""
    for path, blob in blobs.items():
        pointer = snapshot / path
        if not pointer.is_symlink() and pointer.is_file() and blob.is_file() and not os.path.samefile(pointer, blob):
            blob.unlink()


def refuse_interrupted(repo_id: str, role: str) -> None:
    """For resolve_base: a repo whose fetch began and did not finish is not a model yet."""
    if hub_cache.interrupted(cache_dir(), repo_id):
        raise BaseModelError(f"{role} {repo_id!r} is not completely fetched into the Hugging Face cache "
                             f"({cache_dir()}): its download was stopped. While online, run `python -m engine fetch "
                             f"{repo_id}` again (it continues where it stopped), or Fetch it in the Blender "
                             f"add-on's preferences")


def run(repo_id: str, as_json: bool = False) -> int:
    """The `fetch` command: progress as JSON lines on stdout (the add-on reads them) or a bar on stderr; the
    licence of weights under one is named at the end."""
    from blender_addon.engine_link.licenses import ACCEPT_FLAG, license_by_id

    from ..jobs import UsageError
    from .checkpoint import CheckpointError
    from .loading import read_recipe

    if not looks_like_hub_id(repo_id):
        raise UsageError(f"{repo_id!r} is not a hub id (org/name, like nvidia/difix): fetch downloads from the "
                         f"Hugging Face hub; a local folder needs no fetch")
    if as_json:
        def emit(event: dict) -> None:
            print(json.dumps(event), flush=True)
    else:
        emit = _bar()
    try:
        folder = fetch(repo_id, emit)
    except FetchError as e:
        if as_json:
            emit({"event": "error", "message": str(e)})
        raise
    try:
        lic = license_by_id(read_recipe(folder).license)
    except (BaseModelError, CheckpointError):  # a base model, not weights: nothing to accept
        lic = None
    if as_json:
        emit({"event": "license", "license": lic.describe() if lic else None})
    else:
        print(f"{repo_id} -> {folder}")
        if lic:
            print(f"these weights are under the {lic.describe()}; restoring with them needs {ACCEPT_FLAG}")
    sys.stdout.flush()
    return 0


def _bar() -> Callable[[dict], None]:
    """A tqdm byte bar on stderr for people at a terminal."""
    from tqdm import tqdm

    bar = None

    def emit(event: dict) -> None:
        nonlocal bar
        if event["event"] == "plan":
            print(f"{event['id']}: {event['files']} files, {human_bytes(event['total'])}, "
                  f"{human_bytes(event['needed'])} to download into {event['cache']}", file=sys.stderr)
            bar = tqdm(total=event["total"], initial=event["done"], unit="B", unit_scale=True, file=sys.stderr)
        elif event["event"] == "progress" and bar is not None:
            bar.update(event["done"] - bar.n)
        elif event["event"] == "done" and bar is not None:
            bar.close()

    return emit
