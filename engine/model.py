"""The single-step restorer (pix2pix-turbo on SD-Turbo), readable top to bottom.

    image --VAE encoder--> latent mean * scaling      (keeping the input of each encoder down block: the taps)
          --UNet at t=999--> epsilon --> x0 = (z - sqrt(1 - a) * eps) / sqrt(a)
          --VAE decoder, adding skip_conv_i(tap * gamma) before up block i--> clamp(-1, 1)

With a reference view (Difix-ref, views = 2) the frame's and the reference's latents go through the UNet side by side,
its self-attention spanning both (CrossViewAttnProcessor); only the frame's x0 is decoded.

The traversal of encoder and decoder is written here, using diffusers' blocks, instead of replacing their forwards.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

# img2img-turbo's target lists. peft matches a module whose name equals an entry or ends with "." + entry, so
# "conv" also wraps every UNet/VAE up- and down-sampler conv; the published parameter counts include them.
UNET_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut", "conv_out",
                     "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj")
VAE_LORA_TARGETS = ("conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out",
                    "skip_conv_1", "skip_conv_2", "skip_conv_3", "skip_conv_4",
                    "to_k", "to_q", "to_v", "to_out.0")
UNET_ADAPTER = "default"
VAE_ADAPTER = "vae_skip"
VAE_SCOPES = ("encoder+decoder", "decoder")
SKIP_CONV_INIT = 1e-5


@dataclass
class LoraSpec:
    """Where LoRA goes and how big it is. Defaults are the product recipe (18,506,960 trainable at full size)."""
    rank_unet: int = 16
    rank_vae: int = 8
    # img2img-turbo never sets lora_alpha, so peft's default (8) applies; it is not stored in their checkpoints.
    alpha_unet: float = 8.0
    alpha_vae: float = 8.0
    unet_targets: tuple = UNET_LORA_TARGETS
    vae_targets: tuple = VAE_LORA_TARGETS
    vae_scope: str = "encoder+decoder"
    # Difix and img2img-turbo wrap the skip convs in LoRA too (their names are in the VAE target list)
    skip_lora: bool = True

    def __post_init__(self):
        if self.vae_scope not in VAE_SCOPES:
            raise ValueError(f"vae_scope must be one of {VAE_SCOPES}, not {self.vae_scope!r}")
        if self.rank_unet < 0 or self.rank_vae < 1:
            raise ValueError(f"LoRA ranks must be rank_unet >= 0 (0: no UNet LoRA) and rank_vae >= 1; got "
                             f"{self.rank_unet}, {self.rank_vae}")
        self.unet_targets, self.vae_targets = tuple(self.unet_targets), tuple(self.vae_targets)
        if not self.skip_lora:
            self.vae_targets = tuple(t for t in self.vae_targets if not t.startswith("skip_conv_"))


def skip_conv_channels(vae_config) -> list[tuple[int, int]]:
    """(in, out) channels of skip_conv_1..4, derived from the VAE config.

    Encoder tap i is the input of down block i: conv_in's output, then each block's output but the last.
    Decoder up block i receives the mid block's output (the deepest width), then each up block's output.
    Skip i joins the reversed taps to the up-block inputs.
    """
    ch = list(vae_config["block_out_channels"])
    taps = [ch[0]] + ch[:-1]
    rev = ch[::-1]
    up_inputs = [rev[0]] + rev[:-1]
    return list(zip(taps[::-1], up_inputs))


def alpha_bar(scheduler_config, timestep: int) -> float:
    """Cumulative alpha of the base's noise schedule at `timestep`, in float32 as diffusers' schedulers compute it
    (the models were trained with that rounding: float64 moves Difix's output by 5e-6)."""
    n = scheduler_config["num_train_timesteps"]
    start, end = scheduler_config["beta_start"], scheduler_config["beta_end"]
    kind = scheduler_config.get("beta_schedule", "linear")
    if kind == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float32) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float32)
    else:
        raise ValueError(f"unsupported beta_schedule {kind!r} in the base's scheduler config")
    return torch.cumprod(1.0 - betas, 0)[timestep].item()


def add_skip_convs(vae: nn.Module) -> None:
    """Attach the four 1x1 encoder->decoder convs to vae.decoder (where img2img-turbo keeps them, so keys match)."""
    for i, (cin, cout) in enumerate(skip_conv_channels(vae.config), start=1):
        conv = nn.Conv2d(cin, cout, kernel_size=1, bias=False, device=vae.decoder.conv_in.weight.device)
        if conv.weight.device.type != "meta":
            nn.init.constant_(conv.weight, SKIP_CONV_INIT)
        setattr(vae.decoder, f"skip_conv_{i}", conv)


def add_lora(unet: nn.Module, vae: nn.Module, spec: LoraSpec) -> None:
    from peft import LoraConfig

    if spec.rank_unet:
        unet.add_adapter(LoraConfig(r=spec.rank_unet, lora_alpha=spec.alpha_unet, init_lora_weights="gaussian",
                                    target_modules=list(spec.unet_targets)), adapter_name=UNET_ADAPTER)
    vae_targets = list(spec.vae_targets)
    if spec.vae_scope == "decoder":
        alt = "|".join(re.escape(t) for t in vae_targets)
        vae_targets = rf"decoder\.(?:.*\.)?(?:{alt})"
    vae.add_adapter(LoraConfig(r=spec.rank_vae, lora_alpha=spec.alpha_vae, init_lora_weights="gaussian",
                               target_modules=vae_targets), adapter_name=VAE_ADAPTER)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base weight and drop the wrappers, so inference pays nothing for them."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in wrapped:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    # diffusers remembers that adapters were added; after merging there are none left to manage, and a new adapter
    # (a fine-tune's, weights/lineage.py) starts afresh: peft warns of "multiple adapters" while the attribute exists.
    if hasattr(model, "_hf_peft_config_loaded"):
        model._hf_peft_config_loaded = False
    if "peft_config" in vars(model):
        del model.peft_config
    return len(wrapped)


UNET_SOURCES = ("base", "weights")


@dataclass
class RestorerConfig:
    """How one forward runs. A recipe (pix2pix-turbo, Difix, ours) is this plus a LoraSpec and a prompt."""
    timestep: int = 999
    alpha_bar: float = 0.00466009508818388  # sd-turbo's scaled_linear schedule at t=999 (float32)
    # img2img-turbo feeds the condition image to the VAE encoder in [0, 1]; our own training uses the VAE's [-1, 1].
    input_range: str = "-1,1"
    skip_gamma: float = 1.0  # 0 drops the skips (Difix's ignore_skip): skip_conv(0) adds nothing anyway
    # "base": the base's UNet (+ LoRA and conv_in from the weights); "weights": a fully fine-tuned UNet shipped
    # with the weights (Difix)
    unet_source: str = "base"
    # 2: each frame comes with a reference view (Difix-ref, reference-trained weights); 1: frames alone
    views: int = 1
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.views not in (1, 2):
            raise ValueError(f"views must be 1 (frames alone) or 2 (frame and reference), not {self.views!r}")
        if self.input_range not in ("-1,1", "0,1"):
            raise ValueError(f"input_range must be '-1,1' or '0,1', not {self.input_range!r}")
        if self.unet_source not in UNET_SOURCES:
            raise ValueError(f"unet_source must be one of {UNET_SOURCES}, not {self.unet_source!r}")


class CrossViewAttnProcessor:
    """Self-attention over all views of a sample at once: Difix-ref's reference mixing (Difix3D src/mv_unet.py).

    The UNet's batch holds each sample's views one after another, "(b v)": frame, reference. Here attn1 sees the
    tokens of every view of a sample together, "(b v) n d -> b (v n) d", so the frame's tokens attend to the
    reference's; resnets, cross-attention to the prompt and the feed-forward stay per view. Difix3D gets this by
    replacing BasicTransformerBlock.forward for every UNet in the process; as a processor on one UNet's attn1 modules
    it belongs to the model that needs it, and a plain restorer beside it is untouched.
    """

    def __init__(self, views: int):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.views = views
        self.attend = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        bv, n, d = hidden_states.shape
        if bv % self.views:
            raise ValueError(f"cross-view attention over {self.views} views got a batch of {bv} token sets")
        joint = hidden_states.reshape(bv // self.views, self.views * n, d)
        out = self.attend(attn, joint, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return out.reshape(bv, n, d)


def enable_cross_view(unet: nn.Module, views: int = 2) -> int:
    """Give this UNet's self-attention layers (each transformer block's attn1) cross-view attention; returns how
    many. Only this UNet changes: no diffusers class is patched."""
    from diffusers.models.attention import BasicTransformerBlock

    blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    if not blocks:
        raise ValueError("this UNet has no transformer blocks: no self-attention to span the reference view")
    for block in blocks:
        block.attn1.set_processor(CrossViewAttnProcessor(views))
    return len(blocks)


class Pix2PixTurbo(nn.Module):
    """Image in [-1, 1] (N, 3, H, W), H and W multiples of 8 -> restored image in [-1, 1]. With config.views == 2
    each image needs a reference view of the same size (or its latent, `encode_reference`)."""

    def __init__(self, unet: nn.Module, vae: nn.Module, prompt_embeds: torch.Tensor, config: RestorerConfig):
        super().__init__()
        self.unet, self.vae, self.config = unet, vae, config
        if config.views > 1:
            enable_cross_view(unet, config.views)
        self.register_buffer("prompt_embeds", prompt_embeds.detach().clone(), persistent=False)
        self.skip_dropout = 0.0  # set by the trainer; active only in train mode
        self.gradient_checkpointing = False  # the VAE blocks' activations are recomputed in backward when set
        # True for a fine-tune of a restorer that works (`--init`): its conv_in and skip convs are the init's and
        # stay frozen, so zeroing the new LoRA gives back the init exactly (weights/lineage.py)
        self.lora_only = False

    def _block(self, block, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    @property
    def scaling_factor(self) -> float:
        return self.vae.config.scaling_factor

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.config.input_range == "0,1":
            x = (x + 1) * 0.5
        enc = self.vae.encoder
        h = enc.conv_in(x)
        taps = []
        for block in enc.down_blocks:
            taps.append(h)
            h = self._block(block, h)
        h = enc.conv_out(enc.conv_act(enc.conv_norm_out(self._block(enc.mid_block, h))))
        moments = self.vae.quant_conv(h) if self.vae.quant_conv is not None else h
        mean = moments.chunk(2, dim=1)[0]  # the posterior mean: deterministic, no sampling
        return mean * self.scaling_factor, taps

    def denoise(self, z: torch.Tensor) -> torch.Tensor:
        t = torch.full((z.shape[0],), self.config.timestep, device=z.device, dtype=torch.long)
        cond = self.prompt_embeds.to(device=z.device, dtype=z.dtype).expand(z.shape[0], -1, -1)
        eps = self.unet(z, t, encoder_hidden_states=cond, return_dict=False)[0]
        a = self.config.alpha_bar
        return (z - (1.0 - a) ** 0.5 * eps) / a ** 0.5

    def decode(self, z0: torch.Tensor, taps: list[torch.Tensor]) -> torch.Tensor:
        dec = self.vae.decoder
        z0 = z0 / self.scaling_factor
        if self.vae.post_quant_conv is not None:
            z0 = self.vae.post_quant_conv(z0)
        h = self._block(dec.mid_block, dec.conv_in(z0))
        for i, (block, tap) in enumerate(zip(dec.up_blocks, reversed(taps)), start=1):
            if self.config.skip_gamma:
                tap = F.dropout(tap, p=self.skip_dropout, training=self.training) if self.skip_dropout else tap
                h = h + getattr(dec, f"skip_conv_{i}")(tap * self.config.skip_gamma)
            h = self._block(block, h)
        return dec.conv_out(dec.conv_act(dec.conv_norm_out(h))).clamp(-1, 1)

    def encode_reference(self, reference: torch.Tensor) -> torch.Tensor:
        """The reference view's latent. It is never decoded, so its taps are not kept; a run computes it once."""
        return self.encode(reference)[0]

    def forward(self, x: torch.Tensor, reference: torch.Tensor | None = None,
                reference_latent: torch.Tensor | None = None) -> torch.Tensor:
        z, taps = self.encode(x)
        if self.config.views == 1:
            if reference is not None or reference_latent is not None:
                raise ValueError("this restorer takes no reference photo (views = 1: it restores frames alone)")
            return self.decode(self.denoise(z), taps)
        if reference_latent is None:
            if reference is None:
                raise ValueError("this restorer needs a reference photo beside each frame (views = 2)")
            if reference.shape[-2:] != x.shape[-2:]:
                raise ValueError(f"the reference is {tuple(reference.shape[-2:])}, the frame {tuple(x.shape[-2:])}: "
                                 f"they must be the same size")
            reference_latent = self.encode_reference(reference)
        if reference_latent.shape[1:] != z.shape[1:] or len(reference_latent) not in (1, len(z)):
            raise ValueError(f"reference latent {tuple(reference_latent.shape)} does not fit the frames' "
                             f"{tuple(z.shape)}")
        # (b, v, c, h, w), view 0 the frame, view 1 the reference; the UNet sees them as "(b v)", in the memory
        # layout the encoder gave z (channels_last on GPUs, and oneDNN's choice on CPUs): conv kernels follow it
        views = torch.stack([z, reference_latent.to(z.dtype).expand_as(z)], dim=1)
        layout = torch.channels_last if not z.is_contiguous() and z.is_contiguous(
            memory_format=torch.channels_last) else torch.contiguous_format
        x0 = self.denoise(views.flatten(0, 1).contiguous(memory_format=layout)).unflatten(0, views.shape[:2])
        # the VAE works per view, so decoding the frame's view alone (with its own taps) is exact
        return self.decode(x0[:, 0], taps)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """img2img-turbo's rule: every LoRA matrix, the UNet's conv_in and the four skip convs; with `lora_only`,
        the LoRA matrices alone."""
        params = [p for n, p in self.named_parameters() if "lora_" in n]
        if self.lora_only:
            return params
        params += list(self.unet.conv_in.parameters())
        for i in range(1, 5):
            params += [p for n, p in getattr(self.vae.decoder, f"skip_conv_{i}").named_parameters() if "lora_" not in n]
        return params

    def set_trainable(self) -> None:
        self.requires_grad_(False)
        for p in self.trainable_parameters():
            p.requires_grad_(True)
