"""Splitting a restore over processes (farm nodes with --shard, GPUs under accelerate/torchrun) restores exactly
what one process would, byte for byte."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.cli import main
from engine.jobs import UsageError
from engine.shards import parse_shard, rank_device, shard_from_env, take_shard

ROOT = Path(__file__).resolve().parents[1]


def test_shards_are_contiguous_runs_covering_every_input_once():
    items = list(range(11))
    shards = [take_shard(items, k, 3) for k in range(3)]
    assert shards == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10]]
    assert [take_shard(items[:2], k, 4) for k in range(4)] == [[], [0], [], [1]]  # more shards than inputs


def test_launchers_pick_the_shard_and_one_gpu_per_process():
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None and shard_from_env({}) is None
    env = {"LOCAL_RANK": "3"}
    assert rank_device("auto", env, cuda_available=True) == "cuda:3"
    assert rank_device("cuda", env, cuda_available=True) == "cuda:3"
    assert rank_device("cuda:0", env, cuda_available=True) == "cuda:0"  # asked for by name: kept
    assert rank_device("auto", env, cuda_available=False) == "auto"  # CPU processes share the CPU
    assert rank_device("auto", {}, cuda_available=True) == "auto"
    with pytest.raises(UsageError, match="RANK=2 is not between 0 and WORLD_SIZE-1=1"):
        shard_from_env({"RANK": "2", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("spec", ["2/2", "1", "a/b", "0/0", "3/2"])
def test_a_bad_shard_is_a_usage_error_naming_it(spec, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["restore", str(tmp_path), "-o", str(tmp_path / "out"), "--weights", "w.safetensors", "--shard", spec])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"--shard {spec!r}" in err and "K from 0 to N-1" in err
    with pytest.raises(UsageError):
        parse_shard(spec)


def test_two_ranked_processes_write_what_one_process_writes(tiny_weights, tmp_path):
    src = tmp_path / "renders"
    src.mkdir()
    rng = np.random.default_rng(0)
    for k in range(1, 6):
        cv2.imwrite(str(src / f"f_{k}.png"), (rng.random((48, 56, 3)) * 255).astype(np.uint8))
    command = [sys.executable, "-m", "engine", "restore", str(src), "--weights", str(tiny_weights), "--device", "cpu",
               "--faces", "off"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    single = subprocess.run(command + ["-o", str(tmp_path / "one")], cwd=ROOT, env=env, capture_output=True)
    assert single.returncode == 0, single.stderr.decode()
    ranks = [subprocess.Popen(command + ["-o", str(tmp_path / "two")], cwd=ROOT, stderr=subprocess.PIPE,
                              env={**env, "RANK": str(k), "WORLD_SIZE": "2", "LOCAL_RANK": str(k)})
             for k in range(2)]
    errs = [p.communicate()[1].decode() for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], errs
    assert "shard 0/2: 2 of 5 frames" in errs[0] and "shard 1/2: 3 of 5 frames" in errs[1]
    one, two = sorted((tmp_path / "one").iterdir()), sorted((tmp_path / "two").iterdir())
    assert [p.name for p in one] == [p.name for p in two] == [f"f_{k}.png" for k in range(1, 6)]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))
