"""Stand-in engines for the client's failure paths: hung, silent, another protocol version, failing every frame,
dying or hanging halfway through writing a frame.

`make_stand_in(folder, behaviour)` writes an executable that the client can be given as its "engine python": the
client runs `<it> -m engine serve ...`, and the stand-in ignores those arguments. Standard library only.
"""
import json
import shutil
import stat
import sys
import time
from pathlib import Path


def make_stand_in(folder: Path, behaviour: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / f"stand_in_{behaviour.replace(':', '_').replace('.', '_')}"
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                      f"import stand_in_engine\nstand_in_engine.main({behaviour!r})\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def _send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(behaviour: str) -> None:
    kind, _, arg = behaviour.partition(":")
    if kind == "silent-start":  # never says ready
        sys.stdin.read()
        return
    _send({"event": "ready", "ok": True, "version": "stand-in", "protocol": int(arg) if kind == "protocol" else 1,
           "device": "cpu"})
    if kind == "compiling":  # compiles in the background until its first restore is answered
        _send({"event": "compile", "state": "compiling", "mode": "reduce-overhead", "shapes": [], "seconds": 0})
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("op") == "shutdown":
            _send({"id": msg["id"], "ok": True, "result": {"shutdown": True}})
            return
        if kind in ("silent", "protocol") or msg.get("op") != "restore":
            continue
        items = msg.get("items") or [{"input": msg["input"], "output": msg["output"]}]
        if kind in ("dies-writing", "hangs-writing"):  # the engine's own temporary name, as atomic writes make it
            out = Path(items[0]["output"])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.with_name(f".{out.stem}.0123abcd.partial{out.suffix}").write_bytes(b"\x89PNG half a frame")
            if kind == "dies-writing":
                sys.exit(3)
            sys.stdin.read()
        if kind == "fail":
            _send({"id": msg["id"], "ok": False, "error": {"code": "engine_error", "message": "stand-in failure"}})
            continue
        time.sleep(float(arg or 0))
        if kind == "compiling":
            _send({"event": "compile", "state": "ready", "mode": "reduce-overhead", "shapes": [[1, 3, 64, 64]],
                   "seconds": 1.0})
        for item in items:
            shutil.copyfile(item["input"], item["output"])
        _send({"id": msg["id"], "ok": True, "result": {"items": [{**i, "status": "restored"} for i in items],
                                                       "restored": len(items), "failed": 0}})
