"""Which frames form a sequence, and each sequence's fusion state while its frames arrive one at a time."""
from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from blender_addon.engine_link.scan import natural_key

from ..jobs import UsageError, collect_items
from .fusion import FusionConfig, TemporalFusion


class Sequences:
    """Fusion per sequence id. A frame must be the one after the last fused in its sequence, else its sequence
    starts again from it: after a gap or out of order, the previous frame is not the picture before this one.
    Only the `keep` most recently used sequences are remembered (each holds a frame and its change). Frames of
    different sequences may be fused at once on different threads; one sequence's come one at a time."""

    def __init__(self, config: FusionConfig | None = None, keep: int = 4):
        self.config, self.keep = config, keep
        self.memory = (config or FusionConfig()).memory  # frames a shard pre-rolls (see preroll)
        self._states: OrderedDict = OrderedDict()  # id -> (TemporalFusion, index of its last frame)
        self._lock = threading.Lock()

    def fuse(self, sequence, index: int, image: np.ndarray, restored: np.ndarray) -> np.ndarray:
        """Frame `index` of `sequence`; see TemporalFusion.fuse (writes into `restored`)."""
        with self._lock:
            fusion, last = self._states.pop(sequence, (None, None))
        if fusion is None or last is None or index != last + 1:
            fusion = TemporalFusion(self.config)
        out = fusion.fuse(image, restored)
        with self._lock:
            self._states[sequence] = fusion, index
            while len(self._states) > self.keep:
                self._states.popitem(last=False)
        return out


def number_sequences(items: list) -> list:
    """jobs.Items grouped by their input's folder, each folder one sequence in natural name order (f_2 before f_10),
    with `sequence` and `index` set; folders in the order they first appear."""
    folders = defaultdict(list)
    for item in items:
        folders[item.input.parent].append(item)
    ordered = []
    for folder, members in folders.items():
        members.sort(key=lambda it: natural_key(it.input.name))
        for index, item in enumerate(members):
            item.sequence, item.index = str(folder), index
        ordered += members
    return ordered


def preroll(items: list, start: int, frames: int | None) -> list:
    """The frames before items[start] in its sequence, at most `frames` of them (None: from the sequence's first), as
    copies marked `preroll`: a process that starts at items[start] restores and fuses them first, without writing or
    reporting them, so that it fuses items[start] and the frames after it as one process running from the sequence's
    start would (see FusionConfig.memory). `items` as number_sequences orders them."""
    if not 0 <= start < len(items) or items[start].sequence is None:
        return []
    first, limit = start, 0 if frames is None else max(0, start - frames)
    while first > limit and items[first - 1].sequence == items[start].sequence:
        first -= 1
    return [replace(item, preroll=True) for item in items[first:start]]


def sequence_files(folder) -> list:
    """The image files of one folder in natural name order: a sequence as `restore --temporal` takes it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder of frames")
    return [item.input for item in number_sequences(collect_items([folder], folder))]
