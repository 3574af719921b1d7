"""`python -m engine serve`: the restorer loaded once, answering JSON lines on stdin/stdout.

A reader thread parses requests and answers the quick ones (ping, info, cancel, shutdown) at once; the main thread
restores queued frames in batches across requests through the pipelined frame path (engine/pipeline: worker threads
read, find faces, paste, fuse and write while the main thread runs the model), taking the next batch while earlier
ones are in flight; a cancelled request's frames already in flight finish before its answer. stdout carries only
protocol lines: anything a library prints goes to stderr.

A request may name a reference photo (weights that take one). A batch holds frames of one reference only; each photo
is read, its face found and encoded once for all requests that name it (faces.reference.ReferenceCache, and the
runner's cache of the same array). A reference that cannot be used fails its request's frames, never another's.
"""
from __future__ import annotations

import os
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from blender_addon.engine_link import protocol
from blender_addon.engine_link.protocol import Code, ProtocolError
from blender_addon.engine_link.scan import printable

from . import __version__
from .faces.reference import ReferenceCache, cannot_use, needs_one
from .images import header_size
from .jobs import Item, Outcome, check_item
from .pipeline.run import END, FramePath, Group
from .temporal.sequences import Sequences


@dataclass
class RestoreJob:
    id: object
    single: bool
    options: dict
    pending: deque
    total: int
    outcomes: list = field(default_factory=list)
    cancelled: bool = False
    reference: str | None = None  # the reference photo's path, as the request gave it
    refused: tuple | None = None  # (reason, code): why its frames all fail (its reference cannot be used)
    in_flight: int = 0  # frames taken for restoring whose outcome has not come back yet


class Service:
    """`pipeline`: a faces.restore.FramePipeline (prepare, run_model, finish, batch_size, describe())."""

    def __init__(self, pipeline, out, model_info: dict | None = None, workers: int = 0):
        self.pipeline, self.out, self.workers = pipeline, out, workers
        self.model_info = model_info or {}
        self.write_lock = threading.Lock()
        self.cond = threading.Condition()
        self.jobs: deque[RestoreJob] = deque()
        self.closing = False
        self.temporal = Sequences()  # animation frames sent with "sequence" and "index"
        self.references = ReferenceCache()
        self._reference_set = None  # the faces.reference.Reference the pipeline holds now (None: none)

    def send(self, message: dict) -> None:
        data = protocol.encode(message)
        with self.write_lock:
            try:
                self.out.write(data)
                self.out.flush()
            except (BrokenPipeError, OSError):  # the client is gone; finish quietly
                self.closing = True

    def describe(self) -> dict:
        return {"version": __version__, "protocol": protocol.PROTOCOL_VERSION, **self.pipeline.describe(),
                "model": self.model_info}

    # reader side ------------------------------------------------------------------------------------------------
    def read_loop(self, stream) -> None:
        while not self.closing:
            try:
                line = protocol.read_line(stream)
            except ProtocolError as e:  # an over-long line: dropped unread, answered, and the next one is served
                self.send(protocol.failure(e.request_id, e.code, e.message))
                continue
            except (OSError, ValueError):  # stdin closed under us
                break
            if not line:
                break
            if line.strip():
                try:
                    self.handle_line(line)
                except Exception as e:  # a fault answering one line must not end the reading of the next
                    print(f"error: handling a request failed: {e!r}", file=sys.stderr)
                    self.send(protocol.failure(None, Code.ENGINE_ERROR, f"engine error handling a request: "
                                                                        f"{type(e).__name__}: {e}"))
        with self.cond:  # stdin closed: the client is gone, so queued work has no one to answer to
            for j in self.jobs:
                j.cancelled = True
            self.closing = True
            self.cond.notify_all()

    def handle_line(self, line: bytes) -> None:
        try:
            request_id, op, params = protocol.parse_request(protocol.decode(line))
        except ProtocolError as e:
            self.send(protocol.failure(e.request_id, e.code, e.message))
            return
        if op == "ping":
            self.send(protocol.answer(request_id, {"pong": True}))
        elif op == "info":
            self.send(protocol.answer(request_id, self.describe()))
        elif op == "cancel":
            with self.cond:
                found = [j for j in self.jobs if j.id == params["target"]]
                for j in found:
                    j.cancelled = True
                self.cond.notify_all()
            self.send(protocol.answer(request_id, {"target": params["target"], "found": bool(found)}))
        elif op == "shutdown":
            with self.cond:
                for j in self.jobs:
                    j.cancelled = True
                self.closing = True
                self.cond.notify_all()
            self.send(protocol.answer(request_id, {"shutdown": True}))
        else:
            self.enqueue(request_id, params)

    def enqueue(self, request_id, params: dict) -> None:
        items = deque(Item(Path(i), Path(o), params["faces"], params["overwrite"], *(frame or (None, 0)))
                      for (i, o), frame in zip(params["items"], params["frames"]))
        options = {k: params[k] for k in protocol.RESTORE_OPTIONS}
        job = RestoreJob(request_id, params["single"], options, items, len(items), reference=params.get("reference"))
        # pipelines that know nothing of references (test doubles) take none
        takes, weights = (getattr(self.pipeline, k, d) for k, d in (("takes_reference", False),
                                                                    ("weights_name", "these weights")))
        if job.reference is not None and not takes:
            job.refused = cannot_use(printable(job.reference), weights), Code.BAD_REQUEST
        elif job.reference is None and takes:
            job.refused = needs_one(weights), Code.BAD_REQUEST
        with self.cond:
            if any(j.id == request_id for j in self.jobs):
                self.send(protocol.failure(request_id, Code.BAD_REQUEST, f"request id {request_id!r} is still "
                                                                         f"in progress; use a new id"))
                return
            self.jobs.append(job)
            self.cond.notify_all()

    # worker side ------------------------------------------------------------------------------------------------
    def work_loop(self) -> None:
        """Restore queued frames until closing with nothing left (see read_loop)."""
        FramePath(self.pipeline, self.temporal, self.workers).run(self._next_group)

    def _next_group(self, block: bool):
        """The frame path's source: the next batch (a pipeline.run.Group), None if none now (block=False), END once
        closing with no request left. Requests whose frames have all come back are answered on the way."""
        while True:
            self._finish_jobs()
            with self.cond:
                batch, owners, reference = self._take_batch()
                if not batch:
                    if any(self._done(j) for j in self.jobs):
                        continue
                    if self.closing and not self.jobs:
                        return END
                    if not block:
                        return None
                    self.cond.wait()
                    continue
            batch, photo = self._use_reference(reference, batch, owners)
            if batch:
                return Group(batch, lambda o, owners=owners: self._came_back(owners[id(o.item)], o),
                             lambda photo=photo: self._set_reference(photo))

    def _came_back(self, job: RestoreJob, outcome: Outcome) -> None:
        self._record(job, outcome)
        with self.cond:
            job.in_flight -= 1

    def _set_reference(self, photo) -> None:
        """Just before a batch's model pass: the pipeline gets that batch's reference photo (or none)."""
        if photo is not self._reference_set:
            self.pipeline.set_reference(photo)
            self._reference_set = photo

    def _use_reference(self, reference: str | None, batch: list, owners: dict) -> tuple[list, object]:
        """The batch's frames that can be restored with its reference photo, and the photo (read once:
        self.references, which also sees a photo replaced on disk). A reference that cannot be read fails the batch
        and the rest of its requests; one without a face fails the frames that would be restored face by face."""
        from .runtime import ReferenceError

        faced, loaded = batch, False
        try:
            photo = None if reference is None else self.references.get(reference)
            loaded = True
            if photo is None:
                return batch, None
            faced = [i for i in batch if self.pipeline.needs_faces(header_size(i.input), i.faces)]
            if faced:
                self.pipeline.reference_face(photo)  # found once per photo; a photo without a face raises every time
            return batch, photo
        except ReferenceError as e:
            if not loaded:  # unreadable: nothing of these requests can be restored
                for item in batch:
                    owners[id(item)].refused = str(e), Code.BAD_INPUT
            for item in faced:
                self._came_back(owners[id(item)], Outcome(item, "failed", str(e), Code.BAD_INPUT))
            failed = {id(i) for i in faced}
            return [i for i in batch if id(i) not in failed], (photo if loaded else None)

    def _take_batch(self):
        """Up to one batch of frames from the front of the queue, all of one reference photo (or none), and that
        reference; items decided without pixels are recorded."""
        batch, owners, reference = [], {}, None
        for job in self.jobs:
            if job.refused is not None:
                while job.pending and not job.cancelled:
                    self._record(job, Outcome(job.pending.popleft(), "failed", *job.refused))
                continue
            if batch and job.reference != reference:  # served in a later batch, once this reference's are done
                continue
            while job.pending and not job.cancelled and len(batch) < self.pipeline.batch_size:
                item = job.pending.popleft()
                try:
                    decided = check_item(item, job.options["skip_existing"], job.options["overwrite"],
                                         job.options["in_place"])
                except Exception as e:  # check_item means not to raise; if it does, this frame pays, not the service
                    decided = Outcome(item, "failed", f"{printable(item.input)} -> {printable(item.output)}: "
                                                      f"engine error checking it: {type(e).__name__}: {e}",
                                      Code.ENGINE_ERROR)
                if decided:
                    self._record(job, decided)
                else:
                    batch.append(item)
                    owners[id(item)] = job
                    job.in_flight += 1
                    reference = job.reference
            if len(batch) >= self.pipeline.batch_size:
                break
        return batch, owners, reference

    def _record(self, job: RestoreJob, outcome: Outcome) -> None:
        job.outcomes.append(outcome)
        # the outcome itself, so that a client whose engine dies mid-request never resends a frame already written
        self.send(protocol.progress(job.id, len(job.outcomes), job.total, outcome.to_dict()))

    @staticmethod
    def _done(job: RestoreJob) -> bool:
        """Answerable: nothing of it in flight, and cancelled or every frame's outcome in."""
        return not job.in_flight and (job.cancelled or (not job.pending and len(job.outcomes) == job.total))

    def _finish_jobs(self) -> None:
        with self.cond:
            done = [j for j in self.jobs if self._done(j)]
            for j in done:
                self.jobs.remove(j)
        for j in done:
            self.send(self._final_answer(j))

    @staticmethod
    def _final_answer(job: RestoreJob) -> dict:
        counts = {s: sum(o.status == s for o in job.outcomes) for s in ("restored", "skipped", "failed")}
        counts["cancelled"] = job.total - len(job.outcomes)
        result = {"items": [o.to_dict() for o in job.outcomes], **counts}
        if job.cancelled and counts["cancelled"]:
            return protocol.failure(job.id, Code.CANCELLED, f"cancelled after {len(job.outcomes)} of {job.total} "
                                                            f"frames", result)
        failed = [o for o in job.outcomes if o.status == "failed"]
        if failed:
            message = failed[0].reason if job.single else \
                f"{len(failed)} of {job.total} frames failed; first: {failed[0].reason}"
            return protocol.failure(job.id, failed[0].code or Code.ENGINE_ERROR, message, result)
        return protocol.answer(job.id, result)


def serve(args) -> int:
    """Entry point for the CLI. Keeps the real stdout for protocol lines and points fd 1 at stderr."""
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a service never reaches for the network

    from blender_addon.engine_link.licenses import LicenseNotAccepted

    from .faces.detect import faces_unavailable
    from .faces.restore import FramePipeline
    from .pipeline.run import default_workers
    from .runtime import ModelRunner, warn_if_gpu_unused

    def ready_failure(message: str, code: str = Code.LOAD_FAILED, exit_code: int = 1) -> int:
        protocol_out.write(protocol.encode({"event": "ready", "ok": False, "version": __version__,
                                            "error": {"code": code, "message": message}}))
        print(f"error: {message}", file=sys.stderr)
        return exit_code

    try:
        restorer = ModelRunner.from_pretrained(args.weights, args.base, args.accept_license, device=args.device,
                                            dtype=args.dtype, batch_size=args.batch_size, tile=args.tile,
                                            compile=args.compile, compile_cache=args.compile_cache)
    except LicenseNotAccepted as e:  # refused before anything loaded; exit 2 like the CLI's usage errors
        return ready_failure(str(e), Code.LICENSE_NOT_ACCEPTED, exit_code=2)
    except Exception as e:  # anything that stops loading is reported in the ready line, then we exit
        return ready_failure(str(e) or type(e).__name__)
    warn_if_gpu_unused(args.device, restorer.device)
    problem = faces_unavailable()  # once: whole frames are still served; frames that need faces fail with this
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    info = restorer.info
    pipeline = FramePipeline(restorer, args.min_face, detect_every=args.detect_every)
    service = Service(pipeline, protocol_out,
                      {"weights": str(args.weights), "base": info.base, "source": info.source,
                       "input_range": info.restorer.input_range},
                      default_workers() if args.workers is None else args.workers)
    service.send({"event": "ready", "ok": True, **service.describe()})
    compile_lock = threading.Lock()

    def report_compile():  # the state as of sending, in order: the last event is always the current one
        with compile_lock:
            service.send(protocol.compile_event(restorer.forward.status()))
    restorer.forward.on_change = report_compile
    report_compile()  # once now: a change before on_change was set is not lost
    print(f"splat-restore engine ready on {restorer.device} ({restorer.dtype})", file=sys.stderr)
    # daemon only so that a client gone without closing our stdin cannot keep the process alive; after a shutdown
    # request or stdin's end it has finished before we exit, so no thread is cut down during interpreter teardown
    reader = threading.Thread(target=service.read_loop, args=(sys.stdin.buffer,), name="protocol-reader",
                              daemon=True)
    reader.start()
    try:
        service.work_loop()
    finally:
        pipeline.close()  # mediapipe's graphs join their native threads now, not in C++ static teardown at exit
    reader.join(timeout=5)
    try:
        protocol_out.flush()
    except OSError:
        pass
    return 0
