"""Splitting a restore over processes (farm nodes with --shard, GPUs under accelerate/torchrun) restores exactly
what one process would: byte for byte, and within 1/255 with --temporal."""
import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.cli import main
from engine.images import read_image
from engine.jobs import Item, UsageError
from engine.shards import parse_shard, rank_device, shard_from_env, take_shard
from engine.temporal.bench import moving_face
from engine.temporal.sequences import number_sequences, preroll

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


# --temporal across shards --------------------------------------------------------------------------------------------
SHOT = [f"f_{k}.png" for k in range(1, 13)]  # a 12-frame moving face, 64 px


def _restore_temporal(src, out, weights, *extra) -> tuple[int, str, str]:
    """`restore --temporal` in this process: (exit code, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["restore", str(src), "-o", str(out), "--weights", str(weights), "--device", "cpu",
                     "--faces", "off", "--temporal", "--batch-size", "4", *extra])
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shot") / "renders"
    folder.mkdir()
    for name, frame in zip(SHOT, moving_face(len(SHOT), 64)):
        cv2.imwrite(str(folder / name), cv2.cvtColor(np.round(frame * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="module")
def one_process(shot, tiny_weights, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("one")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("WORLD_SIZE", raising=False)
        assert _restore_temporal(shot, out, tiny_weights)[0] == 0
    return {p.name: read_image(p).rgb for p in out.iterdir()}


@pytest.fixture(scope="module", params=[("--shard", 2), ("RANK/WORLD_SIZE", 3)], ids=["shard-2", "ranks-3"])
def shard_runs(request, shot, tiny_weights, tmp_path_factory) -> list:
    """Each shard of the shot restored into its own folder: [(folder, stdout, stderr)] in shard order."""
    how, n = request.param
    runs = []
    for k in range(n):
        out = tmp_path_factory.mktemp(f"shard{k}of{n}")
        with pytest.MonkeyPatch.context() as env:
            env.delenv("WORLD_SIZE", raising=False)
            if how == "--shard":
                code, stdout, stderr = _restore_temporal(shot, out, tiny_weights, "--shard", f"{k}/{n}")
            else:
                env.setenv("RANK", str(k))
                env.setenv("WORLD_SIZE", str(n))
                code, stdout, stderr = _restore_temporal(shot, out, tiny_weights)
        assert code == 0, stderr
        runs.append((out, stdout, stderr))
    return runs


def test_temporal_shards_write_every_frame_as_one_process_does(one_process, shard_runs):
    """The frames after a shard's start are fused with the frames before it, as one process fuses them (today's
    code started fusion afresh there: 95/255 off)."""
    written = {p.name: read_image(p).rgb for out, _, _ in shard_runs for p in out.iterdir()}
    assert sorted(written) == sorted(one_process) == sorted(SHOT)
    worst = {name: float(np.abs(written[name] - one_process[name]).max()) for name in SHOT}
    assert max(worst.values()) <= 1 / 255 + 1e-6, worst


def test_a_temporal_shard_writes_and_counts_only_its_own_frames(shard_runs):
    n = len(shard_runs)
    for k, (out, stdout, stderr) in enumerate(shard_runs):
        own = take_shard(SHOT, k, n)
        assert sorted(p.name for p in out.iterdir()) == sorted(own)  # the frames before it were not written
        assert f"restored {len(own)}, skipped 0, failed 0" in stdout
        before = len(SHOT) * k // n  # all of them: the shot is shorter than the fusion's memory
        assert f"shard {k}/{n}: {len(own)} of {len(SHOT)} frames" in stderr
        assert (f"after the {before} before them" in stderr) == (before > 0)


def test_a_shard_pre_rolls_at_most_the_fusion_memory_and_only_from_its_own_sequence():
    items = number_sequences([Item(Path(f"a/f_{k}.png"), Path(f"out/a/f_{k}.png")) for k in range(5)]
                             + [Item(Path(f"b/f_{k}.png"), Path(f"out/b/f_{k}.png")) for k in range(30)])
    pre = preroll(items, 5 + 20, 16)  # shot b's frame 20
    assert [(it.input.as_posix(), it.index) for it in pre] == [(f"b/f_{k}.png", k) for k in range(4, 20)]
    assert all(it.preroll for it in pre) and not any(it.preroll for it in items)  # copies: the list is untouched
    assert [it.index for it in preroll(items, 5 + 3, 16)] == [0, 1, 2]  # never into shot a
    assert preroll(items, 5, 16) == [] and preroll(items, 0, 16) == []  # a shot's first frame starts afresh
    assert [it.index for it in preroll(items, 5 + 20, None)] == list(range(20))  # fusion that never forgets
    stills = [Item(Path(f"s{k}.png"), Path(f"out/s{k}.png")) for k in range(3)]
    assert preroll(stills, 2, 16) == []


def test_a_temporal_shard_leaves_a_failing_frame_before_its_start_to_the_shard_that_owns_it(tiny_weights, tmp_path):
    src = tmp_path / "renders"
    src.mkdir()
    for name, frame in zip(SHOT[:4], moving_face(4, 64)):
        cv2.imwrite(str(src / name), cv2.cvtColor(np.round(frame * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    (src / SHOT[0]).write_bytes(b"not a png")  # in the pre-roll of shard 1/2
    with pytest.MonkeyPatch.context() as env:
        env.delenv("WORLD_SIZE", raising=False)
        code, stdout, stderr = _restore_temporal(src, tmp_path / "out", tiny_weights, "--shard", "1/2")
    assert code == 0 and "restored 2, skipped 0, failed 0" in stdout and SHOT[0] not in stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(SHOT[2:4])
