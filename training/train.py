"""`python -m training train`: fine-tune the restorer on pairs, top to bottom.

Recipe (defaults): L1 x0.5 + LPIPS-VGG x1.0 + Gram x0.07; AdamW lr 5e-5, a linear warmup of a tenth of the run (at
most 500 steps; `--warmup N` sets it) then linear decay to 0 (a fixed 500 left a 6-step run at 6/500 of its rate);
skip dropout 0.3; 512x512 random crops and flips; mixed precision through Accelerate's autocast with the trainable
parameters and AdamW's state kept in fp32 (img2img-turbo casts the weights themselves to fp16, which breaks
training). Multi-GPU: `accelerate launch -m training train ...`; each process takes its own micro-batches.

The run folder holds engine checkpoints (`checkpoint-STEP.safetensors`, `latest.safetensors`), the resumable state
(`state.pt`: trainable weights, optimizer, scheduler, step, RNG), TensorBoard logs (`logs/`), the same losses as
JSON lines (`losses.jsonl`, what the report plots), sample grids and `config.json`: every setting of the run with the
fingerprints of its base, pairs and VGG weights (`run_record.py`; a resume with settings that change what a step
computes is refused, naming them). Ctrl-C stops at the end of the current step, saves the state there and raises
KeyboardInterrupt; running the same command again continues exactly.

`--init WEIGHTS` starts from a restorer that already works instead of SD-Turbo (starting_point.py); `--synthetic-pairs
DIR` mixes a share of synthetic pairs into the training batches (mixed_pairs.py). `--reference` trains a restorer
that takes a reference photo (RestorerConfig.views = 2, as Difix-ref): each sample brings a photo of the same person
(references.py) and the UNet's self-attention spans both views; no new parameters, the same LoRA.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.atomic import atomic_path, write_bytes_atomic
from engine.weights.checkpoint import save_checkpoint
from engine.weights.loading import build_restorer  # noqa: F401 (starting_point builds through this name)

from .dataset import PairDataset, batches
from .memory_plan import measure_and_plan
from .mixed_pairs import MixedPairs
from .perceptual import PerceptualLoss
from .run_record import check_resume, pairs_fingerprint, read_record, run_record, weights_fingerprint
from .starting_point import build_start, check_init_license

DEFAULT_PROMPT = "a sharp, detailed, clean render of a face"


@dataclass
class TrainConfig:
    pairs: str
    out: str
    base: str | None = None
    steps: int = 10000
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 5e-5
    warmup: int | None = None  # None: a tenth of the steps, at most MAX_WARMUP (effective_warmup)
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    lambda_l1: float = 0.5
    lambda_lpips: float = 1.0
    lambda_gram: float = 0.07
    skip_dropout: float = 0.3
    size: int = 512
    mixed_precision: str = "bf16"  # "bf16", "fp16" or "no"
    gradient_checkpointing: bool | None = None  # None: on when one measured step says the batch would not fit
    region_weight: float = 0.0  # L1 weight = 1 + region_weight * damage mask (mouth, eyes count more); 0 = plain L1
    workers: int = 2  # DataLoader processes decoding and cropping pairs while the model trains
    seed: int = 0
    prompt: str = DEFAULT_PROMPT
    rank_unet: int = 16
    rank_vae: int = 8
    vae_lora_scope: str = "encoder+decoder"
    save_every: int = 500
    sample_every: int = 250
    eval_every: int = 500
    eval_count: int = 8
    vgg_weights: str | None = None
    stop_after: int | None = None  # end this invocation after N steps (time-limited or preemptible jobs); resume later
    random_vgg: bool = False  # tests only
    init: str | None = None  # a restorer that works to fine-tune (checkpoint, nvidia/difix, Difix folder)
    accept_license: bool = False  # of the init's weights (NVIDIA's for Difix)
    synthetic_pairs: str | None = None  # a pairs folder mixed into training batches at synthetic_share
    synthetic_share: float = 0.3
    reference: bool = False  # train a 2-view restorer: every sample with a reference photo (references.py)


MAX_WARMUP = 500


def effective_warmup(cfg: TrainConfig, recorded: dict | None = None) -> int:
    """--warmup when given; else the warmup the run started with (a resume with more --steps keeps it, rather than
    dropping a run already at full rate back into a longer warmup); else a tenth of --steps, at most MAX_WARMUP
    (0 for runs under 10 steps: they train at the full rate from the first step)."""
    if cfg.warmup is not None:
        return cfg.warmup
    if recorded and recorded.get("warmup_steps") is not None:
        return int(recorded["warmup_steps"])
    return min(MAX_WARMUP, cfg.steps // 10)


def schedule_text(lr: float, warmup: int, steps: int) -> str:
    return f"lr {lr:g}, warmup {warmup} of {steps} steps, then linear decay to 0"


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def restore(model, x, reference=None):
    """The model's forward, with the reference view when the run trains with one."""
    return model(x) if reference is None else model(x, reference=reference)


def recipe_loss(pred, target, perceptual: PerceptualLoss, cfg: TrainConfig, mask=None) -> tuple[torch.Tensor, dict]:
    """`mask` (N, 1 or 2, H, W): channel 0 the damage weight (--region-weight), channel 1 the validity (PairDataset:
    0 where `check-pairs --align` found no trustworthy target). Invalid pixels weigh 0 in L1, and the perceptual
    terms see the (detached) prediction there instead of the target: LPIPS and Gram look at whole neighbourhoods and
    cannot drop single pixels, but a target equal to the prediction asks for no change, and whatever the invalid
    pixels held (a warp's smeared edge, something the render does not show) never reaches the loss."""
    valid = mask[:, 1:2].float() if mask is not None and mask.shape[1] > 1 else None
    if valid is not None and bool((valid < 1).any()):
        guess = pred.detach().float()
        target = (guess + valid * (target.float() - guess)).to(target.dtype)
    else:
        valid = None  # all valid: the plain loss, as before validity masks existed
    weight = 1 + cfg.region_weight * mask[:, :1].float() if cfg.region_weight and mask is not None else None
    if valid is not None:
        weight = valid if weight is None else weight * valid
    if weight is not None:
        # normalised by the mean weight, so the L1 term keeps its scale against LPIPS and Gram whatever the option
        l1 = ((pred.float() - target.float()).abs() * weight).mean() / weight.mean().clamp_min(1e-6)
    else:
        l1 = F.l1_loss(pred.float(), target.float())
    lpips, gram = perceptual(pred, target)
    total = cfg.lambda_l1 * l1 + cfg.lambda_lpips * lpips.float() + cfg.lambda_gram * gram.float()
    return total, {"l1": l1.item(), "lpips": lpips.item(), "gram": gram.item(), "loss": total.item()}


@torch.no_grad()
def held_out_loss(model, data: PairDataset, perceptual, cfg: TrainConfig, device, count: int) -> dict:
    was_training = model.training
    model.eval()
    sums: dict = {}
    n = min(count, len(data))
    for i in range(n):
        x, y, m, *ref = data.sample(i, None)
        r = ref[0][None].to(device) if ref else None
        _, parts = recipe_loss(restore(model, x[None].to(device), r), y[None].to(device), perceptual, cfg,
                               m[None].to(device))
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v / n
    model.train(was_training)
    return sums


def save_sample_grid(path: Path, model, data: PairDataset, device, count: int = 4) -> None:
    """input | [reference |] restored | target, one row per held-out pair."""
    import cv2

    rows = []
    with torch.no_grad():
        was_training = model.training
        model.eval()
        for i in range(min(count, len(data))):
            x, y, _, *ref = data.sample(i, None)
            pred = restore(model, x[None].to(device), ref[0][None].to(device) if ref else None)[0].float().cpu()
            rows.append(torch.cat([x, *ref, pred, y], dim=2))
        model.train(was_training)
    grid = ((torch.cat(rows, dim=1).permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


def train(cfg: TrainConfig, log=print) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm

    init_recipe = check_init_license(cfg)  # before anything is loaded or written
    if init_recipe is not None and cfg.prompt != DEFAULT_PROMPT:
        raise ValueError(f"--prompt does not apply with --init: the run keeps the prompt embedding of {cfg.init} "
                         f"({init_recipe.prompt!r})")
    out = Path(cfg.out)
    acc = Accelerator(mixed_precision=cfg.mixed_precision, log_with="tensorboard", project_dir=str(out))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if acc.num_processes != launched:  # each process would train alone on the same pairs and write the same run
        raise ValueError(f"launched as {launched} processes (WORLD_SIZE) but accelerate runs {acc.num_processes}: "
                         f"on a machine without a GPU, launch with `accelerate launch --cpu` (or set "
                         f"ACCELERATE_USE_CPU=1)")
    set_seed(cfg.seed)
    train_data = PairDataset(cfg.pairs, "train", cfg.size, reference=cfg.reference)
    if cfg.region_weight:
        train_data.require_masks()
    try:
        test_data = PairDataset(cfg.pairs, "test", cfg.size, reference=cfg.reference)
    except ValueError:
        test_data = train_data  # no held-out split: report on training pairs, and say so
        log("no 'test' split in the pairs; held-out numbers use training pairs")

    for data in {id(d): d for d in (train_data, test_data)}.values():  # the log keeps what a warning may not
        for name, reason in data.skipped.items():
            log(f"skipped pair {name} (flagged by check-pairs: {reason})")
        for name, reason in data.without_reference.items():
            log(f"skipped pair {name} ({reason})")

    synthetic = (PairDataset(cfg.synthetic_pairs, "train", cfg.size, reference=cfg.reference)
                 if cfg.synthetic_pairs else None)
    if synthetic is not None:
        log(f"mixing {len(synthetic)} synthetic pairs from {cfg.synthetic_pairs} into the {len(train_data)} "
            f"training pairs: {cfg.synthetic_share:.0%} of every batch's samples")

    start = build_start(cfg, f"splat-restore training in {out}", log)
    model = start.model
    model.set_trainable()
    model.skip_dropout = cfg.skip_dropout
    perceptual = PerceptualLoss(cfg.vgg_weights, random_init=cfg.random_vgg).to(acc.device)
    state_path, loss_log = out / "state.pt", out / "losses.jsonl"
    warmup = effective_warmup(cfg, read_record(out / "config.json") if state_path.is_file() else None)
    record = run_record(cfg, base_fingerprint=start.base_fingerprint, vgg_fingerprint=weights_fingerprint(perceptual),
                        pairs_fingerprint=pairs_fingerprint(train_data, test_data), processes=acc.num_processes,
                        warmup_steps=warmup, init_fingerprint=start.init_fingerprint,
                        synthetic_fingerprint=pairs_fingerprint(synthetic) if synthetic else "")
    if state_path.is_file():  # before anything is loaded or written: a refused resume leaves the run as it was
        check_resume(out / "config.json", record, log)
    log(f"schedule: {schedule_text(cfg.lr, warmup, cfg.steps)}")
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, cfg.steps))
    model, optimizer = acc.prepare(model, optimizer)
    core = acc.unwrap_model(model)
    checkpointing = cfg.gradient_checkpointing
    if checkpointing is None:
        def one_step_loss(x):
            with acc.autocast():  # a reference costs what any other view does: the frame itself stands in
                return recipe_loss(restore(model, x, x if cfg.reference else None), x, perceptual, cfg)[0]
        model.train()
        checkpointing = measure_and_plan(core, one_step_loss, acc.device, cfg.batch_size, cfg.size, log)
    if checkpointing:
        core.unet.enable_gradient_checkpointing()
        core.gradient_checkpointing = True
    info = start.info

    step = 0
    if state_path.is_file():
        step = load_state(state_path, core, optimizer, scheduler)
        log(f"resumed {out} at step {step}")
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out / "config.json", json.dumps(record, indent=1).encode())
        trim_loss_log(loss_log, step)
        if step == 0:  # the untrained model's held-out loss: the curve's starting point
            append_loss_log(loss_log, {"step": 0} | {f"test/{k}": v for k, v in
                                                     held_out_loss(core, test_data, perceptual, cfg, acc.device,
                                                                   cfg.eval_count).items()})
    acc.init_trackers("logs")

    stop_at = min(cfg.steps, step + cfg.stop_after) if cfg.stop_after else cfg.steps
    # micro-batch numbers of this process, in the order the loop takes them: a resumed run's loader starts where
    # the saved one stopped
    indices = [(s * cfg.grad_accum + micro) * acc.num_processes + acc.process_index
               for s in range(step, stop_at) for micro in range(cfg.grad_accum)]
    mixed = MixedPairs(train_data, synthetic, cfg.synthetic_share) if synthetic is not None else train_data
    loader = iter(batches(mixed, cfg.seed, cfg.batch_size, indices, cfg.workers, acc.device.type == "cuda"))
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, unit="step", disable=not acc.is_main_process, dynamic_ncols=True)
    started, last = time.perf_counter(), {}
    with stop_on_interrupt() as interrupt:
        while step < stop_at:
            lr = scheduler.get_last_lr()[0]  # the rate this step trains at (after scheduler.step(): the next one's)
            for micro in range(cfg.grad_accum):
                x, y, m, *ref = (t.to(acc.device, non_blocking=True) for t in next(loader))
                sync = acc.no_sync(model) if micro < cfg.grad_accum - 1 else contextlib.nullcontext()
                with sync, acc.autocast():
                    loss, last = recipe_loss(restore(model, x, ref[0] if ref else None), y, perceptual, cfg, m)
                acc.backward(loss / cfg.grad_accum)
            acc.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}")
            record = {f"train/{k}": v for k, v in last.items()} | {"lr": lr}
            if acc.is_main_process:
                if step % cfg.sample_every == 0 or step == cfg.steps:
                    save_sample_grid(out / "samples" / f"step-{step:06d}.png", core, test_data, acc.device)
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    held = held_out_loss(core, test_data, perceptual, cfg, acc.device, cfg.eval_count)
                    record |= {f"test/{k}": v for k, v in held.items()}
                acc.log(record, step=step)
                append_loss_log(loss_log, {"step": step} | record)
                if step % cfg.save_every == 0 or step == stop_at or interrupt["asked"]:
                    save_checkpoint(out / f"checkpoint-{step:06d}.safetensors", core, info)
                    save_checkpoint(out / "latest.safetensors", core, info)
                    save_state(state_path, core, optimizer, scheduler, step)
            acc.wait_for_everyone()
            if interrupt["asked"]:
                bar.close()
                acc.end_training()
                raise KeyboardInterrupt(f"interrupted at step {step}; state saved in {state_path}")
    bar.close()
    acc.end_training()
    rate = (step / max(1e-9, time.perf_counter() - started))
    return {"step": step, "last": last, "steps_per_s": rate, "checkpoint": str(out / "latest.safetensors"),
            "gradient_checkpointing": bool(checkpointing)}


@contextlib.contextmanager
def stop_on_interrupt():
    """Ctrl-C asks the loop to stop after the step in progress, where weights, optimizer and RNG agree with the step
    count (a KeyboardInterrupt between optimizer.step() and the counter would save a state that resumes wrongly).
    A second Ctrl-C leaves at once."""
    interrupt = {"asked": False}
    if threading.current_thread() is not threading.main_thread():
        yield interrupt
        return

    def ask(signum, frame):
        if interrupt["asked"]:
            raise KeyboardInterrupt
        interrupt["asked"] = True
    previous = signal.signal(signal.SIGINT, ask)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, previous)


def append_loss_log(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def trim_loss_log(path: Path, step: int) -> None:
    """Keep the log one line per step: lines past the saved state were logged by steps that resuming repeats, and a
    line cut short by a killed run would swallow the next one appended."""
    if path.is_file():
        kept = [r for r in read_loss_log(path) if r["step"] <= step]
        write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in kept).encode())


def read_loss_log(path: Path) -> list[dict]:
    """The log's records; a last line cut short (the run was killed while appending it) is left out."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def save_state(path: Path, model, optimizer, scheduler, step: int) -> None:
    """Only what training changes (the base is reloaded from its files), plus every RNG a step draws from."""
    state = {"step": step, "trainable": [p.detach().cpu() for p in model.trainable_parameters()],
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, model, optimizer, scheduler) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    params = model.trainable_parameters()
    if len(params) != len(state["trainable"]) or any(p.shape != t.shape for p, t in zip(params, state["trainable"])):
        raise ValueError(f"{path} was saved for a different model (ranks, targets or base); use a new --out")
    with torch.no_grad():
        for p, t in zip(params, state["trainable"]):
            p.copy_(t)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])
