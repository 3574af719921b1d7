"""The restorer's architecture: sizes at full scale, the one-step arithmetic, determinism, merged LoRA."""
import json

import pytest
import torch

from engine.weights.base import CONFIG_DIR, read_config
from engine.cli import main
from engine.model import alpha_bar, merge_lora, skip_conv_channels


def test_skip_convs_are_derived_from_the_vae_config():
    vae = read_config(CONFIG_DIR / "sd-turbo", "vae_config.json")
    assert skip_conv_channels(vae) == [(512, 512), (256, 512), (128, 512), (128, 256)]


def test_alpha_bar_is_what_diffusers_schedulers_compute():
    from diffusers import DDPMScheduler

    sched = read_config(CONFIG_DIR / "sd-turbo", "scheduler_config.json")
    cumprod = DDPMScheduler.from_config(sched).alphas_cumprod
    for t in (199, 999):
        assert alpha_bar(sched, t) == cumprod[t].item()
    assert alpha_bar(sched, 999) == pytest.approx(0.0046601, rel=1e-4)


@pytest.mark.parametrize("scope, expected", [("encoder+decoder", 18_506_960), ("decoder", 17_768_376)])
def test_info_counts_full_size_trainable_params_without_weights(capsys, scope, expected):
    assert main(["info", "--arch", "sd-turbo", "--vae-lora-scope", scope, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trainable_params"] == expected
    assert out["total_params"] > 900_000_000


def test_output_has_input_shape_and_range(tiny_base):
    from tiny_base import build_tiny_restorer

    model, _ = build_tiny_restorer(tiny_base)
    with torch.no_grad():
        y = model(torch.rand(2, 3, 64, 40) * 2 - 1)
    assert y.shape == (2, 3, 64, 40)
    assert y.min() >= -1 and y.max() <= 1


def test_forward_is_deterministic(tiny_base):
    from tiny_base import build_tiny_restorer

    model, _ = build_tiny_restorer(tiny_base)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_one_step_matches_the_x0_formula(tiny_base):
    from tiny_base import build_tiny_restorer

    model, _ = build_tiny_restorer(tiny_base)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        eps = model.unet(z, torch.tensor([999]), encoder_hidden_states=model.prompt_embeds).sample
        a = model.config.alpha_bar
        assert torch.allclose(model.denoise(z), (z - (1 - a) ** 0.5 * eps) / a ** 0.5, atol=1e-5)


def test_merged_lora_matches_adapters(tiny_base):
    from tiny_base import build_tiny_restorer

    model, _ = build_tiny_restorer(tiny_base)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        before = model(x)
        assert merge_lora(model.unet) > 0 and merge_lora(model.vae) > 0
        assert not any("lora_" in n for n, _ in model.named_parameters())
        after = model(x)
    assert torch.allclose(before, after, atol=1e-4), (before - after).abs().max()


def test_skip_dropout_only_acts_in_training(tiny_base):
    from tiny_base import build_tiny_restorer

    model, _ = build_tiny_restorer(tiny_base)
    model.skip_dropout = 0.3
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.eval()(x), model(x))
        torch.manual_seed(0)
        trained = model.train()(x)
    assert not torch.equal(trained, model.eval()(x))
