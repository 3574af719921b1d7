"""Run in a fresh Blender process whose user folder is temporary: install the built zip as an extension, then Install
Engine (the real pip install, from the registries CI reaches), restore a render with that engine, install again,
fail an install, and remove the engine. Each step's outcome goes into REPORT (JSON) as it happens, for the tests in
test_engine_install.py to read. argv: ZIP WEIGHTS WORKDIR REPORT"""
import json
import os
import sys
import time
from pathlib import Path

import bpy

zip_path, weights, work, report_path = sys.argv[1:5]
work = Path(work)
sys.path.insert(0, str(Path(__file__).parent))
from scene import build_scene  # noqa: E402

report = {}


def record(**items):
    report.update(items)
    Path(report_path).write_text(json.dumps(report, indent=1))


def timed(op, **kw):
    started = time.perf_counter()
    try:
        return op(**kw), time.perf_counter() - started, ""
    except RuntimeError as e:  # an operator that reports an error raises in background mode
        return {"CANCELLED"}, time.perf_counter() - started, str(e)


bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.context.preferences.system.use_online_access = True  # Install Engine runs pip only with online access
assert bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                enable_on_install=True) == {"FINISHED"}
package = "bl_ext.user_default.splat_restore"
install = sys.modules[f"{package}.engine_install"]
setup = sys.modules[f"{package}.engine_setup"]
engine_settings = sys.modules[f"{package}.preferences"].engine_settings
prefs = bpy.context.preferences.addons[package].preferences
home = setup.engine_home()

result, seconds, error = timed(bpy.ops.splat_restore.install_engine)
python = install.engine_python(home)
record(install=sorted(result), install_s=seconds, install_error=error, home=str(home), python=python,
       status=install.describe(install.installed(home)["probe"]) if python else "",
       default_python=engine_settings().python)
prefs.engine_python = str(work / "explicit" / "python")
record(explicit_python=engine_settings().python)
prefs.engine_python = ""

prefs.weights, prefs.device = weights, "cpu"
build_scene()
bpy.ops.render.render()
sys.modules[f"{package}.operators"].save_render_png(bpy.context.scene, work / "render.png")  # what the engine gets
result, seconds, error = timed(bpy.ops.splat_restore.restore_render)
if result == {"FINISHED"}:  # its temporary file is gone: the packed copy is what the user keeps
    (work / "restored.png").write_bytes(bpy.data.images["Restored Render"].packed_file.data)
record(restore=sorted(result), restore_error=error)

log = (home / "install.log").read_text()
result, seconds, error = timed(bpy.ops.splat_restore.install_engine)
record(again=sorted(result), again_s=seconds, again_error=error, log_kept=(home / "install.log").read_text() == log)

os.environ[install.TORCH_ENV] = "torch==0.0.1"  # no such release: pip fails after the venv is made
result, seconds, error = timed(bpy.ops.splat_restore.install_engine)
del os.environ[install.TORCH_ENV]
bpy.ops.splat_restore.stop_engine()
restored_after, _, after_error = timed(bpy.ops.splat_restore.restore_render)
record(failed=sorted(result), failed_error=error, failed_log=(home / "install.log").read_text()[-3000:],
       python_after_failure=install.engine_python(home), restore_after_failure=sorted(restored_after),
       restore_after_failure_error=after_error, envs_after_failure=sorted(p.name for p in (home / "envs").iterdir()))

bpy.ops.splat_restore.stop_engine()
result, seconds, error = timed(bpy.ops.splat_restore.remove_engine)
record(remove=sorted(result), remove_error=error, python_after_remove=install.engine_python(home),
       envs_left=(home / "envs").exists(), default_after_remove=engine_settings().python)
print("INSTALL CHECK DONE")
