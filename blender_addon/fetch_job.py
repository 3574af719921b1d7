"""Fetch from the add-on: the installed engine's `python -m engine fetch ID --json` in a background process, read
by a thread, polled by the preferences' timer. No bpy, no torch.

The access token goes to this process only, in its environment (HF_TOKEN): never on its command line (other users
can list those), never into the log, which holds the command, the engine's output and how it ended.
Cancel kills the process: the engine's own marker (engine_link/hub_cache.py) then keeps the model from counting as
present, and its partial download stays for the next Fetch to continue.
"""
from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

from .engine_install import NEW_GROUP, kill_tree, subprocess_env
from .engine_link.hub_cache import human_bytes, with_hf_home


def fetch_env(hf_home: str, token: str, environ=None) -> dict:
    """The fetch process's environment: Blender's Python settings dropped, the chosen cache, the token."""
    env = with_hf_home(subprocess_env() if environ is None else environ, hf_home)
    env["PYTHONUNBUFFERED"] = "1"
    if token:
        env["HF_TOKEN"] = token
    return env


class FetchJob:
    """One fetch; `done`, `total`, `rate`, `file` while it runs, then `outcome` ("done", "failed", "cancelled")
    with `message`."""

    def __init__(self, python: str, repo_id: str, env: dict, log: Path):
        self.python, self.repo_id, self.env, self.log = python, repo_id, env, Path(log)
        self.phase = "Starting the engine"
        self.done_bytes, self.total, self.rate, self.file = 0, 0, 0.0, ""
        self.outcome, self.message = "", ""
        self.cancelled = False
        self.process: subprocess.Popen | None = None
        self.tail: deque[str] = deque(maxlen=20)
        self._error = ""  # the engine's own error event, the clearest message
        self._readers: list[threading.Thread] = []
        self._log_lock = threading.Lock()

    @property
    def command(self) -> list[str]:
        return [self.python, "-m", "engine", "fetch", self.repo_id, "--json"]

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log, "w", encoding="utf-8", errors="replace")
        self._write(f"+ {subprocess.list2cmdline(self.command)}")
        try:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, env=self.env, cwd=self.log.parent,
                                            text=True, encoding="utf-8", errors="replace", **NEW_GROUP)
        except OSError as e:
            self._finish("failed", f"could not start the engine with {self.python}: {e}")
            return
        for stream, handle in ((self.process.stdout, self._event_line), (self.process.stderr, self._error_line)):
            thread = threading.Thread(target=self._read, args=(stream, handle), daemon=True)
            thread.start()
            self._readers.append(thread)

    def _write(self, line: str) -> None:
        with self._log_lock:
            if not self._log.closed:
                self._log.write(line + "\n")
                self._log.flush()

    def _read(self, stream, handle) -> None:
        try:
            for line in stream:
                line = line.rstrip()
                if line:
                    self._write(line)
                    handle(line)
        except (OSError, ValueError):  # closed under us by a kill
            pass

    def _event_line(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            self.tail.append(line)
            return
        kind = event.get("event")
        if kind == "plan":
            self.phase = f"Downloading {event['files']} files"
            self.done_bytes, self.total = event["done"], event["total"]
        elif kind == "progress":
            self.done_bytes, self.total, self.rate, self.file = event["done"], event["total"], event["rate"], \
                event.get("file", "")
        elif kind == "done":
            self.phase, self.done_bytes = "Finishing", event["total"]
        elif kind == "error":
            self._error = event.get("message", "")

    def _error_line(self, line: str) -> None:
        self.tail.append(line)

    def poll(self) -> bool:
        """True once the job has ended (its outcome set); call from the timer, or in a loop in background mode."""
        if self.outcome:
            return True
        if self.process is None or self.process.poll() is None:
            return False
        for thread in self._readers:
            thread.join(timeout=5)
        code = self.process.returncode
        if self.cancelled:
            self._finish("cancelled", f"fetch of {self.repo_id} cancelled: it is not usable until a Fetch "
                                      f"completes; what was downloaded is kept, and the next Fetch continues it")
        elif code == 0:
            self._finish("done", f"{self.repo_id} fetched ({human_bytes(self.total)})")
        else:
            errors = [line for line in self.tail if line.startswith("error:")]
            why = self._error or (errors[-1][len("error:"):].strip() if errors else "\n".join(list(self.tail)[-5:]))
            self._finish("failed", f"fetch of {self.repo_id} failed (exit code {code}): {why}")
        return True

    def cancel(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.cancelled = True
            kill_tree(self.process)

    def wait(self, timeout: float | None = None, interval: float = 0.2) -> bool:
        """Poll until the end (background mode has no timers); False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(interval)
        return True

    def _finish(self, outcome: str, message: str) -> None:
        self.outcome, self.message = outcome, message
        self._write(f"== {outcome}: {message}")
        with self._log_lock:
            self._log.close()

    def describe(self) -> str:
        """The progress line: bytes done of total, the rate."""
        if not self.total:
            return f"{self.phase}..."
        rate = f", {human_bytes(self.rate)}/s" if self.rate else ""
        return f"{human_bytes(self.done_bytes)} of {human_bytes(self.total)}{rate}"

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total if self.total else 0.0
