"""Starting and talking to the engine process. Standard library only: Blender ships this, never torch.

The engine runs under its own interpreter (its venv's python), started with pipes; a reader thread turns its stdout
lines into answers for pending requests and a second keeps the tail of its stderr for error messages. Works the same
on Windows, macOS and Linux (no select, no signals, no POSIX-only calls).
"""
from __future__ import annotations

import itertools
import os
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import protocol
from .scan import remove_temporaries
from .weights import weights_exist


class EngineError(RuntimeError):
    """The engine could not start, died, or answered with an error. `code` is the protocol's error code."""

    def __init__(self, message: str, code: str = "engine_error", result: dict | None = None):
        super().__init__(message)
        self.code, self.result = code, result


class EngineDied(EngineError):
    def __init__(self, message: str):
        super().__init__(message, "engine_died")


@dataclass
class EngineSettings:
    python: str  # the engine's own interpreter (e.g. .venv/bin/python or .venv\Scripts\python.exe)
    weights: str
    base: str = ""
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 1
    tile: int = 0  # 0: the model's size
    min_face: int = 72
    compile: str = "auto"
    accept_license: bool = False  # the licence of third-party weights (Difix), accepted in the preferences
    cwd: str | None = None
    env: dict = field(default_factory=dict)
    # limits on waiting; changing them needs no new engine, so they do not take part in ==
    startup_timeout: float = field(default=300.0, compare=False)
    stall_timeout: float = field(default=600.0, compare=False)

    def command(self) -> list[str]:
        cmd = [self.python, "-m", "engine", "serve", "--weights", self.weights, "--device", self.device,
               "--dtype", self.dtype, "--batch-size", str(self.batch_size), "--min-face", str(self.min_face),
               "--compile", self.compile]
        cmd += ["--tile", str(self.tile)] if self.tile else []
        cmd += ["--accept-license"] if self.accept_license else []
        return cmd + (["--base", self.base] if self.base else [])


def find_venv_python(project: Path) -> Path | None:
    """The engine interpreter inside a project checkout, on any platform."""
    for rel in (".venv/bin/python", ".venv/Scripts/python.exe", ".venv/bin/python3"):
        if (project / rel).is_file():
            return project / rel
    return None


class Request:
    """A pending request: poll `done` (Blender's modal timer) or block in `wait` (background mode)."""

    def __init__(self, request_id, on_progress: Callable[[int, int], None] | None = None, outputs: tuple = ()):
        self.id = request_id
        self.on_progress = on_progress
        self.outputs = outputs  # what the engine may be writing for it: cleaned of temporaries if the engine dies
        self.done_count, self.total = 0, 0
        # each frame's outcome as the engine reported it (protocol.progress's "item"), final answer or not: after a
        # crash these frames are not sent again, as an In Place frame already replaced would be restored twice
        self.decided: list[dict] = []
        self.response: dict | None = None
        self.error: EngineError | None = None
        self._event = threading.Event()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def _progress(self, done: int, total: int, item: dict | None = None) -> None:
        self.done_count, self.total = done, total
        if isinstance(item, dict):
            self.decided.append(item)
        if self.on_progress:
            self.on_progress(done, total)

    def _finish(self, response: dict | None = None, error: EngineError | None = None) -> None:
        self.response, self.error = response, error
        self._event.set()

    def wait(self, timeout: float | None = None) -> dict:
        """The result dict; raises EngineError for an error answer or a dead engine, TimeoutError on timeout."""
        if not self._event.wait(timeout):
            raise TimeoutError(f"no answer to request {self.id} within {timeout} s")
        if self.error:
            raise self.error
        if not self.response.get("ok"):
            err = self.response.get("error", {})
            raise EngineError(err.get("message", "unknown engine error"), err.get("code", "engine_error"),
                              self.response.get("result"))
        return self.response.get("result", {})


class EngineClient:
    STDERR_TAIL = 40

    def __init__(self, settings: EngineSettings):
        self.settings = settings
        self.process: subprocess.Popen | None = None
        self.ready: dict | None = None
        self.compile: dict | None = None  # the engine's last compile status (protocol.compile_event)
        self._pending: dict = {}
        self._lock = threading.Lock()  # the pending requests; the stdout reader takes it for every line
        # a write blocks while the engine's stdin pipe is full, so it has its own lock: the reader goes on taking
        # the engine's answers meanwhile, which is what lets a busy engine get back to reading its stdin
        self._write_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stderr: deque[str] = deque(maxlen=self.STDERR_TAIL)
        self._ready_event = threading.Event()
        self._dead_reason: str | None = None
        self.last_heard = time.monotonic()  # any line from the engine: progress, answers

    # lifecycle ------------------------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None and self._dead_reason is None

    def start(self, timeout: float | None = None) -> dict:
        """Start the engine and wait for its ready line; raises EngineError naming the cause."""
        s = self.settings
        timeout = s.startup_timeout if timeout is None else timeout
        if not s.python or not Path(s.python).is_file():
            raise EngineError(f"engine interpreter not found: {s.python!r}. Set it in the add-on preferences to "
                              f"the engine venv's python (.venv/bin/python, or .venv\\Scripts\\python.exe on "
                              f"Windows)", "no_interpreter")
        if not weights_exist(s.weights):
            raise EngineError(f"restorer weights not found: {s.weights!r}. Set them in the add-on preferences",
                              "no_weights")
        self._stderr.clear()
        self._ready_event.clear()
        self._dead_reason, self.ready, self.compile = None, None, None
        env = dict(os.environ, PYTHONUNBUFFERED="1", **s.env)
        # Blender sets PYTHONHOME/PYTHONPATH for its own Python; the engine's interpreter must not inherit them
        for var in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP"):
            if var not in s.env:
                env.pop(var, None)
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # no console window pops up on Windows
        try:
            self.process = subprocess.Popen(s.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, cwd=s.cwd, env=env, creationflags=flags)
        except OSError as e:
            raise EngineError(f"could not start the engine with {s.python}: {e}", "no_interpreter") from None
        threading.Thread(target=self._read_stdout, args=(self.process,), daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(self.process,), daemon=True).start()
        if not self._ready_event.wait(timeout):
            self.kill()
            raise EngineError(f"the engine did not become ready within {timeout:g} s (the start-up limit in the "
                              f"add-on preferences); it was stopped{self._tail()}", "timeout")
        if not self.ready or not self.ready.get("ok"):
            message = (self.ready or {}).get("error", {}).get("message") or self._dead_reason or "unknown reason"
            self.kill()
            raise EngineError(f"the engine could not load the model: {message}", "load_failed")
        theirs = self.ready.get("protocol")
        if theirs != protocol.PROTOCOL_VERSION:
            self.kill()
            raise EngineError(f"the engine at {s.python} speaks protocol version {theirs} (engine "
                              f"{self.ready.get('version', '?')}) but this add-on speaks version "
                              f"{protocol.PROTOCOL_VERSION}: install the engine and the add-on from the same "
                              f"release", "protocol_mismatch")
        return self.ready

    @property
    def compiling(self) -> bool:
        """Whether the engine is compiling in the background (frames are still served, eagerly)."""
        return self.alive and (self.compile or {}).get("state") == "compiling"

    def ensure_running(self, timeout: float | None = None) -> dict:
        return self.ready if self.alive else self.start(timeout)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ask politely, then kill: frees the GPU memory either way."""
        if self.alive:
            try:
                self.request("shutdown").wait(timeout)
            except (EngineError, TimeoutError):
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def wait(self, request: Request, stall_timeout: float | None = None) -> dict:
        """The request's result, waiting as long as the engine keeps answering. If it says nothing at all for
        `stall_timeout` seconds (settings.stall_timeout by default) it is taken as hung: stopped, and every pending
        request fails with code "timeout". A busy engine is never cut off: each finished frame counts as a sign
        of life, whichever request it belongs to."""
        while not request._event.wait(0.2):
            self.check_hung(stall_timeout)
        return request.wait(0)

    def check_hung(self, stall_timeout: float | None = None) -> None:
        """Abandon the engine if it owes answers and has said nothing for the limit."""
        limit = self.settings.stall_timeout if stall_timeout is None else stall_timeout
        if self._pending and time.monotonic() - self.last_heard > limit:
            self.abandon(f"the engine gave no answer for {limit:g} s (the per-frame limit in the add-on "
                         f"preferences) and was stopped as hung{self._tail()}")

    def abandon(self, reason: str) -> None:
        """Fail every pending request with `reason` (code "timeout") and stop the engine."""
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        self._dead_reason = reason
        self.kill()
        self._fail(pending, EngineError(reason, "timeout"))

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process is not None:
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                try:
                    stream.close()
                except OSError:
                    pass

    # requests -------------------------------------------------------------------------------------------------
    def request(self, op: str, on_progress: Callable[[int, int], None] | None = None, **params) -> Request:
        return self._send(op, on_progress, (), params)

    def _send(self, op: str, on_progress, outputs: tuple, params: dict) -> Request:
        if not self.alive:
            raise EngineDied(f"the engine is not running{self._tail()}")
        req = Request(f"r{next(self._ids)}", on_progress, outputs)
        with self._lock:
            if not self._pending:  # an idle engine owes nothing: its silence counts from now
                self.last_heard = time.monotonic()
            self._pending[req.id] = req
        try:
            with self._write_lock:
                self.process.stdin.write(protocol.encode({"id": req.id, "op": op, **params}))
                self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            with self._lock:
                self._pending.pop(req.id, None)
            raise EngineDied(f"the engine stopped accepting requests{self._tail()}") from None
        return req

    def restore(self, items: list, on_progress=None, **options) -> Request:
        """Restore (input, output) pairs, or item dicts (with "sequence" and "index" for animation frames); options:
        overwrite, in_place, skip_existing, faces (protocol.FACE_MODES), sequence and index."""
        items = [i if isinstance(i, dict) else {"input": str(i[0]), "output": str(i[1])} for i in items]
        outputs = tuple(i["output"] for i in items if isinstance(i.get("output"), str))
        return self._send("restore", on_progress, outputs, {"items": items, **options})

    def cancel(self, request: Request) -> None:
        if self.alive and not request.done:
            self.request("cancel", target=request.id)

    # reader threads -------------------------------------------------------------------------------------------
    def _read_stdout(self, process: subprocess.Popen) -> None:
        try:
            self._dispatch_lines(process)
        except (OSError, ValueError):  # the pipe was closed under us by kill()
            pass
        code = process.wait()
        if process is not self.process:  # a replacement is already running; its own reader reports for it
            return
        self._dead_reason = f"the engine exited with code {code}"
        time.sleep(0.05)  # let the stderr reader catch the last lines for the message
        self._ready_event.set()
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        self._fail(pending, EngineDied(f"{self._dead_reason}{self._tail()}"))

    @staticmethod
    def _fail(pending: list[Request], error: EngineError) -> None:
        """Fail the requests of an engine that is dead (no writer left), after removing the temporaries it was
        writing their outputs into: a render folder keeps whole frames only."""
        for req in pending:
            remove_temporaries(*req.outputs)
            req._finish(error=error)

    def _dispatch_lines(self, process: subprocess.Popen) -> None:
        while True:
            try:
                line = protocol.read_line(process.stdout)  # bounded: a runaway engine cannot fill Blender's memory
            except protocol.ProtocolError as e:
                self._stderr.append(f"(engine output dropped) {e.message}")
                continue
            if not line:
                return
            self.last_heard = time.monotonic()
            try:
                message = protocol.decode(line)
            except protocol.ProtocolError:
                self._stderr.append(f"(unparsable engine output) {line[:200]!r}")
                continue
            if message.get("event") == "ready":
                self.ready, self.compile = message, message.get("compile")
                self._ready_event.set()
                continue
            if message.get("event") == "compile":
                self.compile = message
                continue
            with self._lock:
                req = self._pending.get(message.get("id"))
            if req is None:
                continue
            if message.get("event") == "progress":
                req._progress(message.get("done", 0), message.get("total", 0), message.get("item"))
                continue
            with self._lock:
                self._pending.pop(req.id, None)
            req._finish(response=message)

    def _read_stderr(self, process: subprocess.Popen) -> None:
        try:
            for raw in process.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self._stderr.append(line)
        except (OSError, ValueError):
            pass

    def _tail(self, lines: int = 8) -> str:
        tail = list(self._stderr)[-lines:]
        return (":\n" + "\n".join(tail)) if tail else ""

    def stderr_tail(self) -> list[str]:
        return list(self._stderr)
