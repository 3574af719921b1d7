"""A restarted engine's compile time: a fresh process builds the fast path on a compile cache another run filled
and compiles the same shapes, as `engine serve` does after a restart. `bench` runs it to print the warm-restart
compile time next to the cold one; the tests run it to see the cache reused.

    python -m engine.benches.restart --cache DIR --size 512 --batches 1,4 [--weights W | --base B | --arch A]
prints {"seconds": compile seconds, "cache_hits": graphs loaded from the cache (AOTAutograd's or FX-graph's)}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def measure_in_subprocess(cache: str, weights: str | None, base: str | None, arch: str, size: int, batches,
                          device: str, dtype: str, compile_mode: str, accept_license: bool = False) -> dict:
    cmd = [sys.executable, "-m", "engine.benches.restart", "--cache", str(cache), "--size", str(size),
           "--batches", ",".join(str(b) for b in batches), "--device", device, "--dtype", dtype,
           "--compile", compile_mode, "--arch", arch]
    cmd += (["--weights", str(weights)] if weights else []) + (["--base", str(base)] if base else [])
    cmd += ["--accept-license"] if accept_license else []
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    if done.returncode != 0:
        raise RuntimeError(f"the warm-restart run failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.benches.restart")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--batches", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--compile", default="auto")
    ap.add_argument("--arch", default="sd-turbo")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--base", default=None)
    ap.add_argument("--accept-license", action="store_true")
    a = ap.parse_args(argv)

    from torch._dynamo.utils import counters

    from ..fastpath import FastForward
    from ..runtime import pick_device, pick_dtype
    from .speed import build_models, merged

    dev = pick_device(a.device)
    model, _ = build_models(a.weights, a.base, a.arch, dev, a.accept_license)
    forward = FastForward(merged(model).to(dev, pick_dtype(a.dtype, dev)), dev, a.compile, a.cache)
    forward.compile_async((int(b), 3, a.size, a.size) for b in a.batches.split(","))
    forward.wait()
    if forward.error:
        print(forward.error, file=sys.stderr)
        return 1
    hits = counters["aot_autograd"]["autograd_cache_hit"] + counters["inductor"]["fxgraph_cache_hit"]
    print(json.dumps({"seconds": forward.status()["seconds"], "cache_hits": hits}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
