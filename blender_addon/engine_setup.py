"""Install / Update / Remove Engine: the bpy side of engine_install (which holds the logic).

Interactive installs run on a thread and an app timer redraws the preferences with the phase and pip's last line, so
Blender stays responsive for the minutes torch takes; the timer, unlike a modal operator's, survives the preferences
window being closed. In background mode (blender -b, scripts) the operator blocks and prints progress, because timers
never fire there. Cancel kills pip and drops the new venv: the engine in use stays exactly as it was. Nothing runs
unless Blender's online access is on (pip downloads), checked by the operator itself so scripts are refused too.
"""
import sys
from pathlib import Path

import bpy

from . import engine_install, online
from .engine_install import InstallCancelled, InstallFailed, Installer, InstallJob
from .state import MANAGER

WHEEL_DIR = Path(__file__).resolve().parent / "engine_wheel"


class InstallState:
    job = None  # InstallJob while an interactive install runs
    error = ""  # the last install's failure, with pip's tail, shown until the next install
    note = ""  # the last install's cancellation, shown until the next install


def engine_home() -> Path:
    try:
        return Path(bpy.utils.extension_path_user(__package__, create=True))
    except ValueError:  # a checkout enabled as a legacy add-on (development, tests) is not an extension
        return Path(bpy.utils.user_resource("DATAFILES", path=__package__, create=True))


def _prefs(context=None):
    return (context or bpy.context).preferences.addons[__package__].preferences


def engine_folder(prefs=None) -> Path:
    """Where the engine in use lives: the folder the last successful install went to, else the extension's."""
    folder = (prefs or _prefs()).engine_folder
    return Path(bpy.path.abspath(folder)) if folder else engine_home()


def installed_engine_python(prefs=None) -> str:
    return engine_install.engine_python(engine_folder(prefs))


def _chosen_folder(operator, context) -> Path:
    return Path(bpy.path.abspath(operator.target)) if operator.target else engine_folder(_prefs(context))


class SPLATRESTORE_OT_install_engine(bpy.types.Operator):
    """Make the engine's own Python environment and install PyTorch and the engine into it (a few GB, minutes)"""
    bl_idname = "splat_restore.install_engine"
    bl_label = "Install Engine"

    target: bpy.props.StringProperty(
        name="Folder", subtype="DIR_PATH", options={"SKIP_SAVE"},
        description="Where the engine goes; empty: where the engine in use is (at first, the extension's user "
                    "folder). The add-on uses the engine installed last")
    force: bpy.props.BoolProperty(name="Reinstall", options={"SKIP_SAVE"},
                                  description="Install again even if this engine is already installed")

    def _installer(self, context):
        chosen = _prefs(context).install_python
        python = bpy.path.abspath(chosen) if chosen else sys.executable
        return Installer(_chosen_folder(self, context), WHEEL_DIR, python)

    def _refused(self) -> bool:
        refusal = online.refusal("Install Engine")
        if refusal:
            self.report({"ERROR"}, f"Splat Restore: {refusal}")
        return bool(refusal)

    def execute(self, context):
        if self._refused():
            return {"CANCELLED"}
        shown = [""]

        def echo(phase, line):
            if phase != shown[0]:
                print(f"Splat Restore: {phase}", flush=True)
                shown[0] = phase
            if line:
                print(f"  {line}", flush=True)

        job = InstallJob(self._installer(context), self.force, MANAGER.stop, echo)
        job.run()
        return self._conclude(job)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        if self._refused():
            return {"CANCELLED"}
        if InstallState.job is not None:
            self.report({"WARNING"}, "Splat Restore: an engine install is already running")
            return {"CANCELLED"}
        InstallState.job = InstallJob(self._installer(context), self.force, MANAGER.stop)
        InstallState.error = InstallState.note = ""
        InstallState.job.start()
        bpy.app.timers.register(_follow_install, first_interval=0.25)
        self.report({"INFO"}, "Splat Restore: installing the engine; progress in the add-on's preferences")
        return {"FINISHED"}

    def _conclude(self, job):
        message = _outcome(job)
        if job.error is not None:
            self.report({"ERROR"}, message)
            return {"CANCELLED"}
        self.report({"INFO"}, message)
        return {"FINISHED"}


def _outcome(job) -> str:
    """How the install ended; a successful one becomes the engine in use, wherever it went."""
    cancelled = isinstance(job.error, InstallCancelled)
    InstallState.error = str(job.error) if job.error is not None and not cancelled else ""
    InstallState.note = str(job.error) if cancelled else ""
    if job.error is not None:
        return f"Splat Restore: {job.error}"
    home = job.installer.home
    _prefs().engine_folder = "" if home == engine_home() else str(home)
    probe = engine_install.installed(home)["probe"]
    done = "installed" if job.changed else "already installed, nothing to do"
    return f"Splat Restore: engine {done} in {home}: {engine_install.describe(probe)}"


def _follow_install():
    """App timer while an interactive install runs: redraw its progress, then show how it ended."""
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in ("PREFERENCES", "PROPERTIES", "IMAGE_EDITOR"):  # where the add-on shows it
                area.tag_redraw()
    job = InstallState.job
    if not job.done:
        return 0.25
    print(_outcome(job))
    InstallState.job = None
    return None


class SPLATRESTORE_OT_cancel_install(bpy.types.Operator):
    """Stop the install: pip is stopped and its new environment deleted; the engine in use stays as it was"""
    bl_idname = "splat_restore.cancel_install"
    bl_label = "Cancel"

    def execute(self, context):
        job = InstallState.job
        if job is None:
            self.report({"WARNING"}, "Splat Restore: no engine install is running")
            return {"CANCELLED"}
        if not job.cancel():
            self.report({"WARNING"}, "Splat Restore: too late to cancel: the new engine is being switched in")
            return {"CANCELLED"}
        self.report({"INFO"}, "Splat Restore: cancelling the engine install")
        return {"FINISHED"}


class SPLATRESTORE_OT_remove_engine(bpy.types.Operator):
    """Delete the engine's Python environment (frees its disk space; Install Engine brings it back)"""
    bl_idname = "splat_restore.remove_engine"
    bl_label = "Remove Engine"

    target: bpy.props.StringProperty(name="Folder", subtype="DIR_PATH", options={"SKIP_SAVE"},
                                     description="The folder Install Engine used; empty: the engine in use")

    def execute(self, context):
        if InstallState.job is not None:
            self.report({"ERROR"}, "Splat Restore: an engine install is running; remove it when it is done")
            return {"CANCELLED"}
        MANAGER.stop()
        home, prefs = _chosen_folder(self, context), _prefs(context)
        try:
            engine_install.remove(home)
        except InstallFailed as e:
            self.report({"ERROR"}, f"Splat Restore: {e}")
            return {"CANCELLED"}
        if home == engine_folder(prefs):  # gone: back to the extension's engine, if any
            prefs.engine_folder = ""
        self.report({"INFO"}, f"Splat Restore: engine in {home} removed")
        return {"FINISHED"}


def engine_status(prefs) -> list[str]:
    """The engine box's status: which installed engine is in use, and where it is."""
    home = engine_folder(prefs)
    current = engine_install.installed(home)
    if not current:
        return [f"No engine installed in {home} (a few GB: PyTorch and the engine)"]
    return [engine_install.describe(current["probe"]), f"In {home}"]


def draw_engine_box(layout, prefs):
    box = layout.box()
    job = InstallState.job
    if job is not None:
        row = box.row()
        row.label(text="Cancelling..." if job.cancelling else f"{job.phase}...", icon="SORTTIME")
        row.operator("splat_restore.cancel_install", icon="CANCEL")
        if job.line:
            box.label(text=job.line[-120:])
        return
    refusal = online.refusal("Install Engine")
    home = engine_folder(prefs)
    current = engine_install.installed(home)
    for line in engine_status(prefs):
        box.label(text=line, icon="CHECKMARK" if current else "INFO")
    if refusal:
        box.label(text=refusal, icon="ERROR")
    row = box.row()
    install = row.row()
    install.enabled = not refusal  # pip goes online
    if not WHEEL_DIR.is_dir():
        install.label(text="This add-on carries no engine: install the zip `python build.py addon` makes")
    elif not current:
        install.operator("splat_restore.install_engine", icon="IMPORT")
    elif not Installer(home, WHEEL_DIR, "").up_to_date():
        install.operator("splat_restore.install_engine", text="Update Engine", icon="FILE_REFRESH")
    else:
        install.operator("splat_restore.install_engine", text="Reinstall Engine", icon="FILE_REFRESH").force = True
    if current:
        row.operator("splat_restore.remove_engine", icon="TRASH")
    box.prop(prefs, "install_python")
    for line in InstallState.error.splitlines()[-8:]:
        box.label(text=line, icon="ERROR")
    if InstallState.note:
        box.label(text=InstallState.note, icon="INFO")


CLASSES = (SPLATRESTORE_OT_install_engine, SPLATRESTORE_OT_cancel_install, SPLATRESTORE_OT_remove_engine)

register, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def unregister():
    if bpy.app.timers.is_registered(_follow_install):  # the add-on is going: its timer must not outlive it
        bpy.app.timers.unregister(_follow_install)
    if InstallState.job is not None:  # nor its pip: the previous engine stays
        InstallState.job.cancel()
    _unregister_classes()
