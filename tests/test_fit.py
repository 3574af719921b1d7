"""`python -m training fit`: clean faces in, a restorer, metrics and a report out; it resumes, skips bad inputs, and
its parts (crops, loader, region loss, memory plan, Y-channel metrics) do what the README says."""
import json
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import training.train as train_module
from engine.measure.fidelity import psnr, ssim
from training.cli import main
from training.dataset import PairDataset, PairError, batches
from training.memory_plan import measure_and_plan, needs_checkpointing
from training.train import TrainConfig, read_loss_log, recipe_loss


def _clean_faces(folder: Path) -> Path:
    """Eight framings of the bundled faces, plus the three bad inputs fit must name and skip."""
    from engine.faces.bundled import bundled_faces

    folder.mkdir(parents=True)
    for i, (name, face) in enumerate(sorted(bundled_faces().items())):
        h, w = face.shape[:2]
        for k, (scale, dx) in enumerate(((1.0, 0), (0.9, 0.05), (0.8, -0.05), (0.85, 0.0))):
            side = int(min(h, w) * scale)
            x0, y0 = int((w - side) / 2 + dx * w), (h - side) // 2
            img = cv2.resize(face[y0:y0 + side, max(0, x0):max(0, x0) + side], (160, 160), interpolation=cv2.INTER_AREA)
            img = img[:, ::-1] if k % 2 else img
            cv2.imwrite(str(folder / f"{name}_{k}.png"), cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "speck.png"), np.full((10, 10, 3), 128, np.uint8))
    (folder / "broken.png").write_bytes(b"not a png at all")
    sky = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (160, 160, 3), np.uint8), (0, 0), 8)
    cv2.imwrite(str(folder / "sky.png"), sky)
    return folder


def _fit_args(clean, out, tiny_base, steps=16):
    return ["fit", str(clean), "--out", str(out), "--base", str(tiny_base), "--steps", str(steps), "--size", "64",
            "--batch-size", "2", "--lr", "3e-3", "--warmup", "2", "--mixed-precision", "no", "--random-vgg",
            "--test-count", "2", "--workers", "1", "--save-every", "1000", "--sample-every", "1000",
            "--eval-every", "8", "--seed", "3", "--parser", "mediapipe"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _clean_faces(tmp_path_factory.mktemp("fit") / "clean")


@pytest.fixture(scope="module")
def fitted(clean, tiny_base, tmp_path_factory):
    """One uninterrupted run; (exit code, stdout + stderr, run folder)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("fit") / "run"
    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        code = main(_fit_args(clean, out, tiny_base))
    return code, buf_out.getvalue() + buf_err.getvalue(), out


def test_fit_lowers_held_out_loss_and_exports_engine_weights(fitted, tmp_path):
    code, output, run = fitted
    assert code == 1, output  # three bad inputs were skipped
    held = [r["test/loss"] for r in read_loss_log(run / "losses.jsonl") if "test/loss" in r]
    assert [r["step"] for r in read_loss_log(run / "losses.jsonl") if "test/loss" in r] == [0, 8, 16]
    assert held[0] > held[1] > held[2] and held[2] < 0.9 * held[0], held  # step 0 is the untrained model
    metrics = json.loads((run / "eval.json").read_text())
    assert metrics["split"] == "test" and metrics["count"] == 2 and "BasicSR" in metrics["convention"]
    assert "16 steps in" in output and "LPIPS" in output and "PSNR-Y" in output
    from engine.cli import main as engine_main

    frame = next((run / "pairs" / "degraded").iterdir())
    assert engine_main(["restore", str(frame), "-o", str(tmp_path / "restored"), "--weights",
                        str(run / "restorer.safetensors"), "--device", "cpu"]) == 0


def test_fit_names_and_skips_bad_inputs(fitted):
    code, output, run = fitted
    assert code == 1 and "3 inputs skipped (exit code 1)" in output
    assert "broken.png" in output and "speck.png: 10x10 is too small" in output and "sky.png" in output
    skipped = json.loads((run / "fit.json").read_text())["skipped"]
    assert set(skipped) == {"broken.png", "speck.png", "sky.png"} and "no face" in skipped["sky.png"]
    assert sorted(p.name for p in (run / "pairs" / "clean").iterdir()) == sorted(
        f"{n}_{k}.png" for n in ("astronaut", "grace_hopper") for k in range(4))


def test_report_embeds_curves_metrics_grid_and_config(fitted):
    _, _, run = fitted
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # loss curves, comparison grid
    rows = json.loads((run / "eval.json").read_text())["grid_rows"]
    assert len(rows) == 2 and all(f"<code>{name}</code>" in page for name in rows)
    assert "PSNR-Y" in page and "region_weight" in page and "BasicSR" in page


def test_fit_again_skips_finished_stages(fitted, clean, tiny_base, capsys):
    _, _, run = fitted
    before = (run / "restorer.safetensors").read_bytes()
    (run / "restorer.safetensors").unlink()  # as if the last run was stopped between training and export
    assert main(_fit_args(clean, run, tiny_base)) == 1
    out = capsys.readouterr().out
    assert "degrade: done" in out and "train: done" in out and "export:" in out and "evaluate: done" in out
    assert (run / "restorer.safetensors").read_bytes() == before


def test_fit_again_with_another_setting_is_refused_naming_both_values(fitted, clean, tiny_base, capsys):
    _, _, run = fitted
    assert main(_fit_args(clean, run, tiny_base) + ["--lr", "1e-3"]) == 2
    assert "lr: 0.003 in the run, 0.001 now" in capsys.readouterr().err


def test_ctrl_c_saves_state_and_the_same_command_continues_exactly(fitted, clean, tiny_base, tmp_path, monkeypatch,
                                                                    capsys):
    run = tmp_path / "run"
    calls = {"n": 0}
    real = train_module.recipe_loss

    def ctrl_c_in_step_5(*args, **kw):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 5:
                signal.raise_signal(signal.SIGINT)
        return real(*args, **kw)
    monkeypatch.setattr(train_module, "recipe_loss", ctrl_c_in_step_5)
    assert main(_fit_args(clean, run, tiny_base)) == 130
    assert "interrupted at step 5; state saved" in capsys.readouterr().err
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 5
    monkeypatch.setattr(train_module, "recipe_loss", real)
    assert main(_fit_args(clean, run, tiny_base)) == 1  # finished; the bad inputs are still named
    assert "resumed" in capsys.readouterr().out
    from safetensors.torch import load_file

    a, b = load_file(str(fitted[2] / "restorer.safetensors")), load_file(str(run / "restorer.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_loss_log(run / "losses.jsonl")] == list(range(17))


def test_no_usable_image_is_an_error_naming_the_files(tmp_path, tiny_base, capsys):
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "broken.png").write_bytes(b"junk")
    args = _fit_args(tmp_path / "clean", tmp_path / "run", tiny_base)
    args[args.index("--test-count") + 1] = "0"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no usable image" in err and "broken.png" in err


def test_fit_degrades_again_over_its_own_unfinished_pairs(tmp_path, monkeypatch):
    from training.fit import fit

    class TrainingStarted(Exception):
        pass

    def stop(*args, **kw):
        raise TrainingStarted
    monkeypatch.setattr(train_module, "train", stop)
    for folder, names in (("first", ["a.png", "b.png"]), ("second", ["c.png"])):
        (tmp_path / folder).mkdir()
        for name in names:
            cv2.imwrite(str(tmp_path / folder / name), np.full((80, 80, 3), 90, np.uint8))
    assert main(["degrade", str(tmp_path / "first"), "-o", str(tmp_path / "run" / "pairs"), "--parser", "none"]) == 0
    (tmp_path / "run" / "pairs" / "summary.json").unlink()  # as if that degrade had not finished
    with pytest.raises(TrainingStarted):
        fit(tmp_path / "second", TrainConfig(pairs="", out=str(tmp_path / "run"), size=64), parser="none",
            log=lambda *_: None)
    assert sorted(p.name for p in (tmp_path / "run" / "pairs" / "clean").iterdir()) == ["c.png"]


def _pattern_pairs(root: Path, size=72) -> Path:
    """degraded == clean == a gradient pattern and mask == its red channel, so any misaligned crop shows."""
    for sub in ("clean", "degraded", "mask"):
        (root / sub).mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([xx * 3, yy * 3, (xx + yy) % 256], -1).astype(np.uint8)
    for sub in ("clean", "degraded"):
        cv2.imwrite(str(root / sub / "a.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "mask" / "a.png"), img[..., 0])
    return root


def test_random_crops_move_and_cut_degraded_clean_and_mask_alike(tmp_path):
    data = PairDataset(_pattern_pairs(tmp_path / "p"), "all", size=64)
    corners = set()
    for k in range(12):
        x, y, m = data.sample(0, np.random.default_rng(k))
        assert torch.equal(x, y) and torch.allclose(m[0], (x[0] + 1) / 2, atol=1e-6)
        corners.add((round(float(x[0, 0, 0]), 4), round(float(x[1, 0, 0]), 4), bool(x[0, 0, 1] < x[0, 0, 0])))
    assert len(corners) > 4 and any(flip for *_, flip in corners) and not all(flip for *_, flip in corners)


def test_loader_workers_give_exactly_the_in_process_batches(tmp_path):
    data = PairDataset(_pattern_pairs(tmp_path / "p"), "all", size=64)
    loaded = list(batches(data, seed=3, batch_size=2, indices=[7, 8, 9], workers=1))
    for index, got in zip([7, 8, 9], loaded):
        assert all(torch.equal(a, b) for a, b in zip(got, data.batch(3, index, 2)))


def test_region_weight_counts_masked_errors_more_and_is_off_by_default():
    target = torch.zeros(1, 3, 8, 8)
    pred = target.clone()
    pred[..., :4, :] = 0.5  # error only in the top half
    top, bottom = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    top[..., :4, :], bottom[..., 4:, :] = 1, 1

    def l1(mask, weight):
        cfg = TrainConfig(pairs="", out="", region_weight=weight, lambda_lpips=0, lambda_gram=0)
        return recipe_loss(pred, target, lambda a, b: (torch.zeros(()), torch.zeros(())), cfg, mask)[1]["l1"]
    assert l1(top, 0.0) == l1(bottom, 0.0) == pytest.approx(0.25)
    assert l1(top, 4.0) > 0.25 > l1(bottom, 4.0)


def test_region_weight_without_masks_names_the_missing_files(tmp_path):
    root = _pattern_pairs(tmp_path / "p")
    (root / "mask" / "a.png").unlink()
    with pytest.raises(PairError, match=r"--region-weight.*mask/a\.png"):
        PairDataset(root, "all", 64).require_masks()


def test_memory_plan_switches_checkpointing_on_only_when_the_batch_would_not_fit():
    gib = 2 ** 30
    # 5 GiB resident, batch 1 peaks at 11 GiB: batch 4 needs 5 + 4 x 6 = 29 GiB
    assert needs_checkpointing(5 * gib, 11 * gib, batch=4, free=19 * gib)  # a 24 GB card
    assert not needs_checkpointing(5 * gib, 11 * gib, batch=4, free=75 * gib)  # an 80 GB card
    assert needs_checkpointing(5 * gib, 11 * gib, batch=1, free=7 * gib, optimizer_state=gib)
    assert measure_and_plan(None, None, torch.device("cpu"), 4, 512) is False


def test_y_channel_psnr_ssim_follow_basicsr():
    img = np.random.default_rng(0).random((32, 32, 3))
    assert psnr(img, img) == float("inf") and ssim(img, img) == pytest.approx(1.0)
    a, b = np.full((16, 16, 3), 100 / 255), np.full((16, 16, 3), 110 / 255)
    ya, yb = 100 / 255 * 219 + 16, 110 / 255 * 219 + 16  # grey: Y = 16 + 219 v
    assert psnr(a, b) == pytest.approx(20 * np.log10(255 / (yb - ya)))  # 29.46 dB
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * ya * yb + c1) / (ya ** 2 + yb ** 2 + c1))
    red, green = np.zeros((16, 16, 3)), np.zeros((16, 16, 3))
    red[..., 0], green[..., 1] = 1, 1  # Y weights green about twice red: 65.481 vs 128.553
    assert psnr(red, green) == pytest.approx(20 * np.log10(255 / (128.553 - 65.481)))


def test_step_benchmark_prints_the_memory_plan_for_a_24_gb_card(capsys):
    from training.bench_step import print_rows

    row = {"ms_per_step": 900.0, "size": 512, "device": "cuda:0", "checkpointing": False, "resident_gib": 4.0}
    print_rows([row | {"batch": 1, "peak_gib": 9.0}, row | {"batch": 4, "peak_gib": 25.0}])
    out = capsys.readouterr().out
    assert "full loss L1 + LPIPS-VGG + Gram" in out
    assert "24 GB card, batch 1: gradient checkpointing off" in out and "batch 4: gradient checkpointing on" in out


def test_resuming_trims_losses_logged_after_the_saved_state(tmp_path):
    from training.train import append_loss_log, trim_loss_log

    log = tmp_path / "losses.jsonl"
    for step in range(9):  # a crash after step 8, state last saved at step 5
        append_loss_log(log, {"step": step, "train/loss": 1.0})
    trim_loss_log(log, 5)
    assert [r["step"] for r in read_loss_log(log)] == list(range(6))


def test_a_loss_line_cut_short_by_a_killed_run_is_dropped_on_resume(tmp_path):
    from training.train import append_loss_log, trim_loss_log

    log = tmp_path / "losses.jsonl"
    for step in range(4):
        append_loss_log(log, {"step": step, "train/loss": 1.0})
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"step": 4, "train/lo')  # killed while appending step 4
    assert [r["step"] for r in read_loss_log(log)] == [0, 1, 2, 3]  # the report still reads it
    trim_loss_log(log, 3)
    append_loss_log(log, {"step": 4, "train/loss": 0.5})  # the resumed run's step 4
    assert [(r["step"], r["train/loss"]) for r in read_loss_log(log)] == [(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0),
                                                                         (4, 0.5)]
