"""A tiny random-weight base with SD-Turbo's block types, saved in diffusers' folder layout.

Same classes and wiring as the real thing (4-level VAE with attention in the mid block, cross-attention UNet with
linear projections, CLIP text encoder and a byte-level tokenizer), only narrow, so the engine's real loading code
runs on it in well under a second.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.base import CONFIG_DIR

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
    from engine.base import encode_prompt, load_base
    from engine.loading import build_restorer
    from engine.model import LoraSpec

    base = load_base(base_folder)
    torch.manual_seed(seed)  # peft's gaussian LoRA init draws from the global generator
    model = build_restorer(base, LoraSpec(), prompt_embeds=encode_prompt(base_folder, prompt))
    randomize_trainable(model, seed)
    return model.eval(), base


def write_tiny_checkpoint(base_folder: Path, out: Path, seed: int = 1) -> Path:
    from engine.checkpoint import CheckpointInfo, save_checkpoint
    from engine.model import LoraSpec

    model, base = build_tiny_restorer(base_folder, seed=seed)
    save_checkpoint(out, model, CheckpointInfo(lora=LoraSpec(), restorer=model.config, base=str(base_folder),
                                               base_fingerprint=base.fingerprint,
                                               prompt="a clean render of a face", source="tests"))
    return out
