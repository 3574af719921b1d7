"""`python -m engine demo`: a web page to try the restorer (Gradio, the `demo` extra).

The page holds one loaded restorer, the one `serve` builds (fast path, batch buckets, background compile,
face-aware restore), and a queue runs one job at a time with progress. It listens on 127.0.0.1 unless --host says
otherwise, and then says loudly that anyone on the network can use it.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import sys
from pathlib import Path

DEMO_INSTALL = 'python -m pip install "splat-restore[demo]"  (from a checkout: python -m pip install -e ".[demo]")'


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def network_warning(host: str, port: int) -> str:
    return (f"WARNING: the demo listens on {host}:{port}, so anyone who can reach this machine can upload images "
            f"and use its GPU: there is no login. Use the default (127.0.0.1) unless that is what you want.")


def run(a) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # like serve: weights come from disk or the HF cache, never mid-demo
    try:
        from .page import CSS, THEME, build_page
    except ImportError as e:
        print(f"error: the demo needs Gradio ({e.name or e} is missing): {DEMO_INSTALL}", file=sys.stderr)
        return 1
    from blender_addon.engine_link.licenses import license_by_id

    from ..faces.detect import faces_unavailable
    from ..faces.restore import FramePipeline
    from ..runtime import ModelRunner, warn_if_gpu_unused
    from .actions import DemoActions
    from .uploads import MAX_UPLOAD_MB

    share = Path(a.share_folder) if a.share_folder else None
    if share is not None:
        try:
            share.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            print(f"error: share folder {share} cannot be created: {e.strerror or e}", file=sys.stderr)
            return 1
    if not is_loopback(a.host):
        print(network_warning(a.host, a.port), file=sys.stderr)
    # the page asks each visitor to accept a licence before their first restore, so loading does not ask here
    restorer = ModelRunner.from_pretrained(a.weights, a.base, accept_license=True, device=a.device, dtype=a.dtype,
                                        batch_size=a.batch_size, tile=a.tile, compile=a.compile,
                                        compile_cache=a.compile_cache)
    warn_if_gpu_unused(a.device, restorer.device)
    problem = faces_unavailable()
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    lic = license_by_id(restorer.info.license) if restorer.info else None
    if lic:
        print(f"weights under the {lic.name}: the page asks for acceptance before the first restore", file=sys.stderr)
    pipeline = FramePipeline(restorer, a.min_face)
    actions = DemoActions(pipeline, share_folder=share)
    page = build_page(actions, restorer.info.source if restorer.info else str(a.weights), lic)
    page.queue(default_concurrency_limit=1, max_size=64)
    try:
        page.launch(server_name=a.host, server_port=a.port, max_file_size=f"{a.max_upload_mb or MAX_UPLOAD_MB}mb",
                    theme=THEME, css=CSS, allowed_paths=[str(actions.workdir)], ssr_mode=False, show_error=False,
                    footer_links=[])
    except OSError as e:  # the port is taken, or the address is not this machine's
        print(f"error: cannot listen on {a.host}:{a.port}: {e}; pick another with --port", file=sys.stderr)
        return 1
    finally:
        pipeline.close()
        shutil.rmtree(actions.workdir, ignore_errors=True)  # the downloads; --share-folder keeps its copies
    return 0
