"""The fast path gives the reference's images, and its benchmark prints the comparison table."""
import json

import pytest

from engine.benches.speed import check_outputs
from engine.cli import main


@pytest.mark.parametrize("dtype, tolerance", [("fp32", 1e-4), ("fp16", 2e-2), ("bf16", 1e-1)])
def test_fast_path_matches_the_eager_fp32_reference(tiny_base, dtype, tolerance):
    assert check_outputs(base=str(tiny_base), size=64, device="cpu", dtype=dtype) < tolerance


def test_bench_compares_reference_and_fast_path(tiny_base, capsys):
    assert main(["bench", "--base", str(tiny_base), "--size", "64", "--batch", "1,2", "--device", "cpu",
                 "--repeats", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["device"] == "cpu" and [row["batch"] for row in r["rows"]] == [1, 2]
    for row in r["rows"]:
        assert row["reference_ms_per_frame"] > 0 and row["fast_ms_per_frame"] > 0 and row["speedup"] > 0
    assert r["tflop_per_frame"] > 0



def test_half_precision_overflow_fails_the_frame_with_advice(tiny_weights):
    import numpy as np

    from engine.runtime import Restorer

    restorer = Restorer.from_pretrained(tiny_weights, device="cpu", dtype="fp16", compile="off")
    restorer.forward = lambda x: x * float("nan")  # what an fp16 overflow in the VAE looks like after clamp
    with pytest.raises(RuntimeError, match="--dtype fp32"):
        restorer.restore([np.zeros((64, 64, 3), np.float32)])
