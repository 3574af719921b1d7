"""The add-on's GPU menu: the devices the engine reports (`python -m engine info --devices --json`). No bpy.

Until Refresh asks the engine (and always in background mode, where no one picks from a menu), the menu offers
"auto" and "cpu" plus whatever device the preferences already hold, so a saved "cuda:1" is never lost.
"""
from __future__ import annotations

import json
import os
import subprocess

BASE = [("auto", "Auto", "CUDA, then Metal, then CPU"), ("cpu", "CPU", "")]


def _gib(n) -> str:
    return f"{n / 2 ** 30:.1f} GiB"


def describe(devices: list[dict]) -> list[tuple[str, str, str]]:
    """(id, label, description) for each device of the engine's list."""
    out = []
    for d in devices:
        label = f"{d['id']}: {d.get('name', '')}".rstrip(": ")
        if "memory" in d:
            label += f" ({_gib(d['memory'])}" + (f", {_gib(d['free'])} free)" if "free" in d else ")")
        out.append((d["id"], label, d.get("name", "")))
    return out


def list_devices(python: str, cwd: str | None = None, timeout: float = 120.0) -> list[tuple[str, str, str]]:
    """Ask the engine interpreter which devices it sees; ValueError says why it could not."""
    if not python or not os.path.isfile(python):
        raise ValueError(f"engine interpreter not found: {python!r}; set Engine Python first")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")}
    try:
        r = subprocess.run([python, "-m", "engine", "info", "--devices", "--json"], capture_output=True, text=True,
                           timeout=timeout, cwd=cwd, env=env, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ValueError(f"could not ask {python} for its devices: {e}") from None
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"{python} -m engine info --devices failed (exit {r.returncode}): {tail}")
    try:
        return describe(json.loads(r.stdout)["devices"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"unreadable device list from {python}: {e}") from None


def menu(listed: list[tuple[str, str, str]], current: str) -> list[tuple[str, str, str]]:
    """The menu's entries: auto, cpu, the listed devices, and the current choice if it is none of those."""
    items = list(BASE) + [d for d in listed if d[0] not in ("auto", "cpu")]
    if current and current not in {i[0] for i in items}:
        items.append((current, f"{current} (not listed: press Refresh)", ""))
    return items
