"""A tiny random-weight base with SD-Turbo's block types, saved in diffusers' folder layout.

Same classes and wiring as the real thing (4-level VAE with attention in the mid block, cross-attention UNet with
linear projections, CLIP text encoder and a byte-level tokenizer), only narrow, so the engine's real loading code
runs on it in well under a second.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.weights.base import CONFIG_DIR

TINY_SIZE = 64  # the tiny model's "comfortable" frame size: unet sample_size 8 * 8


def _scheduler_config() -> dict:
    return json.loads((CONFIG_DIR / "sd-turbo" / "scheduler_config.json").read_text())


def _write_tokenizer(folder: Path) -> int:
    """A CLIP tokenizer whose vocabulary is every byte symbol (with and without the end-of-word mark), no merges."""
    # GPT-2/CLIP byte-level alphabet: printable bytes stand for themselves, the rest are shifted past 255
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(shifted))]
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": i + len(symbols) for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))
    return len(vocab)


def make_tiny_base(folder: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    folder = Path(folder)
    vocab_size = _write_tokenizer(folder / "tokenizer")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                        projection_dim=32, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                                        pad_token_id=vocab_size - 1))
    text.save_pretrained(folder / "text_encoder")
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8)
    unet.save_pretrained(folder / "unet")
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=TINY_SIZE, scaling_factor=0.18215)
    vae.save_pretrained(folder / "vae")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "EulerDiscreteScheduler", **_scheduler_config()}))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def randomize_trainable(model, seed: int = 1, scale: float = 0.05) -> None:
    """Give LoRA B, skip convs and conv_in non-trivial values, as a trained checkpoint would have."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def build_tiny_restorer(base_folder: Path, prompt: str = "a clean render of a face", seed: int = 1):
    from engine.weights.base import encode_prompt, load_base
    from engine.weights.loading import build_restorer
    from engine.model import LoraSpec

    base = load_base(base_folder)
    torch.manual_seed(seed)  # peft's gaussian LoRA init draws from the global generator
    model = build_restorer(base, LoraSpec(), prompt_embeds=encode_prompt(base_folder, prompt))
    randomize_trainable(model, seed)
    return model.eval(), base


def write_tiny_checkpoint(base_folder: Path, out: Path, seed: int = 1) -> Path:
    from engine.weights.checkpoint import CheckpointInfo, save_checkpoint
    from engine.model import LoraSpec

    model, base = build_tiny_restorer(base_folder, seed=seed)
    save_checkpoint(out, model, CheckpointInfo(lora=LoraSpec(), restorer=model.config, base=str(base_folder),
                                               base_fingerprint=base.fingerprint,
                                               prompt="a clean render of a face", source="tests"))
    return out


DIFIX_VAE_TARGETS = ("conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out",
                     "skip_conv_1", "skip_conv_2", "skip_conv_3", "skip_conv_4", "to_k", "to_q", "to_v", "to_out.0")


def difix_vae(vae_config: dict, lora_rank: int):
    """A VAE wrapped the way Difix3D's src/model.py does it: skip convs on the decoder, then a peft adapter named
    'vae_skip' on every decoder module whose name ends in one of its targets (an explicit name list)."""
    from diffusers import AutoencoderKL
    from peft import LoraConfig

    vae = AutoencoderKL.from_config({k: v for k, v in vae_config.items() if k not in ("lora_rank", "gamma",
                                                                                      "ignore_skip")})
    # Difix hard-codes SD's (512, 512), (256, 512), (128, 512), (128, 256); these are the tiny VAE's
    for i, (cin, cout) in enumerate([(32, 32), (16, 32), (8, 32), (8, 16)], start=1):
        conv = torch.nn.Conv2d(cin, cout, kernel_size=1, bias=False)
        torch.nn.init.constant_(conv.weight, 1e-5)
        setattr(vae.decoder, f"skip_conv_{i}", conv)
    names = [n for n, _ in vae.named_modules() if "decoder" in n and any(n.endswith(t) for t in DIFIX_VAE_TARGETS)]
    vae.add_adapter(LoraConfig(r=lora_rank, init_lora_weights="gaussian", target_modules=names),
                    adapter_name="vae_skip")
    return vae


def make_tiny_difix(folder: Path, seed: int = 3, lora_rank: int = 4, gamma: float = 1.0) -> Path:
    """A tiny model in Difix's published layout, with the real key names: fine-tuned UNet, peft-wrapped decoder."""
    from safetensors.torch import save_file

    folder = make_tiny_base(Path(folder), seed=seed)
    from diffusers import UNet2DConditionModel

    g = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    with torch.no_grad():  # "fully fine-tuned": every weight moved a little
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    unet.save_pretrained(folder / "unet")
    config = {k: v for k, v in json.loads((folder / "vae" / "config.json").read_text()).items()}
    config.update(lora_rank=lora_rank, gamma=gamma, ignore_skip=False)
    torch.manual_seed(seed)
    vae = difix_vae(config, lora_rank)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "lora_B" in name or "skip_conv" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()},
              str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    (folder / "vae" / "config.json").write_text(json.dumps(config))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DifixPipeline"}))
    return folder


# model_index.json's `unet` entry in Difix-ref's layout: hub-side code (unet/unet_2d_condition.py), not diffusers'
DIFIX_REF_UNET_ENTRY = ["unet_2d_condition", "UNet2DConditionModel"]


def make_tiny_difix_ref(folder: Path, seed: int = 5, lora_rank: int = 4) -> Path:
    """A tiny model in Difix-ref's published layout (`nvidia/difix_ref`): Difix's, plus a model_index.json naming
    a hub-side UNet module, which sits in unet/. Its weights are a plain UNet2DConditionModel's."""
    folder = make_tiny_difix(Path(folder), seed=seed, lora_rank=lora_rank)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": ["pipeline_difix", "DifixPipeline"], "unet": DIFIX_REF_UNET_ENTRY,
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}))
    # stands in for the hub's multi-view UNet code; the engine must recognise it, never import it
    (folder / "unet" / "unet_2d_condition.py").write_text(
        'raise RuntimeError("the engine must not run hub-side code")\n')
    return folder
