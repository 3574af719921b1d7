"""NVIDIA Difix's published weights through our model: layout, recipe, exactness, licence gate, dtypes."""
import json
import os
import struct
import subprocess
import sys
import types
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_base import TINY_SIZE, difix_vae, make_tiny_difix

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def difix(tmp_path_factory) -> Path:
    return make_tiny_difix(tmp_path_factory.mktemp("difix") / "difix")


@pytest.fixture(autouse=True)
def no_env_acceptance(monkeypatch):
    monkeypatch.delenv("SPLAT_RESTORE_ACCEPT_LICENSE", raising=False)


def difix3d_vae(folder: Path, lora: bool = True):
    """Difix3D's VAE (src/model.py): its patched encoder/decoder forwards, peft adapter with an explicit module list,
    the folder's weights, in eval mode."""
    from safetensors.torch import load_file

    config = json.loads((folder / "vae" / "config.json").read_text())
    vae = difix_vae(config, config["lora_rank"])
    state = load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    vae.load_state_dict({k: v if lora or "lora_B" not in k else torch.zeros_like(v) for k, v in state.items()})
    vae.decoder.gamma = config["gamma"]

    def encoder_forward(self, sample):
        sample = self.conv_in(sample)
        blocks = []
        for down_block in self.down_blocks:
            blocks.append(sample)
            sample = down_block(sample)
        sample = self.conv_out(self.conv_act(self.conv_norm_out(self.mid_block(sample))))
        self.current_down_blocks = blocks
        return sample

    def decoder_forward(self, sample, latent_embeds=None):
        sample = self.mid_block(self.conv_in(sample), latent_embeds)
        skips = [self.skip_conv_1, self.skip_conv_2, self.skip_conv_3, self.skip_conv_4]
        for idx, up_block in enumerate(self.up_blocks):
            sample = sample + skips[idx](self.incoming_skip_acts[::-1][idx] * self.gamma)
            sample = up_block(sample, latent_embeds)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))

    vae.encoder.forward = types.MethodType(encoder_forward, vae.encoder)
    vae.decoder.forward = types.MethodType(decoder_forward, vae.decoder)
    return vae.eval().requires_grad_(False)  # Difix.set_eval(); train mode picks other CPU kernels, 1e-6 apart


def difix3d_scheduler(folder: Path):
    """DDPMScheduler ready for Difix3D's one step at t=199."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(json.loads((folder / "scheduler" / "scheduler_config.json").read_text()))
    # Difix3D calls set_timesteps(1) then step(t=199): with the diffusers of its day the previous step is then
    # "before 0", so alpha_prev = 1. Today's diffusers looks t up in the schedule, so say it the way it accepts.
    sched.set_timesteps(timesteps=[199])
    return sched


def difix_reference_forward(folder: Path, x: torch.Tensor, lora: bool = True) -> torch.Tensor:
    """Difix3D's src/model.py forward, written out: its patched encoder/decoder forwards, peft adapter with an
    explicit module list, DDPMScheduler's one-step `step` at t=199. Only change: the posterior mean, not a sample."""
    from diffusers import UNet2DConditionModel

    from engine.weights.base import encode_prompt

    vae = difix3d_vae(folder, lora)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval().requires_grad_(False)
    sched = difix3d_scheduler(folder)
    caption = encode_prompt(folder, "remove degradation")
    timesteps = torch.tensor([199]).long()
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        pred = unet(z, timesteps, encoder_hidden_states=caption.expand(len(x), -1, -1)).sample
        z0 = sched.step(pred, timesteps, z, generator=torch.Generator().manual_seed(0)).prev_sample
        vae.decoder.incoming_skip_acts = vae.encoder.current_down_blocks
        return vae.decode(z0 / vae.config.scaling_factor).sample.clamp(-1, 1)


def test_published_layout_has_the_real_key_names(difix):
    from safetensors import safe_open

    with safe_open(str(difix / "vae" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "decoder.up_blocks.0.resnets.0.conv1.base_layer.weight" in keys
    assert "decoder.up_blocks.0.resnets.0.conv1.lora_A.vae_skip.weight" in keys
    assert "decoder.skip_conv_1.base_layer.weight" in keys and "decoder.skip_conv_4.lora_B.vae_skip.weight" in keys
    assert "encoder.conv_in.weight" in keys and not any(k.startswith("encoder.") and "lora" in k for k in keys)


def test_recipe_is_read_from_the_configs(difix):
    from blender_addon.engine_link.licenses import NVIDIA_DIFIX
    from engine.weights.loading import read_recipe
    from engine.model import alpha_bar

    recipe = read_recipe(difix)
    r, lora = recipe.restorer, recipe.lora
    assert (r.timestep, r.input_range, r.skip_gamma, r.unet_source) == (199, "-1,1", 1.0, "weights")
    assert r.alpha_bar == pytest.approx(alpha_bar(json.loads((difix / "scheduler/scheduler_config.json").read_text()),
                                                  199))
    assert (lora.rank_unet, lora.rank_vae, lora.alpha_vae, lora.vae_scope, lora.skip_lora) == (0, 4, 8.0, "decoder",
                                                                                               True)
    assert recipe.prompt == "remove degradation" and recipe.license == NVIDIA_DIFIX.id


def test_engine_matches_difix_reference_forward_in_fp32(difix):
    from engine.weights.loading import load_restorer

    torch.manual_seed(0)
    x = torch.rand(2, 3, TINY_SIZE, TINY_SIZE) * 2 - 1
    reference = difix_reference_forward(difix, x)
    adapters, _ = load_restorer(difix, merge=False, accept_license=True)
    merged, _ = load_restorer(difix, accept_license=True)  # as every restore runs
    with torch.no_grad():
        ours, fast = adapters(x), merged(x)
    # same recipe, same operations: measured 0.0
    assert (ours - reference).abs().max().item() <= 1e-6
    # folding s·BA into W reorders fp32 sums, and the tiny random decoder amplifies that: 7e-6 to 1.1e-5 measured
    assert (fast - reference).abs().max().item() <= 2e-5
    plain = difix_reference_forward(difix, x, lora=False)
    assert (reference - plain).abs().max().item() > 1e-2  # the LoRA and skips matter: the comparison has teeth


def test_ignore_skip_drops_the_skips(tmp_path):
    from engine.weights.loading import load_restorer

    folder = make_tiny_difix(tmp_path / "d", gamma=1.0)
    config = json.loads((folder / "vae/config.json").read_text())
    x = torch.rand(1, 3, TINY_SIZE, TINY_SIZE) * 2 - 1
    with_skips, _ = load_restorer(folder, accept_license=True)
    (folder / "vae/config.json").write_text(json.dumps({**config, "ignore_skip": True}))
    without, info = load_restorer(folder, accept_license=True)
    with torch.no_grad():
        assert info.restorer.skip_gamma == 0.0 and (with_skips(x) - without(x)).abs().max() > 1e-3


def test_fp16_is_the_closer_half_precision_so_gpus_use_it(difix):
    """The weights ship in fp32 with force_upcast; measured here: fp16 mean error ~0.002, bf16 ~0.014 (7x)."""
    from engine.weights.loading import load_restorer
    from engine.runtime import pick_dtype

    model, _ = load_restorer(difix, accept_license=True)
    torch.manual_seed(0)
    x = torch.rand(4, 3, TINY_SIZE, TINY_SIZE) * 2 - 1
    errors = {}
    with torch.no_grad():
        full = model(x)
        for dtype in (torch.float16, torch.bfloat16):
            half = model.to(dtype)(x.to(dtype)).float()
            assert torch.isfinite(half).all()
            errors[dtype] = (half - full).abs()
    assert errors[torch.float16].mean() < 0.005 and errors[torch.float16].max() < 0.05
    assert errors[torch.bfloat16].mean() > 2 * errors[torch.float16].mean()
    assert pick_dtype("auto", torch.device("cuda")) == torch.float16


def test_licence_refusal_loads_nothing(difix, monkeypatch):
    import engine.weights.published
    from blender_addon.engine_link.licenses import LicenseNotAccepted
    from engine.weights.loading import load_restorer

    monkeypatch.setattr(engine.weights.published, "load_published", lambda *a: pytest.fail("loaded before the gate"))
    with pytest.raises(LicenseNotAccepted, match="non-commercial"):
        load_restorer(difix)


def _engine(*args, env=None, **kw):
    env = {**{k: v for k, v in os.environ.items() if k != "SPLAT_RESTORE_ACCEPT_LICENSE"}, "HF_HUB_OFFLINE": "1",
           **(env or {})}
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=600, **kw)


def _face_png(path: Path, size: int = TINY_SIZE) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def test_cli_refuses_without_acceptance_and_writes_nothing(difix, tmp_path):
    _face_png(tmp_path / "f.png")
    out = tmp_path / "restored"
    r = _engine("restore", tmp_path / "f.png", "-o", out, "--weights", difix)
    assert r.returncode == 2
    assert "NVIDIA License" in r.stderr and "non-commercial" in r.stderr and "--accept-license" in r.stderr
    assert not out.exists()


def test_cli_restores_with_the_flag_and_records_model_and_licence(difix, tmp_path):
    _face_png(tmp_path / "f.png")
    out = tmp_path / "restored"
    r = _engine("restore", tmp_path / "f.png", "-o", out, "--weights", difix, "--accept-license")
    assert r.returncode == 0, r.stderr
    text = Image.open(out / "f.png").text
    assert "Difix" in text["Splat Restore model"] and "non-commercial" in text["Splat Restore license"]


def test_environment_accepts_for_farms(difix, tmp_path):
    _face_png(tmp_path / "f.png")
    r = _engine("restore", tmp_path / "f.png", "-o", tmp_path / "o", "--weights", difix,
                env={"SPLAT_RESTORE_ACCEPT_LICENSE": "1"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "f.png").is_file()


@pytest.mark.parametrize("value, accepted", [("1", True), ("true", True), ("YES", True), (" yes ", True),
                                             ("0", False), ("no", False), ("false", False), ("", False),
                                             ("off", False), ("accept", False)])
def test_only_an_explicit_yes_in_the_environment_accepts(monkeypatch, value, accepted):
    """A farm that sets the variable to 0 or no has said no: that must never count as acceptance."""
    from blender_addon.engine_link.licenses import LicenseNotAccepted, require_acceptance

    monkeypatch.setenv("SPLAT_RESTORE_ACCEPT_LICENSE", value)
    if accepted:
        require_acceptance("nvidia-difix", "nvidia/difix", accepted=False)
    else:
        with pytest.raises(LicenseNotAccepted, match="non-commercial"):
            require_acceptance("nvidia-difix", "nvidia/difix", accepted=False)


def test_serve_refuses_with_a_ready_error_and_exit_2(difix):
    r = _engine("serve", "--weights", difix, "--device", "cpu", input="")
    ready = json.loads(r.stdout.splitlines()[0])
    assert r.returncode == 2
    assert ready["ok"] is False and ready["error"]["code"] == "license_not_accepted"
    assert "non-commercial" in ready["error"]["message"]


def test_info_prints_recipe_and_licence(difix):
    r = _engine("info", "--weights", difix, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["restorer"]["timestep"] == 199 and info["prompt"] == "remove degradation"
    assert "NVIDIA License" in info["license"] and "non-commercial" in info["license"]


def _fake_hub_cache(cache: Path, repo: str, folder: Path) -> None:
    """The HF cache layout huggingface_hub reads offline: models--org--name/{refs/main, snapshots/<rev>/...}."""
    import shutil

    root = cache / ("models--" + repo.replace("/", "--"))
    rev = "0" * 40
    shutil.copytree(folder, root / "snapshots" / rev)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(rev)


def test_hub_id_is_found_in_the_hf_cache(difix, tmp_path, monkeypatch):
    from engine.weights.loading import read_recipe

    _fake_hub_cache(tmp_path / "hub", "nvidia/difix", difix)
    _face_png(tmp_path / "f.png")
    r = _engine("restore", tmp_path / "f.png", "-o", tmp_path / "o", "--weights", "nvidia/difix",
                "--accept-license", env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert r.returncode == 0, r.stderr
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(Exception, match="fetch nvidia/difix"):
        read_recipe("nvidia/difix")


def test_mismatched_vae_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    from engine.weights.checkpoint import CheckpointError
    from engine.weights.loading import load_restorer

    folder = make_tiny_difix(tmp_path / "d")
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    del state["decoder.skip_conv_2.lora_A.vae_skip.weight"]
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors.*1 missing"):
        load_restorer(folder, accept_license=True)


def test_base_does_not_apply_to_published_weights(difix, tmp_path):
    from engine.weights.checkpoint import CheckpointError
    from engine.weights.loading import load_restorer

    with pytest.raises(CheckpointError, match="carry their own base"):
        load_restorer(difix, base=str(tmp_path), accept_license=True)


def test_png_text_chunks_survive_a_round_trip(tmp_path):
    from engine.images import Frame, read_image, write_image

    rgb = np.random.default_rng(1).random((16, 16, 3), dtype=np.float32)
    frame = Frame(rgb, None, 16, "PNG", False)
    write_image(tmp_path / "a.png", frame, rgb, {"Splat Restore model": "Ünïcode model", "Software": "x"})
    text = Image.open(tmp_path / "a.png").text
    assert text == {"Splat Restore model": "Ünïcode model", "Software": "x"}
    assert np.abs(read_image(tmp_path / "a.png").rgb - rgb).max() <= 1 / 65535
    assert struct.unpack(">I", (tmp_path / "a.png").read_bytes()[8:12])[0] == 13  # IHDR still first


def test_the_shipped_example_restores_with_difix_weights(difix, tmp_path):
    """The README's main command on the example folder, with the tiny Difix standing in for nvidia/difix."""
    r = _engine("restore", ROOT / "examples", "-o", tmp_path / "restored", "--weights", difix, "--accept-license",
                "--device", "cpu")
    assert r.returncode == 0, r.stderr
    from engine.faces.restore import FramePipeline
    from engine.images import read_image
    from engine.runtime import ModelRunner

    example = read_image(ROOT / "examples" / "splat_face.png").rgb
    restored = read_image(tmp_path / "restored" / "splat_face.png").rgb
    assert restored.shape == example.shape == (512, 512, 3)
    # what the README promises: the model's changes pasted into the frame, not the input handed back
    runner = ModelRunner.from_pretrained(difix, accept_license=True, device="cpu", compile="off")
    with closing(FramePipeline(runner)) as pipeline:
        expected = pipeline.restore([example], ["auto"])[0].rgb
    assert np.abs(restored - expected).max() <= 1 / 255
    assert np.abs(expected - example).mean() > 4 / 255
