import os
import sys

from .cli import main

code = main()
fastpath = sys.modules.get("engine.fastpath")
if fastpath is not None and fastpath.compiling_now():
    # Tearing the interpreter down in the middle of an Inductor compile aborts the process (SIGABRT from a native
    # thread, seen after `restore --compile on` of a few frames). The compile was for frames this run no longer has
    # and every output is already written and renamed, so end now with the run's own exit code.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
