"""What the web page does, without the page: restore uploads, degrade a clean face and restore it, restore a
sequence per frame and with temporal fusion. One loaded FramePipeline (the one `serve` uses: fast path, buckets,
face-aware restore) serves them all; a lock keeps model calls one at a time whatever the web server's threads do.

Result files live only until Gradio has its copy: each request writes into a folder of its own, and the next request
of the same action removes it. Gradio copies every file a handler returns into its cache when the handler returns
(Blocks.process_api: call_function, then postprocess_data -> async_move_files_to_cache -> save_file_to_cache), and
the page's queue starts an event's next request only once that is done (concurrency limit 1 per event, its slot
freed after process_api), so the page serves Gradio's copy and this folder holds at most one request per action.
"""
from __future__ import annotations

import io
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..atomic import write_bytes_new
from ..faces.reference import Reference, cannot_use, needs_one
from ..images import encode_image
from ..measure.fidelity import psnr, ssim
from ..temporal.fusion import TemporalFusion
from .degradation import TrainingDegradation
from .uploads import MAX_IMAGES, UploadError, check_run_size, display_name, load_image, sequence_frames, zip_bytes

Progress = Callable[[float, str], None]
PLAYBACK_FPS = 12  # half a film's rate: flicker is easier to see, and motion still reads as motion
PLAYBACK_PIXELS = 100e6  # all frames of the playback together: a few tens of MB, lossless


def _quiet(fraction: float, text: str) -> None:
    pass


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def side_by_side(*images: np.ndarray, max_width: int = 1536, max_pixels: float = float("inf")) -> np.ndarray:
    """A preview row of same-sized images, subsampled by a whole step (pixels kept exact, never resampled) until it
    is at most `max_width` wide and `max_pixels` big. The zips hold the full frames."""
    row = np.concatenate(images, axis=1)
    h, w = row.shape[:2]
    step = max(1, -(-w // max_width))
    while -(-h // step) * -(-w // step) > max_pixels:
        step += 1
    return np.ascontiguousarray(row[::step, ::step])  # a copy: a view would keep the whole row alive


def playback_webp(rows: list[np.ndarray], fps: int = PLAYBACK_FPS) -> bytes:
    """An animated lossless WebP, looping: a lossy codec would add a flicker of its own to the one being judged."""
    images = [Image.fromarray(r) for r in rows]
    buffer = io.BytesIO()
    images[0].save(buffer, "WEBP", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                   lossless=True, method=0)  # method 0: fastest; lossless whatever the method
    return buffer.getvalue()


def safe_stem(name: str) -> str:
    """A file stem that is safe on every OS from whatever name a browser sent."""
    stem = re.sub(r"[^\w.-]+", "_", Path(name).stem).strip("._")
    return stem[:80] or "image"


@dataclass
class Restored:
    name: str
    before: np.ndarray  # uint8 RGB, for the page
    after: np.ndarray
    path: Path  # the restored PNG (with the model's provenance text), for download
    note: str = ""
    reference: np.ndarray | None = None  # uint8 RGB: the reference as the model saw it (its face crop for faces)


@dataclass
class DegradeResult:
    clean: np.ndarray  # uint8 RGB crops at the model's size
    degraded: np.ndarray
    restored: np.ndarray
    metrics: dict  # {"degraded": {...}, "restored": {...}}: LPIPS (None if unavailable), PSNR, SSIM vs clean
    notes: list[str] = field(default_factory=list)


@dataclass
class SequenceResult:
    names: list[str]
    inputs: list[np.ndarray]  # uint8 RGB
    per_frame: list[np.ndarray]
    temporal: list[np.ndarray]
    flicker: dict  # series name -> per-frame warping error (8-bit levels), frames 1..n-1
    means: dict  # series name -> mean of it
    archive: Path  # per_frame/ and temporal/ PNGs
    playback: Path  # input | per-frame | temporal, animated (playback_webp)


class DemoActions:
    def __init__(self, pipeline, workdir: str | Path | None = None, share_folder: str | Path | None = None):
        self.pipeline = pipeline  # faces.restore.FramePipeline
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="splat-restore-demo-"))
        self.share_folder = Path(share_folder) if share_folder else None
        self.lock = threading.Lock()
        self._latest: dict[str, Path] = {}  # action -> its latest request's folder, until the next one
        self._degradation = TrainingDegradation()
        self._lpips = None

    @property
    def takes_reference(self) -> bool:
        return bool(getattr(self.pipeline, "takes_reference", False))

    # -- restore -------------------------------------------------------------------------------------------------
    def restore(self, paths: list, faces: str = "auto", progress: Progress = _quiet,
                reference: str | None = None) -> list[Restored]:
        """`reference`: an uploaded photo of the person, for weights that take one (given beside every image)."""
        if not paths:
            raise UploadError("no image uploaded")
        if len(paths) > MAX_IMAGES:
            raise UploadError(f"{len(paths)} images; this page restores at most {MAX_IMAGES} at a time (a folder "
                              f"of renders: `python -m engine restore FOLDER -o OUT`)")
        check_run_size(paths, "`python -m engine restore FOLDER -o OUT`")
        frames = [(display_name(p), load_image(p)) for p in paths]  # every upload checked before the first model call
        photo = self._reference(reference, [f.rgb for _, f in frames], faces)
        run, results = self._run_folder("restore"), []
        for k, (name, frame) in enumerate(frames):
            progress(k / len(frames), f"restoring {name}")
            with self.lock:
                self.pipeline.set_reference(photo)  # the same object each time: its face found, its latent encoded
                try:  # once
                    result = self.pipeline.restore([frame.rgb], [faces])[0]
                finally:
                    self.pipeline.set_reference(None)  # the other tabs restore without it
            rgb = frame.rgb if result.rgb is None else result.rgb  # only-crops is not offered on the page
            png = encode_image(frame, rgb, ".png", self.pipeline.provenance)
            path = self._keep(run, f"{safe_stem(name)}_restored.png", png)
            seen = photo and (photo.faces.get(self.pipeline.size) if result.mode == "faces" else photo.rgb)
            shown = None if seen is None else to_uint8(seen)
            results.append(Restored(name, to_uint8(frame.rgb), to_uint8(rgb), path, result.note, shown))
        progress(1.0, "done")
        return results

    def _reference(self, path: str | None, images: list, faces: str) -> Reference | None:
        """The uploaded reference, checked against the weights and, where images will be restored face by face,
        with its face found: every refusal (UploadError naming the visitor's file) before the first model call."""
        if not path:
            if self.takes_reference:
                raise UploadError(needs_one("the loaded weights", "upload one beside the images"))
            return None
        name = display_name(path)
        if not self.takes_reference:
            raise UploadError(cannot_use(name, "the loaded weights"))
        photo = Reference(load_image(path).rgb, name)
        if any(self.pipeline.needs_faces(img.shape[1::-1], faces) for img in images):
            from ..runtime import ReferenceError

            with self.lock:  # the face detector is the pipeline's, one thread at a time
                try:
                    self.pipeline.reference_face(photo)
                except ReferenceError as e:
                    raise UploadError(str(e)) from None
        return photo

    def _no_reference_needed(self) -> None:
        if self.takes_reference:  # the tabs other than Restore take no reference upload
            raise UploadError(needs_one("the loaded weights", "restore in the Restore tab, which takes one"))

    def _run_folder(self, action: str) -> Path:
        """A new folder for this request of `action`, in place of its previous request's, which Gradio has copied
        by now (module docstring). Requests of one action come one at a time, as the page's queue runs them."""
        previous = self._latest.pop(action, None)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._latest[action] = folder = Path(tempfile.mkdtemp(prefix=f"{action}-", dir=self.workdir))
        return folder

    def _keep(self, run: Path, filename: str, data: bytes) -> Path:
        """Written complete into `run` and into the share folder, if any, never replacing a file: a second result
        of the same name gets a numbered name."""
        if self.share_folder is not None:
            self.share_folder.mkdir(parents=True, exist_ok=True)
            write_bytes_new(self.share_folder / filename, data)
        return write_bytes_new(run / filename, data)

    # -- degrade -> restore -----------------------------------------------------------------------------------------
    def degrade_restore(self, path, seed: int = 0, progress: Progress = _quiet) -> DegradeResult:
        """Raises degradation.TrainingMissing where the `training` package is not installed."""
        self._no_reference_needed()
        frame = load_image(path)
        progress(0.1, "finding the face")
        with self.lock:  # mediapipe's graphs are not for two threads at once either
            crop, regions, notes = self._degradation.crop(to_uint8(frame.rgb), self.pipeline.size)
        progress(0.3, "degrading")
        degraded = self._degradation.degrade(crop, regions, seed)
        progress(0.5, "restoring")
        with self.lock:
            restored = self.pipeline.restore([degraded.astype(np.float32) / 255], ["off"])[0].rgb
        progress(0.8, "measuring")
        metrics, note = self._metrics(crop, {"degraded": degraded.astype(np.float32) / 255, "restored": restored})
        if note:
            notes.append(note)
        return DegradeResult(crop, degraded, to_uint8(restored), metrics, notes)

    def _metrics(self, clean: np.ndarray, images: dict) -> tuple[dict, str]:
        """LPIPS-VGG (the training loss's, v0.1), PSNR and SSIM (BasicSR's convention) of each image vs clean."""
        from ..measure.lpips import LPIPS

        clean_f = clean.astype(np.float32) / 255
        metrics = {k: {"lpips": None, "psnr": psnr(v, clean_f), "ssim": ssim(v, clean_f)} for k, v in images.items()}
        try:
            if self._lpips is None:
                self._lpips = LPIPS().to(self.pipeline.runner.device).eval()
        except Exception as e:  # noqa: BLE001 - e.g. VGG weights missing: PSNR/SSIM still shown
            return metrics, f"LPIPS unavailable: {e}"
        with self.lock:
            distances = self._lpips.against(clean_f, list(images.values()))
        for k, d in zip(images, distances):
            metrics[k]["lpips"] = d
        return metrics, ""

    # -- sequence ---------------------------------------------------------------------------------------------------
    def sequence(self, paths: list, faces: str = "auto", progress: Progress = _quiet) -> SequenceResult:
        from ..temporal.flicker import measure_many

        self._no_reference_needed()
        named = sequence_frames(paths)
        per_frame, temporal, files = [], [], {}  # outputs kept as 8-bit and as encoded PNGs, not as float
        fusion = TemporalFusion()
        for k, (name, frame) in enumerate(named):
            progress(0.8 * k / len(named), f"restoring frame {k + 1} of {len(named)}")
            with self.lock:
                restored = self.pipeline.restore([frame.rgb], [faces])[0].rgb
            per_frame.append(to_uint8(restored))
            files[f"per_frame/{k:04d}_{safe_stem(name)}.png"] = encode_image(frame, restored, ".png",
                                                                            self.pipeline.provenance)
            fused = fusion.fuse(frame.rgb, restored)  # writes into `restored`, used above already
            temporal.append(to_uint8(fused))
            files[f"temporal/{k:04d}_{safe_stem(name)}.png"] = encode_image(frame, fused, ".png",
                                                                           self.pipeline.provenance)
        progress(0.85, "measuring flicker")
        inputs = [f.rgb for _, f in named]
        reports = measure_many({name: (x.astype(np.float32) / 255 for x in images)
                                for name, images in (("per-frame", per_frame), ("temporal", temporal))}, inputs)
        flicker = {"input": reports["per-frame"].reference, **{k: r.frames for k, r in reports.items()}}
        means = {k: float(np.mean(v)) for k, v in flicker.items()}
        progress(0.9, "encoding the playback")
        inputs = [to_uint8(x) for x in inputs]
        rows = [side_by_side(*r, max_pixels=PLAYBACK_PIXELS / len(named)) for r in zip(inputs, per_frame, temporal)]
        run = self._run_folder("sequence")
        archive = self._keep(run, "sequence_restored.zip", zip_bytes(files))
        playback = self._keep(run, "sequence_playback.webp", playback_webp(rows))
        return SequenceResult([n for n, _ in named], inputs, per_frame, temporal, flicker, means, archive, playback)

