"""Fine-tuning from a restorer that already works (`--init WEIGHTS`): it learns past the init, its checkpoint holds only
the new LoRA and restores through the engine, zeroing that LoRA gives the init back exactly, the init is checked by
fingerprint, Difix's licence travels with its fine-tunes, and `fit --pairs` runs end to end with synthetic pairs mixed
in (the warmup cap that lets short fine-tunes learn is in test_training.py)."""
import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tiny_base import TINY_SIZE, make_tiny_difix, write_tiny_checkpoint
from training.cli import main
from training.train import TrainConfig, read_loss_log, train


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's convolutions are too small to share: on two busy cores a two-thread pool waits on itself
    (a 30-step fine-tune took 158 s instead of 15 s, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_env_acceptance(monkeypatch):
    monkeypatch.delenv("SPLAT_RESTORE_ACCEPT_LICENSE", raising=False)


def _camera_pairs(root: Path, count: int = 10, size: int = 72) -> Path:
    """(render, photo) pairs as Blender's Make Training Pairs writes them: every 4th camera held out. The "render" is
    the photo blurred, flattened in contrast and slightly warmer, a change the init (random weights) knows nothing of
    and a LoRA learns in a few dozen steps; mild enough that check-pairs flags none of them."""
    from engine.faces.bundled import bundled_faces

    rng = np.random.default_rng(0)
    faces = list(bundled_faces().values())
    records = []
    for sub in ("clean", "degraded"):
        (root / sub).mkdir(parents=True)
    for i in range(count):
        face = faces[i % len(faces)]
        side = int(rng.integers(160, 260))
        y, x = int(rng.integers(0, face.shape[0] - side)), int(rng.integers(0, face.shape[1] - side))
        photo = cv2.resize(face[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
        render = cv2.GaussianBlur(photo, (0, 0), 1.0)
        render = 0.6 * (render - render.mean()) + render.mean() + np.array([6, 0, -6], np.float32)
        name = f"cam_{i:03d}"
        for sub, img in (("clean", photo), ("degraded", render)):
            cv2.imwrite(str(root / sub / f"{name}.png"), cv2.cvtColor(img.clip(0, 255).astype(np.uint8),
                                                                      cv2.COLOR_RGB2BGR))
        records.append({"name": name, "file": f"{name}.png", "split": "test" if i % 4 == 0 else "train"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return _camera_pairs(tmp_path_factory.mktemp("cameras") / "pairs")


@pytest.fixture(scope="module")
def init(tiny_base, tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tiny_base, tmp_path_factory.mktemp("init") / "init.safetensors")


def _config(pairs, out, steps, **kw) -> TrainConfig:
    return TrainConfig(**dict(pairs=str(pairs), out=str(out), steps=steps, batch_size=2, lr=3e-3, size=64,
                              mixed_precision="no", save_every=steps, sample_every=1000, eval_every=steps,
                              eval_count=4, random_vgg=True, seed=3, workers=0) | kw)


@pytest.fixture(scope="module")
def finetuned(pairs, init, tmp_path_factory) -> Path:
    """A 30-step fine-tune of the tiny restorer; its run folder."""
    out = tmp_path_factory.mktemp("finetune") / "run"
    train(_config(pairs, out, 30, init=str(init)), log=lambda *_: None)
    return out


def _zero_lora(weights: Path, out: Path) -> Path:
    """The checkpoint with every new LoRA B set to 0 (the model of step 0), metadata unchanged."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata()
    tensors = {k: torch.zeros_like(v) if ".lora_B." in k else v for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(out), metadata=meta)
    return out


def _restore(weights, x, **kw) -> torch.Tensor:
    from engine.weights.loading import load_restorer

    model, _ = load_restorer(weights, **kw)
    with torch.no_grad():
        return model(x)


def _frame() -> torch.Tensor:
    return torch.rand(1, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_fine_tuning_a_restorer_lowers_held_out_loss_below_the_inits(finetuned, init, pairs):
    from engine.weights.loading import load_restorer
    from training.dataset import PairDataset
    from training.perceptual import PerceptualLoss
    from training.train import held_out_loss

    held = {r["step"]: r["test/loss"] for r in read_loss_log(finetuned / "losses.jsonl") if "test/loss" in r}
    assert set(held) == {0, 30} and held[30] < 0.85 * held[0], held  # step 0 is the init exactly
    # the same through the engine's loading path, on the held-out cameras
    torch.manual_seed(0)
    perceptual, data, cfg = PerceptualLoss(random_init=True), PairDataset(pairs, "test", 64), TrainConfig("", "")
    before, after = (held_out_loss(load_restorer(w)[0], data, perceptual, cfg, "cpu", 4)["loss"]
                     for w in (init, finetuned / "latest.safetensors"))
    assert after < 0.9 * before, (before, after)  # measured 0.957 -> 0.809


def test_the_checkpoint_holds_the_new_lora_and_its_lineage(finetuned, init):
    from safetensors import safe_open

    from engine.weights.checkpoint import read_info

    with safe_open(str(finetuned / "latest.safetensors"), framework="pt") as f:
        keys, meta = set(f.keys()), json.loads(f.metadata()["splat_restore"])
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys - {"prompt_embeds"}), sorted(keys)[:5]
    assert any(k.startswith("unet.") for k in keys) and any(k.startswith("vae.") for k in keys)
    assert meta["format_version"] == 2
    info = read_info(finetuned / "latest.safetensors")
    assert info.init == {"weights": str(init.resolve()), "source": "tests", "license": "",
                         "fingerprint": hashlib.sha256(init.read_bytes()).hexdigest()[:16]}
    assert info.restorer == read_info(init).restorer and info.prompt == read_info(init).prompt
    recorded = json.loads((finetuned / "config.json").read_text())
    assert recorded["init"] == str(init) and recorded["init_fingerprint"] == info.init["fingerprint"]


def test_with_its_new_lora_zeroed_the_checkpoint_restores_exactly_as_the_init(finetuned, init, tmp_path):
    x = _frame()
    reference = _restore(init, x)
    zeroed = _zero_lora(finetuned / "latest.safetensors", tmp_path / "zeroed.safetensors")
    assert torch.equal(_restore(zeroed, x), reference)
    assert torch.equal(_restore(zeroed, x, merge=False), reference)
    assert (_restore(finetuned / "latest.safetensors", x) - reference).abs().max() > 1e-2  # the LoRA did learn


def test_the_engine_restores_a_fine_tune_like_any_checkpoint(finetuned, pairs, tmp_path):
    from engine.cli import main as engine_main
    from engine.images import read_image

    out = tmp_path / "restored"
    assert engine_main(["restore", str(pairs / "degraded" / "cam_000.png"), "-o", str(out), "--weights",
                        str(finetuned / "latest.safetensors"), "--device", "cpu"]) == 0
    assert read_image(out / "cam_000.png").rgb.shape == (72, 72, 3)


def test_a_changed_moved_or_wrong_init_is_named(pairs, tiny_base, tmp_path):
    from engine.weights.checkpoint import CheckpointError
    from engine.weights.lineage import init_fingerprint
    from engine.weights.loading import load_restorer

    init = write_tiny_checkpoint(tiny_base, tmp_path / "studio" / "init.safetensors")
    train(_config(pairs, tmp_path / "run", 1, init=str(init)), log=lambda *_: None)
    weights = tmp_path / "run" / "latest.safetensors"
    recorded = init_fingerprint(init)

    other = write_tiny_checkpoint(tiny_base, tmp_path / "other.safetensors", seed=2)
    with pytest.raises(CheckpointError) as wrong:  # --base names the init of a fine-tune
        load_restorer(weights, base=str(other))
    assert str(other) in str(wrong.value) and recorded in str(wrong.value)
    assert init_fingerprint(other) in str(wrong.value)

    shutil.move(init, tmp_path / "init.safetensors")
    with pytest.raises(CheckpointError, match=r"fine-tune of .*init\.safetensors, which does not exist"):
        load_restorer(weights)
    load_restorer(weights, base=str(tmp_path / "init.safetensors"))  # named where it is now
    shutil.move(tmp_path / "init.safetensors", tmp_path / "run" / "init.safetensors")
    load_restorer(weights)  # found beside the checkpoint: a run folder moved with its init in it

    shutil.copyfile(other, tmp_path / "run" / "init.safetensors")  # the init file changed
    with pytest.raises(CheckpointError, match="fingerprint") as changed:
        load_restorer(weights)
    assert "init.safetensors" in str(changed.value) and recorded in str(changed.value)


def test_a_resume_with_another_init_is_refused(pairs, init, tiny_base, tmp_path):
    from training.run_record import RunMismatch

    train(_config(pairs, tmp_path / "run", 2, init=str(init), stop_after=1), log=lambda *_: None)
    other = write_tiny_checkpoint(tiny_base, tmp_path / "other.safetensors", seed=2)
    with pytest.raises(RunMismatch, match="init_fingerprint"):
        train(_config(pairs, tmp_path / "run", 2, init=str(other)), log=lambda *_: None)
    with pytest.raises(RunMismatch, match="init_fingerprint"):
        train(_config(pairs, tmp_path / "run", 2, base=str(tiny_base)), log=lambda *_: None)


def test_prompt_does_not_apply_to_a_fine_tune(pairs, init, tmp_path):
    with pytest.raises(ValueError, match="--prompt does not apply with --init"):
        train(_config(pairs, tmp_path / "run", 1, init=str(init), prompt="a face"), log=lambda *_: None)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def difix(tmp_path_factory) -> Path:
    return make_tiny_difix(tmp_path_factory.mktemp("difix") / "difix")


def test_a_difix_folder_is_fingerprinted_by_its_weights_and_recipe_not_where_it_is(difix, tmp_path):
    from engine.weights.lineage import init_fingerprint

    fingerprint = init_fingerprint(difix)
    copy = shutil.copytree(difix, tmp_path / "moved")
    config = json.loads((copy / "unet" / "config.json").read_text())
    (copy / "unet" / "config.json").write_text(json.dumps(config | {"_diffusers_version": "9.9"}, indent=4))
    assert init_fingerprint(copy) == fingerprint  # moved, and re-saved by another diffusers
    vae = json.loads((copy / "vae" / "config.json").read_text())
    (copy / "vae" / "config.json").write_text(json.dumps(vae | {"gamma": 0.5}))
    assert init_fingerprint(copy) != fingerprint
    (copy / "vae" / "config.json").write_text(json.dumps(vae))
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one UNet weight
    weights.write_bytes(bytes(data))
    assert init_fingerprint(copy) != fingerprint


def test_a_fine_tune_of_difix_is_refused_without_the_licence_and_writes_nothing(difix, pairs, tmp_path, capsys):
    args = ["--pairs", str(pairs), "--init", str(difix), "--steps", "1", "--size", "64", "--mixed-precision", "no",
            "--random-vgg"]
    assert main(["train", "--out", str(tmp_path / "train"), *args]) == 2
    assert "NVIDIA License" in capsys.readouterr().err
    assert main(["fit", "--out", str(tmp_path / "fit"), *args]) == 2
    err = capsys.readouterr().err
    assert "NVIDIA License" in err and "non-commercial" in err and "--accept-license" in err
    assert not (tmp_path / "train").exists() and not (tmp_path / "fit").exists()


@pytest.fixture(scope="module")
def difix_finetune(difix, pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("difix_finetune") / "run"
    train(_config(pairs, out, 2, init=str(difix), accept_license=True), log=lambda *_: None)
    return out / "latest.safetensors"


def test_a_fine_tune_of_difix_carries_its_licence_and_recipe(difix, difix_finetune, tmp_path):
    from blender_addon.engine_link.licenses import NVIDIA_DIFIX, LicenseNotAccepted
    from engine.weights.checkpoint import read_info
    from engine.weights.loading import load_restorer

    info = read_info(difix_finetune)
    assert info.license == info.init["license"] == NVIDIA_DIFIX.id
    assert (info.restorer.timestep, info.restorer.skip_gamma, info.restorer.unet_source) == (199, 1.0, "weights")
    assert info.prompt == "remove degradation"
    with pytest.raises(LicenseNotAccepted, match="non-commercial"):
        load_restorer(difix_finetune)
    x = _frame()
    zeroed = _zero_lora(difix_finetune, tmp_path / "zeroed.safetensors")  # the step-0 model
    assert torch.equal(_restore(zeroed, x, accept_license=True), _restore(difix, x, accept_license=True))
    difix_model, _ = load_restorer(difix, accept_license=True)
    finetuned_model, _ = load_restorer(difix_finetune, accept_license=True)
    assert torch.equal(finetuned_model.prompt_embeds, difix_model.prompt_embeds)


def test_the_engine_gates_a_fine_tune_of_difix_as_difix(difix_finetune, pairs, tmp_path, capsys):
    from engine.cli import main as engine_main

    frame = str(pairs / "degraded" / "cam_000.png")
    assert engine_main(["restore", frame, "-o", str(tmp_path / "refused"), "--weights", str(difix_finetune),
                        "--device", "cpu"]) == 2
    assert "non-commercial" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert engine_main(["restore", frame, "-o", str(tmp_path / "ok"), "--weights", str(difix_finetune),
                        "--device", "cpu", "--accept-license"]) == 0
    from PIL import Image

    assert "non-commercial" in Image.open(tmp_path / "ok" / "cam_000.png").text["Splat Restore license"]


def test_synthetic_pairs_take_their_share_of_every_stretch_and_replay_exactly(pairs, tmp_path):
    from training.dataset import PairDataset
    from training.mixed_pairs import MixedPairs

    synthetic = _camera_pairs(tmp_path / "synthetic", count=4)
    mixed = MixedPairs(PairDataset(pairs, "train", 64), PairDataset(synthetic, "train", 64), 0.3)
    sources = [mixed.source(k)[2] for k in range(100)]
    assert sum(sources) == 30 and all(2 <= sum(sources[k:k + 10]) <= 4 for k in range(90))
    real = [j for data, j, tag in map(mixed.source, range(100)) if tag == 0]
    assert real == list(range(70))  # each source walks its own permutation without skipping a sample
    first, again = mixed.batch(3, 5, 4), mixed.batch(3, 5, 4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    with pytest.raises(ValueError, match="synthetic-share"):
        MixedPairs(mixed.real, mixed.synthetic, 1.0)


def test_a_run_with_synthetic_pairs_trains_on_them_and_resumes_exactly(pairs, tiny_base, tmp_path):
    from safetensors.torch import load_file

    synthetic = _camera_pairs(tmp_path / "synthetic", count=4)
    (synthetic / "manifest.jsonl").unlink()  # every pair "train"
    for folder in ("clean", "degraded"):  # unlike the real pairs: upside down
        for path in (synthetic / folder).iterdir():
            cv2.imwrite(str(path), cv2.imread(str(path))[::-1])
    settings = dict(base=str(tiny_base), batch_size=4, synthetic_pairs=str(synthetic), synthetic_share=0.5)
    train(_config(pairs, tmp_path / "straight", 3, **settings), log=lambda *_: None)
    train(_config(pairs, tmp_path / "resumed", 3, stop_after=2, **settings), log=lambda *_: None)
    train(_config(pairs, tmp_path / "resumed", 3, **settings), log=lambda *_: None)
    train(_config(pairs, tmp_path / "real", 3, **settings | {"synthetic_pairs": None}), log=lambda *_: None)
    straight, resumed, real = (load_file(str(tmp_path / run / "latest.safetensors"))
                               for run in ("straight", "resumed", "real"))
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight)
    assert any(not torch.allclose(straight[k], real[k], atol=1e-4) for k in straight)
    recorded = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert recorded["synthetic_share"] == 0.5 and len(recorded["synthetic_fingerprint"]) == 16


def test_without_a_test_split_fit_says_its_numbers_are_on_training_pairs(pairs, tmp_path):
    from training.fit import held_out_split

    said = []
    assert held_out_split(pairs, said.append) == "test" and not said
    plain = shutil.copytree(pairs, tmp_path / "plain")
    (plain / "manifest.jsonl").unlink()
    assert held_out_split(plain, said.append) == "train" and "no 'test' split" in said[0]


def _synthetic_faces(folder: Path) -> Path:
    from engine.faces.bundled import bundled_faces

    folder.mkdir(parents=True)
    for i, face in enumerate(list(bundled_faces().values()) * 2):
        cv2.imwrite(str(folder / f"face_{i}.png"), cv2.cvtColor(cv2.resize(face, (96 + 8 * i, 96 + 8 * i)),
                                                                 cv2.COLOR_RGB2BGR))
    return folder


def _with_a_misaligned_pair(pairs: Path, copy: Path, name: str) -> Path:
    """A copy of the pairs with one more training pair whose photo is 5 px off its render."""
    shutil.copytree(pairs, copy)
    for sub, shift in (("degraded", 0), ("clean", 5)):
        cv2.imwrite(str(copy / sub / f"{name}.png"), np.roll(cv2.imread(str(pairs / sub / "cam_001.png")), shift, 1))
    with open(copy / "manifest.jsonl", "a") as f:
        f.write(json.dumps({"name": name, "file": f"{name}.png", "split": "train"}) + "\n")
    (copy / "pair_check.json").unlink(missing_ok=True)
    return copy


def _fit_pairs_args(pairs, init, synthetic, out):
    return ["fit", "--pairs", str(pairs), "--init", str(init), "--synthetic", str(synthetic), "--out", str(out),
            "--steps", "8", "--size", "64", "--batch-size", "2", "--lr", "3e-3", "--mixed-precision", "no",
            "--random-vgg", "--workers", "0", "--save-every", "1000", "--sample-every", "1000", "--eval-every", "8",
            "--seed", "3", "--parser", "none"]


def test_fit_pairs_with_an_init_and_synthetic_pairs_runs_resumes_and_compares_three_ways(
        pairs, init, tiny_base, tmp_path, capsys):
    synthetic = _synthetic_faces(tmp_path / "faces")
    pairs = _with_a_misaligned_pair(pairs, tmp_path / "pairs", "cam_010")
    run = tmp_path / "run"
    assert main(_fit_pairs_args(pairs, init, synthetic, run)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "synthetic: 4 pairs" in out and "mixing 4 synthetic pairs" in out
    assert "skipped pair cam_010 (flagged by check-pairs: " in out  # fit checked the pairs before training
    metrics = json.loads((run / "eval.json").read_text())
    assert metrics["split"] == "test" and metrics["count"] == 3 and metrics["sides"] == ["degraded", "init", "restored"]
    assert metrics["restored"]["lpips"] < metrics["init"]["lpips"]
    assert cv2.imread(str(run / "eval_grid.png")).shape[1] == 4 * 72  # render | init | fine-tuned | photo
    page = (run / "report.html").read_text()
    for row in ("render (input)", "init restorer", "fine-tuned", "change over the init"):
        assert f"<th>{row}</th>" in page
    assert "Render (input) | init restorer | fine-tuned | photo" in page and "warmup 0 of 8 steps" in page
    assert "Fine-tuned from" in page and "Synthetic pairs from" in page
    for row in ("render (input)", "init restorer", "fine-tuned"):
        assert row in out

    files = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != "report.html"}
    assert main(_fit_pairs_args(pairs, init, synthetic, run)) == 0
    out = capsys.readouterr().out
    assert "synthetic: done" in out and "train: done" in out and "evaluate: done" in out
    assert {p: p.stat().st_mtime_ns for p in files if p.name != "fit.json"} == {
        p: t for p, t in files.items() if p.name != "fit.json"}

    other = write_tiny_checkpoint(tiny_base, tmp_path / "other.safetensors", seed=2)
    assert main(_fit_pairs_args(pairs, other, synthetic, run)) == 2
    assert "init_fingerprint" in capsys.readouterr().err
    assert main(["fit", str(synthetic), "--out", str(run), "--steps", "8", "--random-vgg"]) == 2
    assert "was made with --pairs, not CLEAN_DIR" in capsys.readouterr().err


@pytest.mark.parametrize("args", [[], ["CLEAN", "--pairs", "P"], ["--synthetic", "S", "CLEAN"],
                                  ["--pairs", "P", "--test-count", "2"]])
def test_fit_takes_exactly_one_of_clean_dir_and_pairs(args, tmp_path, capsys):
    assert main(["fit", *args, "--out", str(tmp_path / "run")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "run").exists()
