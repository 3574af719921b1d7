"""Restoring frames in groups of the model's batch size, serially or pipelined.

Pipelined, a pool of worker threads decodes frames and finds their faces ahead of the model, and pastes, fuses,
encodes and writes behind it, while the calling thread runs the model on one group after another (a GPU then works
while the CPU does everything else). Outcomes are reported in the order the frames were given. The work per frame
is the serial path's (steps.py) and every group goes through the model as it does serially, so the bytes written
are the same. Two things must still happen in order within a sequence and wait for the frame before: tracking its
faces (prepare) and fusing it (finish); everything else runs in any order.

Memory is bounded: at most 2 x batch size + workers frames are in flight (read and not yet reported), each about
75 MB at 1920x1080 (its decoded input, the restore, the fused change and the encoder's buffer).
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

from ..jobs import ENGINE_ERROR, Item, Outcome, check_item
from . import steps
from .steps import FrameState

END = object()  # what a group source returns when no group will ever come


def default_workers() -> int:
    """Worker threads for a machine: one per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Windows and macOS have no affinity call
        return os.cpu_count() or 1


@dataclass
class Group:
    """Frames restored in one model pass (at most the batch size), their reporter, and what to do just before
    their model pass on the model's thread (e.g. the service giving the pipeline this group's reference photo)."""
    items: list[Item]
    report: Callable[[Outcome], None]
    before_model: Callable[[], None] | None = None


class _Inline:
    """An executor that runs each task at once on the caller's thread: the serial path."""

    def submit(self, fn, *args) -> Future:
        future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - kept for the reporter, as a pool keeps it
            future.set_exception(e)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class FramePath:
    """`pipeline`: a faces.restore.FramePipeline; `temporal`: a temporal.Sequences fusing frames of a sequence (or
    None); `workers`: 0 runs every step on the calling thread, one frame after another."""

    def __init__(self, pipeline, temporal=None, workers: int = 0):
        if workers < 0:
            raise ValueError(f"workers must be 0 (serial) or more, not {workers}")
        self.pipeline, self.temporal, self.workers = pipeline, temporal, int(workers)
        batch = pipeline.batch_size
        self.limit = batch if not workers else 2 * batch + workers  # frames in flight
        self._tracking: dict = {}  # sequence -> its last frame's state, whose face tracking the next one's waits for
        self._finishing: dict = {}  # sequence -> its last frame's state, whose fusion the next one's waits for

    def run(self, next_group: Callable[[bool], Group | None | object]) -> None:
        """Restore groups until `next_group` returns END. `next_group(block)` returns a Group, or None when none is
        ready now (only asked with block=False, while frames are in flight; block=True waits for one or END)."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="frame") if self.workers else _Inline()
        started: deque = deque()  # (group, [(state, prepare future)]) not yet through the model
        finishing: deque = deque()  # (group, state, finish future) in the order given, until reported
        in_flight, ended = 0, False
        try:
            while True:
                while not ended and (in_flight == 0 or in_flight + self.pipeline.batch_size <= self.limit):
                    group = next_group(not started and not finishing)
                    if group is END:
                        ended = True
                    elif group is None:
                        break
                    elif group.items:
                        started.append((group, [self._start(pool, item) for item in group.items]))
                        in_flight += len(group.items)
                in_flight -= self._report(finishing, block=False)
                if started:
                    finishing += self._through_model(pool, *started.popleft())
                elif finishing:
                    in_flight -= self._report(finishing, block=True)
                elif ended:
                    return
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _start(self, pool, item: Item) -> tuple[FrameState, Future]:
        state = FrameState(item)
        sequence = item.sequence if getattr(self.pipeline, "tracker", None) is not None else None
        before = self._tracking.get(sequence) if sequence is not None else None
        future = pool.submit(self._read_and_prepare, state, before)
        if sequence is not None:
            self._tracking[sequence] = state
            self._forget(self._tracking)
        return state, future

    def _read_and_prepare(self, state: FrameState, before: FrameState | None) -> None:
        steps.read(state)
        steps.prepare(self.pipeline, state, before)  # its tracking waits for before's (submitted earlier)

    def _through_model(self, pool, group: Group, started: list) -> list:
        wait([f for _, f in started])
        states = [s for s, _ in started]
        if group.before_model is not None and any(s.outcome is None for s in states):
            try:
                group.before_model()
            except Exception as e:  # noqa: BLE001 - costs this group's frames, never the frames after
                for s in states:
                    if s.outcome is None:
                        steps.restorer_failed(s, e)
        steps.run_model(self.pipeline, states)
        out = []
        for state in states:
            sequence = state.item.sequence if self.temporal is not None else None
            before = self._finishing.get(sequence) if sequence is not None else None
            out.append((group, state, pool.submit(steps.finish, self.pipeline, self.temporal, state, before)))
            if sequence is not None:
                self._finishing[sequence] = state
                self._forget(self._finishing)
        return out

    @staticmethod
    def _forget(last: dict, keep: int = 64) -> None:
        """Only recent sequences' last frames are held (dicts keep insertion order: the oldest go first)."""
        while len(last) > keep:
            last.pop(next(iter(last)))

    @staticmethod
    def _report(finishing: deque, block: bool) -> int:
        """Report finished frames from the front, in the order given (block: at least the front one)."""
        count = 0
        while finishing and (block and count == 0 or finishing[0][2].done()):
            group, state, future = finishing.popleft()
            error = future.exception()
            if error is not None:  # a fault outside the steps' own handling: it costs this frame only
                state.fail(f"{state.item.input}: engine error: {steps.describe(error)}", ENGINE_ERROR)
            if not state.item.preroll:
                group.report(state.outcome)
            count += 1
        return count


def restore_items(pipeline, items: list[Item], skip_existing: bool = False, overwrite: bool = False,
                  allow_in_place: bool = False, on_outcome: Callable[[Outcome], None] | None = None,
                  temporal=None, workers: int = 0) -> list[Outcome]:
    """Restore `items` with a faces.restore.FramePipeline in groups of its batch size (sequences fused by
    `temporal`, a temporal.Sequences, in the order given), on `workers` threads (0: serially). Pre-roll items are
    restored and fused, not reported. Outcomes in the order of `items`, skips and refusals first."""
    outcomes = []

    def report(o: Outcome):
        outcomes.append(o)
        if on_outcome:
            on_outcome(o)

    pending = []
    for item in items:
        decided = None if item.preroll else check_item(item, skip_existing, overwrite, allow_in_place)
        if decided:
            report(decided)
        else:
            pending.append(item)
    batch = pipeline.batch_size
    groups = iter([Group(pending[k:k + batch], report) for k in range(0, len(pending), batch)])
    FramePath(pipeline, temporal, workers).run(lambda block: next(groups, END))
    return outcomes
