"""Install Engine: the engine's own venv, made by the add-on from the wheel in the extension zip. No bpy, no torch.

The engine home (the extension's user folder, or the Folder Install Engine was given) holds:
    envs/<id>/     one venv per install; an install builds a new one beside the live one
    current        the id of the live venv, replaced (os.replace) only after the new venv passed its probe, so an
                   install that fails (no network, disk full, a pip error) leaves the previous engine as it was
    install.log    every command and pip line of the last install that ran
Cancel kills the running command (pip and what it started) and deletes the new venv; `current` is never touched, so
the previous engine stays exactly as it was. Once the swap has begun, Cancel is too late and the install completes.
Each venv keeps INSTALLED: the stamp (what went in: the wheel, the pins, the constraints) and the probe (what came
out: engine and torch versions, devices, whether CUDA works). Installing with the live stamp again does nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TORCH_ENV = "SPLAT_RESTORE_TORCH"  # a torch requirement that replaces the bundled pin (build.py reads it too)
# PyPI's Windows torch wheels are CPU-only; PyTorch's own index has the CUDA builds (and torch's dependencies).
# Linux's PyPI wheels are CUDA builds and macOS's use Metal (MPS), so those take PyPI's.
TORCH_INDEX = {"win32": "https://download.pytorch.org/whl/cu128"}
# mediapipe 0.10.21 (the last with its face models bundled) has wheels for CPython 3.9 to 3.12 only
PYTHONS = ((3, 10), (3, 12))
FIX = (f"install Python {PYTHONS[1][0]}.{PYTHONS[1][1]} (python.org) and set Preferences > Add-ons > Splat Restore > "
       f"Python for Install to its interpreter")
VENV = ("-m", "venv")
INSTALLED = "splat-restore-install.json"
CONSTRAINTS = "constraints.txt"  # the versions the tests ran with (build.py addon); every pip step keeps to them
PIP = ("-m", "pip", "install", "--progress-bar", "off", "--no-input", "--disable-pip-version-check")
NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # no console window flashing up on Windows

PROBE = """
import json, torch, engine
from engine.runtime import list_devices
out = {"engine": engine.__version__, "torch": torch.__version__, "cuda_build": torch.version.cuda,
       "devices": list_devices(), "cuda": False, "cuda_error": ""}
if torch.cuda.is_available():
    try:  # is_available() can be True while kernels fail (a driver older than the build): run one
        out["cuda"] = (torch.ones(2, device="cuda") + 1).sum().item() == 4.0
    except Exception as e:
        out["cuda_error"] = str(e).splitlines()[0]
print(json.dumps(out))
"""


def kill_tree(process: subprocess.Popen) -> None:
    """Kill `process` and what it started: pip runs build backends, and on Windows a venv's python.exe is a
    launcher whose child is the real interpreter. Both would go on holding the output pipe (and the files)."""
    if process.poll() is not None:
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True,
                       creationflags=NO_WINDOW)
    else:  # started with start_new_session: its process group is its own
        import signal

        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        process.kill()
    except OSError:
        pass


# start_new_session gives the child its own process group on POSIX, for kill_tree
NEW_GROUP = {"creationflags": NO_WINDOW} if os.name == "nt" else {"start_new_session": True}


class InstallFailed(RuntimeError):
    """What went wrong, with the tail of the failing command's output; the log has all of it."""

    def __init__(self, message: str, tail: str = "", log: Path | None = None):
        super().__init__(message + (f"\n{tail}" if tail else "") + (f"\n(full log: {log})" if log else ""))
        self.tail, self.log = tail, log


class InstallCancelled(InstallFailed):
    def __init__(self):
        super().__init__("engine install cancelled; the previous engine is unchanged")


@dataclass(frozen=True)
class Step:
    phase: str  # what the panel shows while it runs
    args: tuple  # after the venv's python


def venv_python(venv: Path, windows: bool = os.name == "nt") -> Path:
    return venv / ("Scripts/python.exe" if windows else "bin/python")


def read_pins(wheel_dir: Path) -> dict:
    """The torch and mediapipe requirements the zip was built with, torch overridden by $SPLAT_RESTORE_TORCH."""
    pins = json.loads((wheel_dir / "pins.json").read_text(encoding="utf-8"))
    return {**pins, "torch": os.environ.get(TORCH_ENV) or pins["torch"]}


def bundled_wheel(wheel_dir: Path) -> Path:
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        raise InstallFailed(f"no engine wheel in {wheel_dir}: this add-on was not built with `python build.py "
                            f"addon`; install the extension zip it makes")
    return wheels[-1]


def bundled_constraints(wheel_dir: Path) -> Path:
    constraints = wheel_dir / CONSTRAINTS
    if not constraints.is_file():
        raise InstallFailed(f"no {CONSTRAINTS} in {wheel_dir}: this add-on was not built with `python build.py "
                            f"addon`; install the extension zip it makes")
    return constraints


def install_steps(wheel: Path, pins: dict, constraints: Path, platform: str = sys.platform) -> list[Step]:
    """The pip commands, as build.py's setup() runs them: torch first and alone (from PyTorch's index where PyPI has
    no GPU build), then the engine with its faces extra keeping that torch, then mediapipe without its declared
    dependencies (they pull jax and opencv-contrib, which it does not need). Each under the tested versions'
    constraints: the engine's requirements only stop at the next major version."""
    index = ("--index-url", TORCH_INDEX[platform]) if platform in TORCH_INDEX else ()
    pip = (*PIP, "--constraint", str(constraints))
    return [Step(f"Installing PyTorch ({pins['torch']})", (*pip, *index, pins["torch"])),
            Step("Installing the engine", (*pip, pins["torch"], f"{wheel}[faces]")),
            Step(f"Installing face detection ({pins['mediapipe']})", (*pip, "--no-deps", pins["mediapipe"]))]


def stamp(wheel: Path, pins: dict, constraints: Path, platform: str = sys.platform) -> dict:
    return {"wheel": wheel.name, "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
            "torch": pins["torch"], "torch_index": TORCH_INDEX.get(platform, ""), "mediapipe": pins["mediapipe"],
            "constraints_sha256": hashlib.sha256(constraints.read_bytes()).hexdigest()}


def live_venv(home: Path) -> Path | None:
    pointer = home / "current"
    if not pointer.is_file():
        return None
    venv = home / "envs" / pointer.read_text(encoding="utf-8").strip()
    return venv if venv_python(venv).is_file() else None


def engine_python(home: Path) -> str:
    """The installed engine's interpreter, or "" when none is installed."""
    venv = live_venv(home)
    return str(venv_python(venv)) if venv else ""


def installed(home: Path) -> dict | None:
    """{"stamp": ..., "probe": ...} of the live engine, or None."""
    venv = live_venv(home)
    try:
        return json.loads((venv / INSTALLED).read_text(encoding="utf-8")) if venv else None
    except (OSError, ValueError):
        return None


def describe(probe: dict) -> str:
    """The status line: engine and torch versions, the device it will use, whether CUDA works."""
    gpus = [d for d in probe.get("devices", []) if d["id"] != "cpu"]
    device = f"{gpus[0]['id']} {gpus[0]['name']}" if gpus else "CPU only"
    if probe.get("cuda"):
        cuda = "CUDA works"
    elif probe.get("cuda_error"):
        cuda = f"CUDA fails: {probe['cuda_error']}"
    elif probe.get("cuda_build"):
        cuda = "CUDA build, but no usable NVIDIA GPU or driver"
    else:
        cuda = "no CUDA in this torch build"
    return f"Engine {probe.get('engine', '?')}, torch {probe.get('torch', '?')}, {device}; {cuda}"


def subprocess_env() -> dict:
    """Blender's own Python settings must not leak into the venv's interpreter; pip's request tracker left by an
    earlier ensurepip would point at a deleted folder (Dream Textures met this)."""
    drop = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PIP_REQ_TRACKER", "VIRTUAL_ENV")
    # piped output would otherwise be in Windows' ANSI code page, and the log and panel read it as UTF-8
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PYTHONIOENCODING": "utf-8"}


def judge_python(python: str, version: tuple, has_venv: bool) -> str:
    """"" when `python` can make the engine's venv, else what is wrong and what to do."""
    low, high = PYTHONS
    if not low <= tuple(version[:2]) <= high:
        return (f"{python} is Python {'.'.join(map(str, version[:2]))}, the engine needs {low[0]}.{low[1]} to "
                f"{high[0]}.{high[1]} (mediapipe 0.10.21 has no other wheels): {FIX}")
    if not has_venv:
        return f"{python} cannot make virtual environments (no venv/ensurepip module): {FIX}"
    return ""


def check_python(python: str) -> None:
    code = ("import json, sys, importlib.util as u; "
            "print(json.dumps([sys.version_info[:2], bool(u.find_spec('venv') and u.find_spec('ensurepip'))]))")
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, env=subprocess_env(),
                           creationflags=NO_WINDOW)
        version, has_venv = json.loads(r.stdout)
        problem = judge_python(python, tuple(version), has_venv)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        problem = f"cannot run {python!r} to make the engine's venv ({e}): {FIX}"
    if problem:
        raise InstallFailed(problem)


class Installer:
    """One install into `home`; `progress(phase, line)` hears each phase and each output line (from this thread)."""

    def __init__(self, home: Path, wheel_dir: Path, python: str,
                 progress: Callable[[str, str], None] = lambda phase, line: None):
        self.home, self.wheel_dir, self.python, self.progress = Path(home), Path(wheel_dir), python, progress
        self.log = self.home / "install.log"
        self.tail = deque(maxlen=15)
        self.cancelled = threading.Event()
        self._process: subprocess.Popen | None = None
        self._swap = threading.Lock()  # Cancel and the switch to the new venv exclude each other
        self._swapped = False

    def cancel(self) -> bool:
        """Stop the install and drop its venv, keeping the previous engine; False when it is too late (the new
        engine is already live)."""
        with self._swap:
            if self._swapped:
                return False
            self.cancelled.set()
            if self._process is not None:
                kill_tree(self._process)
            return True

    def wanted(self) -> tuple[list[Step], dict]:
        wheel, constraints = bundled_wheel(self.wheel_dir), bundled_constraints(self.wheel_dir)
        pins = read_pins(self.wheel_dir)
        return install_steps(wheel, pins, constraints), stamp(wheel, pins, constraints)

    def up_to_date(self) -> bool:
        current = installed(self.home)
        return bool(current) and current.get("stamp") == self.wanted()[1]

    def install(self, force: bool = False, before_swap: Callable[[], None] = lambda: None) -> bool:
        """Make a new venv, install into it, probe it, then make it the live one. False when already up to date.
        `before_swap` runs just before the switch (stop an engine still running from the old venv)."""
        steps, wanted = self.wanted()
        if not force and self.up_to_date():
            return False
        check_python(self.python)
        venv = self.home / "envs" / uuid.uuid4().hex[:12]
        try:
            venv.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "w", encoding="utf-8", errors="replace") as self._log:
                self._run("Creating the engine's Python environment", [self.python, *VENV, str(venv)], hint=FIX)
                python = str(venv_python(venv))
                for step in steps:
                    self._run(step.phase, [python, *step.args])
                probe = self._probe(python)
            (venv / INSTALLED).write_text(json.dumps({"stamp": wanted, "probe": probe}, indent=1), encoding="utf-8")
            with self._swap:
                if self.cancelled.is_set():
                    raise InstallCancelled()
                self._swapped = True
            before_swap()
            pointer = self.home / "current.partial"
            pointer.write_text(venv.name, encoding="utf-8")
            os.replace(pointer, self.home / "current")
        except OSError as e:  # disk full, permissions: the new venv goes, the live one stays
            shutil.rmtree(venv, ignore_errors=True)
            raise InstallFailed(f"installing the engine into {venv} failed ({e}); the previous engine is unchanged",
                                log=self.log) from None
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        self._drop_old_venvs(keep=venv)
        return True

    def _probe(self, python: str) -> dict:
        self._run("Checking the engine", [python, "-c", PROBE])
        try:
            probe = json.loads(next(line for line in reversed(self.tail) if line.startswith("{")))
        except (StopIteration, ValueError):
            raise InstallFailed("the new engine did not describe itself; the previous engine is unchanged",
                                "\n".join(self.tail), self.log) from None
        self._log.write(f"probe: {describe(probe)}\n")
        return probe

    def _run(self, phase: str, cmd: list[str], hint: str = "") -> None:
        self.progress(phase, "")
        self._log.write(f"== {phase}\n+ {subprocess.list2cmdline(cmd)}\n")
        self._log.flush()
        self.tail.clear()
        with self._swap:
            if self.cancelled.is_set():
                raise InstallCancelled()
            process = self._process = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                encoding="utf-8", errors="replace", env=subprocess_env(), cwd=self.home, **NEW_GROUP)
        with process:
            for line in process.stdout:
                line = line.rstrip()
                self._log.write(line + "\n")
                if line.strip():
                    self.tail.append(line)
                    self.progress(phase, line)
        self._process = None
        if self.cancelled.is_set():
            self._log.write("cancelled\n")
            raise InstallCancelled()
        if process.returncode != 0:
            self._log.write(f"exit code {process.returncode}\n")
            self._log.flush()
            raise InstallFailed(f"{phase} failed (exit code {process.returncode}); the previous engine is "
                                f"unchanged{'; ' + hint if hint else ''}", "\n".join(self.tail), self.log)

    def _drop_old_venvs(self, keep: Path) -> None:
        """Best effort: on Windows a venv whose python is still running cannot be deleted; the next install
        tries again."""
        for venv in (self.home / "envs").iterdir():
            if venv != keep:
                shutil.rmtree(venv, ignore_errors=True)


def remove(home: Path) -> None:
    """Forget the installed engine: the pointer first, so nothing ever points into a half-deleted venv."""
    home = Path(home)
    (home / "current").unlink(missing_ok=True)
    shutil.rmtree(home / "envs", ignore_errors=True)
    (home / "install.log").unlink(missing_ok=True)
    if (home / "envs").exists():
        raise InstallFailed(f"could not delete all of {home / 'envs'}: stop the engine (Stop Engine) or close "
                            f"programs using it, then remove again")


class InstallJob:
    """An install on a thread, for the panel to poll: `phase` and `line` while it runs, then `changed` or `error`."""

    def __init__(self, installer: Installer, force: bool = False, before_swap: Callable[[], None] = lambda: None,
                 echo: Callable[[str, str], None] = lambda phase, line: None):
        self.installer, self.force, self.before_swap, self.echo = installer, force, before_swap, echo
        self.phase, self.line = "Starting", ""
        self.changed, self.error = None, None
        self.thread = None
        installer.progress = self._progress

    def _progress(self, phase: str, line: str) -> None:
        self.phase, self.line = phase, line
        self.echo(phase, line)

    def run(self) -> None:
        try:
            self.changed = self.installer.install(self.force, self.before_swap)
        except Exception as e:  # whatever it is, the panel must show it rather than wait forever
            self.error = e

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def cancel(self) -> bool:
        return self.installer.cancel()

    @property
    def cancelling(self) -> bool:
        return self.installer.cancelled.is_set() and not self.done

    @property
    def done(self) -> bool:
        return self.changed is not None or self.error is not None
