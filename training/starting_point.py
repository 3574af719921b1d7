"""What a training run starts from: SD-Turbo (or `--base`) with a fresh LoRA, skip convs and conv_in to train, or,
with `--init WEIGHTS`, a restorer that already works (our checkpoint, `nvidia/difix`, a Difix folder) with a new
LoRA on top of it and nothing else trainable (engine/weights/lineage.py says why).

A fine-tune of Difix is a derivative of NVIDIA's non-commercial weights: it refuses to start until that licence is
accepted (`--accept-license` or the environment), before anything is loaded or written, and its checkpoints carry the
licence so the engine's gate applies to them as to Difix itself.

With `--reference` the restorer takes a reference photo (RestorerConfig.views = 2: the UNet's self-attention spans
frame and reference). From the base that is a new model anyway. An init must already take one (views 2: Difix-ref, or
our reference-trained weights): a one-view restorer's attention was trained over one image's tokens, and spanning two
changes what every self-attention layer computes, so the run would not start from the init (zeroing the new LoRA
would not give it back) and the lineage would be false; it is refused, as is a two-view init without `--reference`.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.model import LoraSpec, Pix2PixTurbo, RestorerConfig, alpha_bar
from engine.weights.checkpoint import CheckpointInfo


@dataclass
class Start:
    model: Pix2PixTurbo
    info: CheckpointInfo  # the metadata every checkpoint of the run gets
    base_fingerprint: str
    init_fingerprint: str  # "" without --init


def check_init_license(cfg) -> CheckpointInfo | None:
    """The init's recipe when its licence (if any) was accepted and it takes a reference exactly when the run trains
    with one; LicenseNotAccepted / ValueError (exit 2) naming it otherwise. None without --init."""
    if not cfg.init:
        return None
    from engine.weights.loading import check_license

    recipe = check_license(cfg.init, cfg.accept_license)
    views = recipe.restorer.views
    if cfg.reference and views == 1:
        raise ValueError(f"--reference needs an --init that takes a reference photo (views 2: nvidia/difix_ref, or "
                         f"weights trained with --reference); {cfg.init} restores each frame alone, and making its "
                         f"self-attention span a second view would change what it computes, so the fine-tune would "
                         f"not start from it. Train with --reference from the base (no --init), or drop --reference")
    if views == 2 and not cfg.reference:
        raise ValueError(f"{cfg.init} takes a reference photo beside each frame (views 2): fine-tune it with "
                         f"--reference (the pairs need reference photos)")
    return recipe


def build_start(cfg, source: str, log=print) -> Start:
    from engine.weights.base import encode_prompt, load_base

    # build_restorer is looked up on training.train when called, so a wrapper put there applies (the step tests
    # observe every block of the model it builds)
    from . import train as train_module

    lora = LoraSpec(rank_unet=cfg.rank_unet, rank_vae=cfg.rank_vae, vae_scope=cfg.vae_lora_scope)
    if not cfg.init:
        base = load_base(cfg.base)
        # the default recipe, with the reference view when the run trains with one
        config = (RestorerConfig(timestep=999, alpha_bar=alpha_bar(base.scheduler_config, 999), views=2)
                  if getattr(cfg, "reference", False) else None)
        model = train_module.build_restorer(base, lora, config, prompt_embeds=encode_prompt(base.folder, cfg.prompt))
        info = CheckpointInfo(lora=lora, restorer=model.config, base=base.name, base_fingerprint=base.fingerprint,
                              prompt=cfg.prompt, source=source)
        return Start(model, info, base.fingerprint, "")

    from engine.weights.lineage import lineage, start_from_init  # the init's licence is checked as it loads

    model, init_info = start_from_init(cfg.init, lora, cfg.base, cfg.accept_license)
    record = lineage(cfg.init, init_info, cfg.base)
    r = init_info.restorer
    log(f"fine-tuning {cfg.init} (fingerprint {record['fingerprint']}): its recipe (timestep {r.timestep}, input "
        f"{r.input_range}, skip gamma {r.skip_gamma}, UNet from {r.unet_source}, prompt {init_info.prompt!r}) with "
        f"a new LoRA (ranks {lora.rank_unet}/{lora.rank_vae}) as the only trained weights")
    info = CheckpointInfo(lora=lora, restorer=init_info.restorer, base=init_info.base,
                          base_fingerprint=init_info.base_fingerprint, prompt=init_info.prompt,
                          source=f"{source}, fine-tuned from {record['weights']}", license=init_info.license,
                          init=record)
    return Start(model, info, init_info.base_fingerprint, record["fingerprint"])
