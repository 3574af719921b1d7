"""A stand-in Hugging Face hub on 127.0.0.1 (point HF_ENDPOINT at `hub.url`), serving model folders the tests build.

It answers what huggingface_hub 2.x asks for a snapshot download, and what engine/weights/fetch.py asks:
    GET  /api/models/{repo}[/revision/{rev}]        {"id", "sha", "siblings"}                 (HfApi.repo_info)
    GET  /api/models/{repo}/tree/{rev}?recursive=..  [{"type": "file", "path", "size", "oid", "lfs"?}]
    HEAD /{repo}/resolve/{rev}/{path}                X-Repo-Commit, ETag, Content-Length       (get_hf_file_metadata)
    GET  /{repo}/resolve/{rev}/{path}                the bytes; `Range: bytes=N-` answered with 206
Files of 10 kB or more are "LFS": their ETag and tree `lfs.oid` are their sha256, as on the real hub; smaller ones
have their git blob id. `rate` (bytes per second) slows every file body, so a download can be stopped halfway;
`token` makes every request without `Authorization: Bearer <token>` a 401 (a gated repository). It counts the body
bytes it sent per path and keeps every request's headers, for the tests to check.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_FROM = 10_000
CHUNK = 16 * 1024


class Repo:
    def __init__(self, repo_id: str, folder: Path):
        self.id, self.folder = repo_id, Path(folder)
        self.files = {p.relative_to(self.folder).as_posix(): p.read_bytes()
                      for p in sorted(self.folder.rglob("*")) if p.is_file()}
        self.sha = hashlib.sha1(repr(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in self.files.items()))
                                .encode()).hexdigest()

    def etag(self, path: str) -> str:
        data = self.files[path]
        if len(data) >= LFS_FROM:
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def tree(self) -> list[dict]:
        out = []
        for path, data in self.files.items():
            entry = {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(path.encode()).hexdigest()}
            if len(data) >= LFS_FROM:
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            else:
                entry["oid"] = self.etag(path)
            out.append(entry)
        return out


class StandInHub:
    def __init__(self, rate: float = 0.0, token: str = ""):
        self.repos: dict[str, Repo] = {}
        self.rate, self.token = rate, token
        self.sent: dict[str, int] = {}  # body bytes sent, per repo file path ("org/name/path")
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers with lower-case names)
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, repo_id: str, folder: Path) -> Repo:
        self.repos[repo_id] = Repo(repo_id, folder)
        return self.repos[repo_id]

    def __enter__(self) -> "StandInHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sent_for(self, repo_id: str) -> int:
        return sum(n for path, n in self.sent.items() if path.startswith(repo_id + "/"))

    # -- answers ------------------------------------------------------------------------------------------------
    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.requests.append((h.command, path, {k.lower(): v for k, v in h.headers.items()}))
        if self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._json(h, {"error": "Access to this repository is restricted"}, 401, body)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m and m.group(1) in self.repos:
            repo = self.repos[m.group(1)]
            return self._json(h, {"id": repo.id, "modelId": repo.id, "sha": repo.sha, "private": False,
                                  "siblings": [{"rfilename": p} for p in repo.files]}, 200, body)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
        if m and m.group(1) in self.repos:
            return self._json(h, self.repos[m.group(1)].tree(), 200, body)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and m.group(1) in self.repos and m.group(3) in self.repos[m.group(1)].files:
            return self._file(h, self.repos[m.group(1)], m.group(3), body)
        headers = {"X-Error-Code": "RepoNotFound"} if not m or m.group(1) not in self.repos else \
            {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": self.repos[m.group(1)].sha}
        self._json(h, {"error": f"not found: {path}"}, 404, body, headers)

    @staticmethod
    def _json(h, payload, status: int, body: bool, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}.items():
            h.send_header(k, v)
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _file(self, h, repo: Repo, path: str, body: bool) -> None:
        data = repo.files[path]
        start = 0
        rng = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if rng and body:
            start = int(rng.group(1))
        if start > len(data):
            h.send_response(416)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", repo.sha)
        h.send_header("ETag", f'"{repo.etag(path)}"')
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(data) - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if not body:
            return
        key = f"{repo.id}/{path}"
        try:
            for i in range(start, len(data), CHUNK):
                chunk = data[i:i + CHUNK]
                h.wfile.write(chunk)
                with self._lock:
                    self.sent[key] = self.sent.get(key, 0) + len(chunk)
                if self.rate:
                    time.sleep(len(chunk) / self.rate)
        except (BrokenPipeError, ConnectionResetError):  # the client was killed mid-file: that is the point
            pass
