"""Make Training Pairs: for each capture camera with a photo of its name, the scene rendered from it at the photo's
size (degraded/NAME.png) beside the photo, decoded upright to sRGB (clean/NAME.png), listed in manifest.jsonl.

Interactive runs are modal: the photos are decoded by the engine's Python in the background, then one camera is
rendered per timer tick, with progress, and Esc stops between cameras. In background mode (`blender -b`, scripts) the
same steps run to the end in execute(), because timers never fire there.
"""
import shutil
import sys
import tempfile
from pathlib import Path

import bpy

from . import training_pairs as tp
from .engine_link.scan import temporary_for
from .pairs_render import render_to
from .photo_import import PhotoImport
from .preferences import engine_settings


class PairsState:
    last_report = ""  # the panel shows it
    last_summary: dict | None = None  # the last run's outcome, for scripts: pairs, test, unmatched, failed


class PairsRun:
    """One run, in the steps the modal operator takes one at a time: prepare (checks, nothing written), start_import,
    begin (once the photos are decoded), step (one camera), finish (always; removes the staging folder)."""

    def __init__(self, scene, cameras: list, photos_dir: Path | None, out: Path | None, holdout: int, python: str,
                 overwrite: bool = False):
        self.scene, self.cameras, self.photos_dir, self.out = scene, cameras, photos_dir, out
        self.holdout, self.python, self.overwrite = holdout, python, overwrite
        self.importer: PhotoImport | None = None
        self.staging: Path | None = None
        self.created_out = False
        self.todo: list = []  # (camera object, photo record, split) still to render
        self.records: list[dict] = []  # the manifest: pairs made
        self.failed: dict[str, str] = {}
        self.total = 0

    def prepare(self) -> None:
        r = self.scene.render
        problem = tp.pixel_aspect_problem(r.pixel_aspect_x, r.pixel_aspect_y)
        if problem:
            raise ValueError(problem)
        if not self.cameras:
            raise ValueError("no cameras to make pairs from (Cameras: All takes every camera in the scene, "
                             "Selected the selected ones)")
        if self.photos_dir is None:
            raise ValueError("no photos folder chosen: set Photos (the folder of capture photos)")
        if self.out is None:
            raise ValueError("no pairs folder chosen: set Output Folder")
        self.matching = tp.match_cameras([c.name for c in self.cameras], tp.list_photos(self.photos_dir))
        self.replace = tp.existing_pairs(self.out, self.overwrite)
        self.failed.update(self.matching.not_read)

    def start_import(self) -> None:
        self.created_out = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=tp.STAGING_PREFIX, dir=self.out))
        self.importer = PhotoImport(self.python, [photo for _, photo in self.matching.pairs], self.staging)
        self.importer.start()

    def begin(self) -> None:
        """The decoded photos' outcomes: cameras whose photo failed, or whose shape it cannot render, are listed;
        the rest are split and queued. Earlier pairs are removed only now, when new ones can be made."""
        decoded = self.importer.result()
        objects = {c.name: c for c in self.cameras}
        scene_size = (self.scene.render.resolution_x, self.scene.render.resolution_y)
        usable = []
        for name, photo in self.matching.pairs:
            record = decoded[photo]
            problem = record.get("error") if record["status"] != "ok" else tp.fit_problem(
                name, objects[name].data.sensor_fit, scene_size, (record["width"], record["height"]))
            if problem:
                self.failed[name] = problem
            else:
                usable.append((name, record))
        if not usable:
            raise ValueError("no pair can be made: " + "; ".join(self.failed.values()))
        splits = tp.holdout_splits([name for name, _ in usable], self.holdout)
        for path in self.replace:
            path.unlink(missing_ok=True)
        for folder in ("degraded", "clean"):
            (self.out / folder).mkdir(exist_ok=True)
        self.todo = [(objects[name], record, splits[name]) for name, record in usable]
        self.total = len(self.todo)

    def step(self) -> None:
        camera, photo, split = self.todo.pop(0)
        try:
            name = camera.name
        except ReferenceError:
            self.failed[f"camera of {photo['source']}"] = "the camera was deleted during the run"
            return
        try:
            self._make_pair(camera, name, photo, split)
        except (ValueError, OSError, RuntimeError) as e:
            self.failed[name] = str(e)

    def _make_pair(self, camera, name: str, photo: dict, split: str) -> None:
        """Render, then put the render and the photo in place and list the pair; a failure at any point removes
        what this pair had put in place, so the folder holds whole, listed pairs only."""
        size = (photo["width"], photo["height"])
        degraded, clean = self.out / "degraded" / f"{name}.png", self.out / "clean" / f"{name}.png"
        tmp = temporary_for(degraded)
        moved = []
        try:
            render_to(self.scene, camera, size, photo["bit_depth"], tmp)
            got = tuple(tp.png_size(tmp))
            if got != size:
                raise ValueError(f"camera {name}: the render is {got[0]}x{got[1]}, not the photo's {size[0]}x"
                                 f"{size[1]} (does the compositor change the frame's size?)")
            record = tp.pair_record(name, photo, split, got)
            tmp.replace(degraded)
            moved.append(degraded)
            Path(photo["file"]).replace(clean)
            moved.append(clean)
            tp.write_manifest(self.out, self.records + [record])
        except BaseException:
            for path in moved:
                path.unlink(missing_ok=True)
            raise
        finally:
            tmp.unlink(missing_ok=True)
        self.records.append(record)

    @property
    def pending(self) -> bool:
        return bool(self.todo)

    def finish(self, cancelled: bool = False, error: str = "") -> dict:
        if self.importer is not None and not self.importer.done:
            self.importer.cancel()
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        if self.created_out and not self.records:  # nothing made: leave no empty folders behind
            for folder in (self.out / "degraded", self.out / "clean", self.out):
                try:
                    folder.rmdir()
                except OSError:
                    pass
        matching = getattr(self, "matching", None)
        return {"output": str(self.out), "pairs": [r["name"] for r in self.records],
                "test": [r["name"] for r in self.records if r["split"] == "test"],
                "unmatched_cameras": matching.unmatched_cameras if matching else [],
                "unmatched_photos": matching.unmatched_photos if matching else [],
                "failed": dict(self.failed), "cancelled": cancelled,
                "not_made": self._not_made() if cancelled else [], "error": error}

    def _not_made(self) -> list[str]:
        if self.total == 0:  # stopped while the photos were decoded
            return [name for name, _ in getattr(self, "matching", tp.Matching()).pairs if name not in self.failed]
        names = []
        for camera, _, _ in self.todo:
            try:
                names.append(camera.name)
            except ReferenceError:
                pass
        return names


def tick(run: PairsRun, cancel: bool) -> str:
    """One step as the modal operator takes it on a timer event: "importing", "rendering" or "done"."""
    if cancel:
        return "done"
    if run.total == 0:
        if not run.importer.done:
            return "importing"
        run.begin()
        return "rendering"
    if run.pending:
        run.step()
    return "rendering" if run.pending else "done"


def _folder(text: str) -> Path | None:
    return Path(bpy.path.abspath(text.strip())) if text.strip() else None


def _cameras(context, which: str) -> list:
    objects = context.selected_objects if which == "SELECTED" else context.scene.objects
    return [o for o in objects if o.type == "CAMERA"]


class SPLATRESTORE_OT_make_training_pairs(bpy.types.Operator):
    """Render the scene from each capture camera at its photo's size and pair it with the photo (degraded/ and clean/
    in the pairs folder), for training the restorer on this avatar"""
    bl_idname = "splat_restore.make_training_pairs"
    bl_label = "Make Training Pairs"

    overwrite: bpy.props.BoolProperty(
        name="Replace Existing Pairs", default=False, options={"SKIP_SAVE"},
        description="Replace the pairs an earlier run wrote to the pairs folder (only the files its manifest lists)")

    _timer = None
    _run = None
    _cancel = False

    def _start(self, context) -> PairsRun | None:
        settings = context.scene.splat_restore.training_pairs
        run = PairsRun(context.scene, _cameras(context, settings.cameras), _folder(settings.photos_dir),
                       _folder(settings.output_dir), settings.holdout, engine_settings(context).python, self.overwrite)
        try:
            run.prepare()
            run.start_import()
        except (ValueError, OSError) as e:
            self._conclude(run, error=str(e))
            return None
        return run

    def execute(self, context):
        run = self._start(context)
        if run is None:
            return {"CANCELLED"}
        try:
            run.importer.wait()
            while tick(run, cancel=False) != "done":
                if run.total - len(run.todo):
                    _log(f"Splat Restore: {run.total - len(run.todo)} of {run.total} cameras rendered")
        except (ValueError, OSError) as e:
            return self._conclude(run, error=str(e))
        except KeyboardInterrupt:
            self._conclude(run, cancelled=True)
            raise
        return self._conclude(run)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        self._run = self._start(context)
        if self._run is None:
            return {"CANCELLED"}
        self._cancel = False
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.progress_begin(0, 100)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC":
            self._cancel = True
        elif event.type != "TIMER":
            return {"PASS_THROUGH"}
        run = self._run
        try:
            state = tick(run, self._cancel)
        except (ValueError, OSError) as e:
            self._end_modal(context)
            return self._conclude(run, error=str(e))
        if state != "done":
            done, total = (run.total - len(run.todo), run.total) if state == "rendering" else run.importer.progress
            what = "pair" if state == "rendering" else "decoding photo"
            context.window_manager.progress_update(int(100 * done / max(total, 1)))
            context.workspace.status_text_set(f"Splat Restore: {what} {done} of {total} (Esc cancels)")
            return {"RUNNING_MODAL"}
        self._end_modal(context)
        return self._conclude(run, cancelled=self._cancel)

    def _end_modal(self, context):
        context.window_manager.event_timer_remove(self._timer)
        context.window_manager.progress_end()
        context.workspace.status_text_set(None)

    def _conclude(self, run: PairsRun, cancelled: bool = False, error: str = ""):
        summary = run.finish(cancelled, error)
        if not (error or cancelled or summary["pairs"]):  # every queued camera failed: as much an error as none
            error = summary["error"] = "no pair was made: " + "; ".join(summary["failed"].values())
        PairsState.last_summary = summary
        PairsState.last_report = f"Splat Restore: {error}" if error else tp.describe_summary(summary)
        _log(PairsState.last_report)
        if error:
            self.report({"ERROR"}, PairsState.last_report)
            return {"CANCELLED"}
        self.report({"WARNING"} if cancelled or summary["failed"] else {"INFO"}, PairsState.last_report)
        return {"CANCELLED"} if cancelled else {"FINISHED"}


def _log(text: str) -> None:
    if bpy.app.background:
        print(text, file=sys.stderr, flush=True)


CLASSES = (SPLATRESTORE_OT_make_training_pairs,)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
