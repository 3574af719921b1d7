"""CPU ms per frame of Difix-ref on the tiny model, with and without a reference: `python tests/bench_difix_ref.py`.

Not a test (timings depend on the machine); the numbers go into the issue's closing note.
"""
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_difix_ref import _photo  # noqa: E402
from tiny_base import make_tiny_difix_ref  # noqa: E402


def bench(size: int = 256, frames: int = 8, repeats: int = 3) -> dict:
    """CPU ms per frame on the tiny model, with and without a reference (not a test: `python tests/bench_difix_ref.py`).
    The same weights run both ways: views = 1 is Difix, views = 2 Difix-ref with one photo for the run."""
    import tempfile

    from diffusers.models.attention_processor import AttnProcessor2_0

    from engine.runtime import ModelRunner

    folder = make_tiny_difix_ref(Path(tempfile.mkdtemp()) / "difix_ref")
    runner = ModelRunner.from_pretrained(folder, accept_license=True, device="cpu", compile="off", tile=size)
    plain = ModelRunner.from_pretrained(folder, accept_license=True, device="cpu", compile="off", tile=size)
    plain.model.config.views = 1
    plain.model.unet.set_attn_processor(AttnProcessor2_0())
    images = [_photo(size, size, k) for k in range(frames)]
    photo = _photo(size + 40, size, 99)
    out = {"size": size, "frames": frames, "threads": torch.get_num_threads()}
    for name, run in (("without", lambda: plain.restore(images)),
                      ("with", lambda: runner.restore(images, reference=photo))):
        run()  # warm-up (and the reference's one encode)
        out[f"ms_per_frame_{name}_reference"] = round(min(_timed(run) for _ in range(repeats)) / frames * 1000, 2)
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_rss_mb(with_reference: bool, size: int = 512) -> float:
    """This process's peak resident memory after one whole-frame restore at `size` (run each case in a fresh
    process: the peak only grows). Unix only (the resource module)."""
    import resource
    import tempfile

    from engine.runtime import ModelRunner

    folder = make_tiny_difix_ref(Path(tempfile.mkdtemp()) / "difix_ref")
    runner = ModelRunner.from_pretrained(folder, accept_license=True, device="cpu", compile="off", tile=size)
    if not with_reference:
        from diffusers.models.attention_processor import AttnProcessor2_0

        runner.model.config.views = 1
        runner.model.unet.set_attn_processor(AttnProcessor2_0())
    runner.restore([_photo(size, size, 1)], reference=_photo(size, size, 2) if with_reference else None)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


if __name__ == "__main__":
    if sys.argv[1:2] == ["rss"]:
        print(peak_rss_mb(sys.argv[2] == "with"))
        sys.exit(0)
    import subprocess

    for size in (64, 256):
        print(json.dumps(bench(size)))
    rss = {mode: float(subprocess.run([sys.executable, __file__, "rss", mode], capture_output=True, text=True,
                                      check=True).stdout.split()[-1]) for mode in ("without", "with")}
    print(json.dumps({"size": 512, "peak_rss_mb": rss}))
