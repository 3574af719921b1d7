"""The engine's stdio protocol: one JSON object per line each way. Standard library only.

This one module is used by both sides: the engine (`python -m engine serve`) and the client that Blender ships.

Requests   {"id": str|int, "op": "ping"|"info"|"restore"|"cancel"|"shutdown", ...}
  restore  {"input": PATH, "output": PATH} or {"items": [{"input", "output"}, ...]}
           options: "overwrite" (replace existing outputs), "in_place" (allow output == input),
           "skip_existing" (leave existing outputs alone), "faces" (one of FACE_MODES, default "auto"),
           "sequence": ID and "index": N (frames of one animation, fused with the frame before: item k is frame
           N + k; an item may carry its own "sequence" and "index"). A frame whose index does not follow the last
           one fused in its sequence (a gap, out of order) restarts the fusion.
           "reference": PATH, a photo of the person given beside every frame, for weights that take one (the
           ready line's "takes_reference"); such weights refuse requests without one, other weights requests with
           one. A reference that cannot be read, or without a face where frames are restored face by face, fails
           that request's frames (bad_input), no other request's.
  cancel   {"target": ID}: queued frames of that request are dropped, a running list stops between frames
Answers    {"id", "ok": true, "result": {...}} or {"id", "ok": false, "error": {"code", "message"}, "result"?}
           a restore's result: {"items": [{"input", "output", "status": "restored"|"skipped"|"failed", "reason"?,
           "code"?, "mode"?: "whole"|"faces", "faces"?: [{"box", "scale", "score", "landmarks"}], "note"?,
           "crops"?: [PATH]}], "restored", "skipped", "failed", "cancelled"}
Events     {"event": "ready", "ok", "version", "protocol", "device", "model", "compile", "takes_reference"} first,
           once;
           {"id", "event": "progress", "done", "total", "item"} as each frame of a restore is decided; "item" is
           that frame's entry of the result's items, so a client whose engine dies before the final answer sends
           again only the frames no "item" has told of (an In Place frame already replaced must not be restored
           twice);
           {"event": "compile", "state", "mode", "shapes", "seconds", "cache"?, "message"?} after ready and at each
           change. state: "off" (eager only), "compiling" (in the background; frames are served eagerly meanwhile),
           "ready" (compiled code used for `shapes`) or "failed" (eager for good; `message` says why)
"""
from __future__ import annotations

import json

PROTOCOL_VERSION = 1
OPS = ("ping", "info", "restore", "cancel", "shutdown")
RESTORE_OPTIONS = ("overwrite", "in_place", "skip_existing")
# auto: faces restored in frames larger than the model, the rest untouched; off: whole frame; only-crops: the crops
FACE_MODES = ("auto", "off", "only-crops")
MAX_LINE = 16 * 1024 * 1024


class Code:
    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    BAD_INPUT = "bad_input"  # missing, empty, corrupt or unsupported image
    BAD_OUTPUT = "bad_output"  # unwritable, exists, or would overwrite the input
    CANCELLED = "cancelled"
    ENGINE_ERROR = "engine_error"
    LOAD_FAILED = "load_failed"
    LICENSE_NOT_ACCEPTED = "license_not_accepted"  # third-party weights whose licence was not accepted


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str, request_id=None):
        super().__init__(message)
        self.code, self.message, self.request_id = code, message, request_id


def encode(message: dict) -> bytes:
    return (json.dumps(message, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


def read_line(stream) -> bytes:
    """The next line of a binary stream (b"" at its end), never holding more than MAX_LINE + 1 bytes of it.

    An over-long line is read to its end in bounded pieces and dropped, then ProtocolError(bad_request) is raised:
    the stream stays in step and the reader can go on with the next line.
    """
    line = stream.readline(MAX_LINE + 1)
    if line.endswith(b"\n") or len(line) <= MAX_LINE:
        return line
    dropped = len(line)
    while line and not line.endswith(b"\n"):
        line = stream.readline(MAX_LINE + 1)
        dropped += len(line)
    raise ProtocolError(Code.BAD_REQUEST, f"message of {dropped} bytes is over the {MAX_LINE}-byte limit; dropped")


def decode(line: bytes | str) -> dict:
    if len(line) > MAX_LINE + 1:  # read_line bounds the read itself; this guards lines that came another way
        raise ProtocolError(Code.BAD_REQUEST, f"message of {len(line)} bytes is over the {MAX_LINE}-byte limit")
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(Code.BAD_JSON, f"not JSON: {e}") from None
    except RecursionError:  # json's parser recurses per bracket; no message of ours nests past a few levels
        raise ProtocolError(Code.BAD_JSON, "JSON nested too deeply to read") from None
    if not isinstance(message, dict):
        raise ProtocolError(Code.BAD_JSON, f"expected a JSON object, got {type(message).__name__}")
    return message


def answer(request_id, result: dict) -> dict:
    return {"id": request_id, "ok": True, "result": result}


def failure(request_id, code: str, message: str, result: dict | None = None) -> dict:
    out = {"id": request_id, "ok": False, "error": {"code": code, "message": message}}
    if result is not None:
        out["result"] = result
    return out


def progress(request_id, done: int, total: int, item: dict | None = None) -> dict:
    """item: the frame just decided, as it appears in the final answer's result["items"]."""
    message = {"id": request_id, "event": "progress", "done": done, "total": total}
    return message if item is None else {**message, "item": item}


def _sequence_frame(source: dict, where: str, request_id) -> tuple | None:
    """(sequence, index) from a request or an item, or None when it has neither."""
    if "sequence" not in source and "index" not in source:
        return None
    sequence, index = source.get("sequence"), source.get("index")
    if not isinstance(sequence, (str, int)) or isinstance(sequence, bool):
        raise ProtocolError(Code.BAD_REQUEST, f"{where}'sequence' must be a string or integer naming the animation, "
                                              f"given with its frame's 'index'", request_id)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ProtocolError(Code.BAD_REQUEST, f"{where}'index' must be a frame number of at least 0, given with "
                                              f"'sequence'", request_id)
    return sequence, index


def compile_event(status: dict) -> dict:
    """status: the engine's compile status, as "compile" in its ready line and info."""
    return {"event": "compile", **status}


def _path(value, where: str, request_id) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ProtocolError(Code.BAD_REQUEST, f"{where} must be a non-empty path string", request_id)
    return value


def parse_request(message: dict) -> tuple:
    """(id, op, params), with params checked for the op; anything off raises ProtocolError."""
    request_id = message.get("id")
    if not isinstance(request_id, (str, int)) or isinstance(request_id, bool):
        raise ProtocolError(Code.BAD_REQUEST, "every request needs an 'id' (string or integer)", None)
    op = message.get("op")
    if op not in OPS:
        raise ProtocolError(Code.UNKNOWN_OP, f"unknown op {op!r}; known: {', '.join(OPS)}", request_id)
    params = {}
    if op == "cancel":
        target = message.get("target")
        if not isinstance(target, (str, int)) or isinstance(target, bool):
            raise ProtocolError(Code.BAD_REQUEST, "cancel needs a 'target' request id", request_id)
        params["target"] = target
    elif op == "restore":
        if "items" in message:
            items = message["items"]
            if not isinstance(items, list) or not items:
                raise ProtocolError(Code.BAD_REQUEST, "'items' must be a non-empty list", request_id)
            if not all(isinstance(i, dict) for i in items):
                raise ProtocolError(Code.BAD_REQUEST, "each item must be {\"input\", \"output\"}", request_id)
            params["items"] = [(_path(i.get("input"), f"items[{k}].input", request_id),
                                _path(i.get("output"), f"items[{k}].output", request_id))
                               for k, i in enumerate(items)]
            params["single"] = False
        else:
            params["items"] = [(_path(message.get("input"), "input", request_id),
                                _path(message.get("output"), "output", request_id))]
            params["single"] = True
        first = _sequence_frame(message, "", request_id)
        items = message["items"] if "items" in message else [{}]
        params["frames"] = [_sequence_frame(item, f"items[{k}].", request_id)
                            or (None if first is None else (first[0], first[1] + k))
                            for k, item in enumerate(items)]
        for key in RESTORE_OPTIONS:
            value = message.get(key, False)
            if not isinstance(value, bool):
                raise ProtocolError(Code.BAD_REQUEST, f"'{key}' must be true or false", request_id)
            params[key] = value
        params["reference"] = None if message.get("reference") is None else \
            _path(message["reference"], "'reference' (a photo of the person)", request_id)
        params["faces"] = message.get("faces", "auto")
        if params["faces"] not in FACE_MODES:
            raise ProtocolError(Code.BAD_REQUEST, f"'faces' must be one of {', '.join(FACE_MODES)}", request_id)
    return request_id, op, params
