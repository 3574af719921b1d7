"""The compile-variants benchmark's parts, on the tiny model and without compiling: fused QKV projections restore as
the unfused model does, the SDPA report names the kernel each attention runs, and a dry run writes its JSON."""
import copy
import json

import pytest
import torch


def fast_tiny(tiny_base, views: int = 1):
    from tiny_base import build_tiny_restorer

    from engine.benches.speed import merged
    from engine.fastpath import prepare
    from engine.model import Pix2PixTurbo, RestorerConfig

    model, _ = build_tiny_restorer(tiny_base)
    if views > 1:
        model = Pix2PixTurbo(model.unet, model.vae, model.prompt_embeds,
                             RestorerConfig(alpha_bar=model.config.alpha_bar, views=views)).eval()
    return prepare(merged(model), torch.device("cpu"))


def frames(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_fused_qkv_restores_as_the_unfused_model_with_the_same_weights(tiny_base):
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from engine.fastpath import fuse_qkv

    model = fast_tiny(tiny_base)
    fused = copy.deepcopy(model)
    assert fuse_qkv(fused.unet) == 8  # 4 transformer blocks, self- and cross-attention each
    x = frames()
    with torch.inference_mode():
        assert (fused(x) - model(x)).abs().max() < 1e-5
    assert sum(p.numel() for p in fused.parameters()) == sum(p.numel() for p in model.parameters())
    attn1 = model.unet.mid_block.attentions[0].transformer_blocks[0].attn1
    attn2 = model.unet.mid_block.attentions[0].transformer_blocks[0].attn2
    fused1 = fused.unet.mid_block.attentions[0].transformer_blocks[0].attn1
    fused2 = fused.unet.mid_block.attentions[0].transformer_blocks[0].attn2
    assert torch.equal(fused1.to_qkv.weight, torch.cat([attn1.to_q.weight, attn1.to_k.weight, attn1.to_v.weight]))
    assert torch.equal(fused2.to_kv.weight, torch.cat([attn2.to_k.weight, attn2.to_v.weight]))
    assert not hasattr(fused1, "to_q") and torch.equal(fused2.to_q.weight, attn2.to_q.weight)
    vae_attentions = [m for m in fused.vae.modules() if isinstance(m, Attention)]
    assert vae_attentions and all(type(m.processor) is AttnProcessor2_0 and hasattr(m, "to_q")
                                  for m in vae_attentions)  # the VAE's attention is left alone


def test_fused_qkv_keeps_cross_view_attention_over_the_reference(tiny_base):
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    from engine.fastpath import fuse_qkv
    from engine.model import CrossViewAttnProcessor

    model = fast_tiny(tiny_base, views=2)
    fused = copy.deepcopy(model)
    fuse_qkv(fused.unet)
    x, reference = frames(), frames(1).flip(-1)
    with torch.inference_mode():
        expected = model(x, reference=reference)
        assert (fused(x, reference=reference) - expected).abs().max() < 1e-5
        # the reference matters to this output, so the comparison above saw the cross-view mixing
        assert (model(x, reference=frames(1)) - expected).abs().max() > 1e-3
    attn1 = fused.unet.mid_block.attentions[0].transformer_blocks[0].attn1
    assert isinstance(attn1.processor, CrossViewAttnProcessor)
    assert isinstance(attn1.processor.attend, FusedAttnProcessor2_0)


def test_fusing_refuses_unmerged_lora_and_a_second_fuse(tiny_base):
    from tiny_base import build_tiny_restorer

    from engine.fastpath import fuse_qkv, use_sdpa

    unmerged, _ = build_tiny_restorer(tiny_base)
    use_sdpa(unmerged)
    with pytest.raises(ValueError, match="merge the LoRA"):  # fusing peft's base weights would drop the adapters
        fuse_qkv(unmerged.unet)
    model = fast_tiny(tiny_base)
    fuse_qkv(model.unet)
    with pytest.raises(ValueError, match="fused already"):
        fuse_qkv(model.unet)


def test_the_sdpa_report_names_the_kernel_each_attention_runs(tiny_base):
    from diffusers.models.attention_processor import Attention
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from engine.fastpath import attention_kernels

    model = fast_tiny(tiny_base)
    calls = attention_kernels(model, frames(1))
    attentions = [n for n, m in model.named_modules() if isinstance(m, Attention)]
    assert sorted(c.module for c in calls) == sorted(attentions)  # each attention once, VAE's and UNet's
    assert {c.kernel for c in calls} == {"flash"}  # this torch's CPU flash kernel takes every head here
    assert {c.module for c in calls if c.cross} == {n for n in attentions if n.endswith("attn2")}
    vae = next(c for c in calls if c.module == "vae.decoder.mid_block.attentions.0")
    assert vae.inputs[0].shape == (1, 1, 64, 32)  # one head as wide as the VAE's mid block: 8 x 8 tokens
    with sdpa_kernel([SDPBackend.MATH]):  # what the dispatcher is told changes what the report says
        assert {c.kernel for c in attention_kernels(model, frames(1))} == {"math"}


def test_variant_names_are_checked():
    from engine.benches.compile_variants import main, parse_variants

    assert [v.name for v in parse_variants("baseline, fused_qkv")] == ["baseline", "fused_qkv"]
    all_ = parse_variants("all")[0]
    assert all_.fused_qkv and all_.inductor == {"freezing": True, "conv_1x1_as_mm": True,
                                                "coordinate_descent_tuning": True}
    with pytest.raises(ValueError, match="unknown variant.*max_autotune.*choose from baseline, freezing"):
        parse_variants("baseline,max_autotune")
    with pytest.raises(ValueError, match="twice"):
        parse_variants("baseline,baseline")
    with pytest.raises(SystemExit) as exit_:
        main(["--variants", "fast"])
    assert exit_.value.code == 2


def test_help_names_every_variant(capsys):
    from engine.benches.compile_variants import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("baseline", "freezing", "conv1x1mm", "coordesc", "fused_qkv", "--budget-s"))


def test_an_eager_dry_run_writes_the_json_and_the_table(tiny_base, tmp_path, capsys):
    from engine.benches.compile_variants import main

    out = tmp_path / "variants.json"
    assert main(["--base", str(tiny_base), "--device", "cpu", "--size", "64", "--batch", "2", "--repeats", "2",
                 "--variants", "baseline,fused_qkv", "--compile", "off", "--out", str(out), "--json"]) == 0
    printed = capsys.readouterr()
    r = json.loads(out.read_text())
    assert json.loads(printed.out) == r
    assert r["device"] == "cpu" and r["batch"] == 2 and r["compile_mode"] is None and r["tolerance"] == 1e-4
    assert [v["variant"] for v in r["variants"]] == ["baseline", "fused_qkv"]
    for v in r["variants"]:
        assert v["ms_per_frame"] > 0 and v["equal"] and v["max_diff"] < 1e-5 and v["compile_s"] is None
    assert [v["fused_attentions"] for v in r["variants"]] == [0, 8]  # the fused variant ran fused
    vae = next(a for a in r["attention"] if a["component"] == "vae")
    assert vae["picked"] == "flash" and vae["q"] == [2, 1, 64, 32] and len(vae["modules"]) == 2
    assert vae["backends"]["math"]["ms"] > 0 and "why" in vae["backends"]["efficient"]  # no CPU kernel
    assert "fused_qkv" in printed.err and "picked" in printed.err  # the table, beside the JSON


def test_variants_past_the_time_budget_are_skipped_and_named(tiny_base, tmp_path, capsys):
    from engine.benches.compile_variants import main

    out = tmp_path / "variants.json"
    assert main(["--base", str(tiny_base), "--device", "cpu", "--size", "64", "--repeats", "1", "--compile", "off",
                 "--variants", "baseline,all", "--budget-s", "0", "--out", str(out)]) == 0
    r = json.loads(out.read_text())  # building the model already spent the budget: nothing is timed
    assert [v["variant"] for v in r["variants"]] == ["baseline", "all"]
    assert all(v["skipped"].startswith("budget") and "ms_per_frame" not in v for v in r["variants"])
    assert "all        skipped, budget" in capsys.readouterr().out
