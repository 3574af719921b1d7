"""`python -m engine bench-protocol`: what the stdio service costs per frame on top of restoring it in-process.

The same frames are restored three ways in one run: the model alone (arrays in memory), the whole in-process job
(read, restore, write), and through a live service via the client. Prints ms per frame for each and the service's
own overhead (service minus in-process job).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run(weights: str, base: str | None, frames: int, size: int, device: str) -> dict:
    import cv2

    from blender_addon.engine_link.client import EngineClient, EngineSettings

    from ..faces.restore import FramePipeline
    from ..images import read_image
    from ..jobs import Item
    from ..pipeline.run import restore_items
    from ..runtime import ModelRunner

    restorer = ModelRunner.from_pretrained(weights, base, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        inputs = []
        for i in range(frames):
            inputs.append(tmp / f"in_{i}.png")
            cv2.imwrite(str(inputs[-1]), (rng.random((size, size, 3)) * 255).astype(np.uint8))
        arrays = [read_image(p).rgb for p in inputs]
        restorer.restore(arrays[:1])  # warm-up

        t = time.perf_counter()
        for a in arrays:
            restorer.restore([a])
        model_ms = (time.perf_counter() - t) / frames * 1000

        t = time.perf_counter()
        restore_items(FramePipeline(restorer), [Item(p, tmp / "job" / p.name) for p in inputs])
        job_ms = (time.perf_counter() - t) / frames * 1000

        client = EngineClient(EngineSettings(sys.executable, str(weights), base or "", device=device))
        client.start()
        try:
            client.restore([(inputs[0], tmp / "warm.png")]).wait()
            t = time.perf_counter()
            for p in inputs:
                client.restore([(p, tmp / "svc" / p.name)]).wait()
            service_ms = (time.perf_counter() - t) / frames * 1000
        finally:
            client.shutdown()
    return {"frames": frames, "size": size, "device": str(restorer.device), "model_ms": model_ms,
            "job_ms": job_ms, "service_ms": service_ms, "protocol_overhead_ms": service_ms - job_ms}


def print_table(r: dict) -> None:
    print(f"{r['frames']} frames of {r['size']}x{r['size']} on {r['device']}, one request per frame")
    print(f"{'path':<34}{'ms/frame':>10}")
    print(f"{'model only (arrays)':<34}{r['model_ms']:>10.2f}")
    print(f"{'in-process job (read+restore+write)':<34}{r['job_ms']:>10.2f}")
    print(f"{'through the service (client)':<34}{r['service_ms']:>10.2f}")
    print(f"{'protocol overhead':<34}{r['protocol_overhead_ms']:>10.2f}"
          f"   ({r['protocol_overhead_ms'] / r['model_ms'] * 100:.1f} % of model time)")
