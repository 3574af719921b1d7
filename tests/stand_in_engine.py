"""Stand-in engines for the client's failure paths: hung, silent, another protocol version, failing every frame,
dying or hanging halfway through writing a frame, dying halfway through a batch, answering only once it reads on.

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
    script = folder / f"stand_in_{behaviour.replace(':', '_').replace('.', '_').replace('/', '_')}"
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                      f"import stand_in_engine\nstand_in_engine.main({behaviour!r})\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def _send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _restore_visibly(request_id, items: list, skip_existing: bool = False) -> None:
    """Each output is its input with " restored" added, so that a frame restored twice shows it; progress tells of
    each frame as the engine's does. With skip_existing, an output already there is left alone and "skipped"."""
    outcomes = []
    for done, item in enumerate(items, 1):
        if skip_existing and Path(item["output"]).exists():
            outcomes.append({**item, "status": "skipped"})
        else:
            Path(item["output"]).write_bytes(Path(item["input"]).read_bytes() + b" restored")
            outcomes.append({**item, "status": "restored"})
        _send({"id": request_id, "event": "progress", "done": done, "total": len(items), "item": outcomes[-1]})
    _send({"id": request_id, "ok": True, "result": {
        "items": outcomes, **{s: sum(o["status"] == s for o in outcomes) for s in ("restored", "skipped", "failed")}}})


def _die_mid_batch(arg: str) -> None:
    """dies-mid-batch:W/B gathers B frames, whichever requests they come in, writes and reports the first W, then
    dies before any final answer, as the engine does when it crashes inside a batch. Only the first start dies (a
    file beside the script remembers it): the restarted one restores what it is sent, and lists the inputs it was
    sent in another file beside the script (.resent), one a line."""
    written, size = (int(n) for n in arg.split("/"))
    died, resent = Path(sys.argv[0]).with_suffix(".died"), Path(sys.argv[0]).with_suffix(".resent")
    batch = []  # (request id, item, the request's number of items)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("op") == "shutdown":
            _send({"id": msg["id"], "ok": True, "result": {"shutdown": True}})
            return
        if msg.get("op") != "restore":
            continue
        if died.exists():
            with open(resent, "a", encoding="utf-8") as log:
                log.writelines(f"{item['input']}\n" for item in msg["items"])
            _restore_visibly(msg["id"], msg["items"], msg.get("skip_existing", False))
            continue
        batch += [(msg["id"], item, len(msg["items"])) for item in msg["items"]]
        if len(batch) >= size:
            died.write_text("")
            done: dict = {}
            for request_id, item, total in batch[:written]:
                Path(item["output"]).write_bytes(Path(item["input"]).read_bytes() + b" restored")
                done[request_id] = done.get(request_id, 0) + 1
                _send({"id": request_id, "event": "progress", "done": done[request_id], "total": total,
                       "item": {**item, "status": "restored"}})
            sys.exit(3)


def main(behaviour: str) -> None:
    kind, _, arg = behaviour.partition(":")
    if kind == "silent-start":  # never says ready
        sys.stdin.read()
        return
    _send({"event": "ready", "ok": True, "version": "stand-in", "protocol": int(arg) if kind == "protocol" else 1,
           "device": "cpu"})
    if kind == "compiling":  # compiles in the background until its first restore is answered
        _send({"event": "compile", "state": "compiling", "mode": "reduce-overhead", "shapes": [], "seconds": 0})
    if kind == "dies-mid-batch":
        return _die_mid_batch(arg)
    held = []  # "held": restore requests answered only once another line comes in
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("op") == "shutdown":
            _send({"id": msg["id"], "ok": True, "result": {"shutdown": True}})
            return
        if kind == "held":
            if msg.get("op") == "restore":
                held.append(msg)
            else:
                for request in held:
                    _restore_visibly(request["id"], request["items"])
                held.clear()
            continue
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
