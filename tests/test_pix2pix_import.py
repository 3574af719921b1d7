"""Importing img2img-turbo checkpoints gives the same images as img2img-turbo's own forward on the same weights."""

import pytest
import torch

from engine.weights.checkpoint import CheckpointError, read_info
from engine.cli import main
from engine.weights.loading import load_restorer
from engine.model import UNET_LORA_TARGETS, VAE_LORA_TARGETS, skip_conv_channels

PROMPT = "a sharp portrait render"


def _reference_pix2pix_turbo(base_folder, rank_unet=8, rank_vae=4, seed=3):
    """img2img-turbo's model as its code builds it: peft adapters on diffusers models, skip convs on the decoder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(base_folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(base_folder, subfolder="vae")
    for i, (cin, cout) in enumerate(skip_conv_channels(vae.config), start=1):
        conv = torch.nn.Conv2d(cin, cout, kernel_size=1, bias=False)
        torch.nn.init.constant_(conv.weight, 1e-5)
        setattr(vae.decoder, f"skip_conv_{i}", conv)
    vae.add_adapter(LoraConfig(r=rank_vae, init_lora_weights="gaussian", target_modules=list(VAE_LORA_TARGETS)),
                    adapter_name="vae_skip")
    unet.add_adapter(LoraConfig(r=rank_unet, init_lora_weights="gaussian", target_modules=list(UNET_LORA_TARGETS)))
    with torch.no_grad():  # "trained" weights: every LoRA B non-zero, skips and conv_in moved
        for m in (unet, vae):
            for n, p in m.named_parameters():
                if "lora" in n or "skip" in n or n.startswith("conv_in"):
                    p.add_(torch.randn_like(p) * 0.05)
    return unet, vae


def _reference_forward(unet, vae, base_folder, c_t):
    """img2img-turbo's Pix2Pix_Turbo.forward (deterministic branch) with its encoder/decoder forwards, written out,
    using the posterior mean where it samples."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(base_folder, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(base_folder, subfolder="text_encoder")
    ids = tok(PROMPT, max_length=tok.model_max_length, padding="max_length", truncation=True,
              return_tensors="pt").input_ids
    caption_enc = te(ids)[0]
    sched = DDPMScheduler.from_pretrained(base_folder, subfolder="scheduler")
    sched.set_timesteps(1)
    timesteps = torch.tensor([999]).long()

    enc, dec = vae.encoder, vae.decoder
    sample = enc.conv_in(c_t)
    l_blocks = []
    for down_block in enc.down_blocks:
        l_blocks.append(sample)
        sample = down_block(sample)
    sample = enc.conv_out(enc.conv_act(enc.conv_norm_out(enc.mid_block(sample))))
    moments = vae.quant_conv(sample)
    encoded_control = moments.chunk(2, dim=1)[0] * vae.config.scaling_factor
    model_pred = unet(encoded_control, timesteps, encoder_hidden_states=caption_enc).sample
    x_denoised = sched.step(model_pred, timesteps, encoded_control, return_dict=True).prev_sample
    sample = dec.conv_in(vae.post_quant_conv(x_denoised / vae.config.scaling_factor))
    sample = dec.mid_block(sample, None)
    skip_convs = [dec.skip_conv_1, dec.skip_conv_2, dec.skip_conv_3, dec.skip_conv_4]
    for idx, up_block in enumerate(dec.up_blocks):
        sample = sample + skip_convs[idx](l_blocks[::-1][idx] * 1)
        sample = up_block(sample, None)
    sample = dec.conv_out(dec.conv_act(dec.conv_norm_out(sample)))
    return sample.clamp(-1, 1)


def _save_pkl(unet, vae, path, rank_unet=8, rank_vae=4):
    sd = {"unet_lora_target_modules": list(UNET_LORA_TARGETS), "vae_lora_target_modules": list(VAE_LORA_TARGETS),
          "rank_unet": rank_unet, "rank_vae": rank_vae,
          "state_dict_unet": {k: v for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k},
          "state_dict_vae": {k: v for k, v in vae.state_dict().items() if "lora" in k or "skip" in k}}
    torch.save(sd, path)


def test_imported_checkpoint_restores_like_img2img_turbo(tiny_base, tmp_path):
    unet, vae = _reference_pix2pix_turbo(tiny_base)
    pkl = tmp_path / "model.pkl"
    _save_pkl(unet, vae, pkl)
    out = tmp_path / "imported.safetensors"
    assert main(["import-pix2pix-turbo", str(pkl), "--base", str(tiny_base), "--prompt", PROMPT,
                 "-o", str(out)]) == 0

    image01 = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = _reference_forward(unet.eval(), vae.eval(), tiny_base, image01)
        model, info = load_restorer(out)  # merged LoRA
        got = model(image01 * 2 - 1)  # our convention is [-1, 1]; the import records their [0, 1]
    assert info.restorer.input_range == "0,1" and info.lora.rank_unet == 8 and info.lora.rank_vae == 4
    assert (got - expected).abs().max() < 1e-4


def test_import_records_the_quirks(tiny_base, tmp_path):
    unet, vae = _reference_pix2pix_turbo(tiny_base)
    _save_pkl(unet, vae, tmp_path / "m.pkl")
    main(["import-pix2pix-turbo", str(tmp_path / "m.pkl"), "--base", str(tiny_base), "--prompt", PROMPT,
          "-o", str(tmp_path / "o.safetensors")])
    info = read_info(tmp_path / "o.safetensors")
    assert info.prompt == PROMPT and info.lora.alpha_unet == 8 and info.lora.alpha_vae == 8
    assert any("[0, 1]" in n for n in info.notes) and any("sampler" in n for n in info.notes)


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_run(tiny_base, tmp_path, capsys):
    path = tmp_path / "evil.pkl"
    torch.save({"rank_unet": Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pkl"):
        from engine.weights.pix2pix_import import import_pix2pix_turbo
        import_pix2pix_turbo(path, tmp_path / "o.safetensors", str(tiny_base), PROMPT)
    assert "pickled code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [{"rank_unet": 8}, [1, 2, 3]])
def test_foreign_pickle_is_refused_with_its_keys(tiny_base, tmp_path, content, capsys):
    path = tmp_path / "other.pkl"
    torch.save(content, path)
    assert main(["import-pix2pix-turbo", str(path), "--base", str(tiny_base), "--prompt", "x",
                 "-o", str(tmp_path / "o.safetensors")]) == 1
    assert "not a pix2pix-turbo checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_truncated_pickle_is_refused(tiny_base, tmp_path, capsys):
    unet, vae = _reference_pix2pix_turbo(tiny_base)
    _save_pkl(unet, vae, tmp_path / "m.pkl")
    cut = tmp_path / "cut.pkl"
    cut.write_bytes((tmp_path / "m.pkl").read_bytes()[:5000])
    assert main(["import-pix2pix-turbo", str(cut), "--base", str(tiny_base), "--prompt", "x",
                 "-o", str(tmp_path / "o.safetensors")]) == 1
    assert "cut.pkl" in capsys.readouterr().err
