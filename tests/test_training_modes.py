"""The README's training modes compute the step they claim: bf16 autocast over fp32 master weights by default,
`--grad-accum N` as one step at N times the batch, micro-batches split across processes (two gloo processes on the
CPU) as one process at the whole batch, and a gradient-checkpointed step as a plain one.

Each run is `train()` itself for one or a few steps on the tiny base at 64 px; an AdamW that records what it is given
(gradients, learning rate, weights before and after, its state) and hooks on every ResnetBlock2D (how often each runs
with grad, in which dtype) observe it from outside.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import pytest
import torch

import training.train as train_module
from training.cli import build_parser, train_config
from training.train import TrainConfig, lr_lambda, read_loss_log, train

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Step:
    """What the optimizer was handed at one step."""
    grads: list
    before: list
    after: list
    lr: float
    state_dtypes: set


@dataclass
class Observed:
    steps: list = field(default_factory=list)
    block_calls: dict = field(default_factory=dict)  # ResnetBlock2D name -> forward calls with grad enabled
    block_dtypes: set = field(default_factory=set)  # their output dtypes in those calls


def observe(monkeypatch) -> Observed:
    """Record every optimizer step and every ResnetBlock2D call of the next `train()`."""
    seen = Observed()

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
            before = [p.detach().clone() for p in params]
            result = super().step(closure)
            seen.steps.append(Step(grads, before, [p.detach().clone() for p in params], self.param_groups[0]["lr"],
                                   {t.dtype for s in self.state.values() for t in s.values() if t.dim()}))
            return result

    def count(name):
        # before the block runs: a recomputation stops once it has what backward needs, inside the last block
        def hook(module, args):
            if torch.is_grad_enabled():  # training forwards and their recomputation, not the held-out evaluation
                seen.block_calls[name] = seen.block_calls.get(name, 0) + 1
        return hook

    def dtype(module, args, output):
        if torch.is_grad_enabled():
            seen.block_dtypes.add(output.dtype)

    build = train_module.build_restorer

    def build_observed(*args, **kwargs):
        from diffusers.models.resnet import ResnetBlock2D
        from tiny_base import randomize_trainable

        model = build(*args, **kwargs)
        randomize_trainable(model)  # as a trained model: fresh LoRA B is zero, so LoRA A would get no gradient
        for name, module in model.named_modules():
            if isinstance(module, ResnetBlock2D):
                module.register_forward_pre_hook(count(name))
                module.register_forward_hook(dtype)
        return model

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    monkeypatch.setattr(train_module, "build_restorer", build_observed)
    return seen


def _pairs(root: Path, count: int = 4, size: int = 64) -> Path:
    from engine.faces.bundled import bundled_faces

    for sub in ("clean", "degraded"):
        (root / sub).mkdir(parents=True)
    for i, face in enumerate(list(bundled_faces().values())[:count]):
        clean = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(root / "clean" / f"{i}.png"), cv2.cvtColor(clean, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "degraded" / f"{i}.png"), cv2.cvtColor(cv2.GaussianBlur(clean, (0, 0), 2),
                                                                       cv2.COLOR_RGB2BGR))
    return root


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return _pairs(tmp_path_factory.mktemp("modes") / "pairs")


# lr 1e-3 from the first step (warmup 1) so that a step moves the weights well above fp32 rounding; no skip dropout,
# whose draws depend on how a batch is split; no clipping, which would normalise away the very scale errors
# (an unscaled accumulated loss, gradients summed instead of averaged) these tests look for.
SETTINGS = dict(steps=1, batch_size=2, lr=1e-3, warmup=1, size=64, skip_dropout=0.0, max_grad_norm=1e9,
                save_every=1000, sample_every=1000, eval_every=1000, eval_count=1, random_vgg=True, seed=3,
                workers=0)


def _config(pairs, tiny_base, out, **kw) -> TrainConfig:
    return TrainConfig(**{"pairs": str(pairs), "out": str(out), "base": str(tiny_base), "mixed_precision": "no",
                          **SETTINGS, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's convolutions are too small to share: on two busy cores a two-thread pool waits on itself
    (a forward and backward took 30 s instead of 0.4 s, measured), and the distributed test runs two processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one mixed-precision setting per process and refuses another; each run here sets its own."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten().float() for t in tensors])


def _relative(a, b) -> float:
    """|a - b| / |b| over all trainable tensors together."""
    a, b = _flat(a), _flat(b)
    return ((a - b).norm() / b.norm()).item()


# Another summation order in fp32: gradients 2e-5 apart (measured), the weights' updates 6e-4 (AdamW's first step is
# lr * sign(gradient), so a near-zero component may flip). A gradient of the wrong scale or batch is 0.5 to 1 apart.
GRADIENT_TOLERANCE, UPDATE_TOLERANCE = 1e-3, 1e-2


def _update(step) -> list:
    return [after - before for after, before in zip(step.after, step.before)]


@pytest.fixture(scope="module")
def plain_step(pairs, tiny_base, tmp_path_factory) -> Observed:
    """The reference: one fp32 step at batch 2 in one process, no accumulation, no checkpointing."""
    from accelerate.state import AcceleratorState

    with pytest.MonkeyPatch.context() as monkeypatch:
        seen = observe(monkeypatch)
        AcceleratorState._reset_state(reset_partial_state=True)
        train(_config(pairs, tiny_base, tmp_path_factory.mktemp("plain") / "run", gradient_checkpointing=False),
              log=lambda *_: None)
        AcceleratorState._reset_state(reset_partial_state=True)
    assert len(seen.steps) == 1
    return seen


def test_the_default_step_runs_in_bf16_autocast_over_fp32_weights_and_matches_the_fp32_step(
        plain_step, pairs, tiny_base, tmp_path, monkeypatch):
    args = build_parser().parse_args(["train", "--pairs", str(pairs), "--out", str(tmp_path / "run"),
                                      "--base", str(tiny_base)])
    cfg = train_config(args, **SETTINGS, gradient_checkpointing=False)
    assert cfg.mixed_precision == "bf16"
    seen = observe(monkeypatch)
    train(cfg, log=lambda *_: None)
    (step,) = seen.steps
    assert seen.block_dtypes == {torch.bfloat16}
    assert {p.dtype for p in step.before + step.after + step.grads} == {torch.float32}
    assert step.state_dtypes == {torch.float32}
    (reference,) = plain_step.steps
    gradient_error = _relative(step.grads, reference.grads)
    # bf16 keeps 8 bits of mantissa: the gradient is a few percent off the fp32 one (0.08 measured), against 1.0
    # for a gradient of another batch or scale. (Not the update: AdamW's first step is lr * sign(gradient), which
    # turns rounding on near-zero components into whole steps.)
    assert gradient_error < 0.15, gradient_error


def test_grad_accum_of_two_micro_batches_takes_the_step_of_one_batch_twice_as_large(
        plain_step, pairs, tiny_base, tmp_path, monkeypatch):
    seen = observe(monkeypatch)
    train(_config(pairs, tiny_base, tmp_path / "run", batch_size=1, grad_accum=2), log=lambda *_: None)
    (step,) = seen.steps
    (reference,) = plain_step.steps
    assert _relative(step.grads, reference.grads) < GRADIENT_TOLERANCE
    assert _relative(_update(step), _update(reference)) < UPDATE_TOLERANCE


def test_with_grad_accum_the_optimizer_and_its_schedule_count_steps_not_micro_batches(
        pairs, tiny_base, tmp_path, monkeypatch):
    seen = observe(monkeypatch)
    cfg = _config(pairs, tiny_base, tmp_path / "run", steps=3, warmup=2, batch_size=1, grad_accum=2)
    assert train(cfg, log=lambda *_: None)["step"] == 3
    assert set(seen.block_calls.values()) == {3 * 2}  # every block ran once per micro-batch
    schedule = lr_lambda(2, 3)
    assert [s.lr for s in seen.steps] == pytest.approx([1e-3 * schedule(k) for k in range(3)])
    assert [r["step"] for r in read_loss_log(tmp_path / "run" / "losses.jsonl")] == [0, 1, 2, 3]


def test_a_gradient_checkpointed_step_recomputes_every_block_and_takes_the_plain_step(
        plain_step, pairs, tiny_base, tmp_path, monkeypatch):
    seen = observe(monkeypatch)
    result = train(_config(pairs, tiny_base, tmp_path / "run", gradient_checkpointing=True), log=lambda *_: None)
    assert result["gradient_checkpointing"]
    (step,) = seen.steps
    (reference,) = plain_step.steps
    for got, want in zip(step.grads, reference.grads):
        assert (got - want).norm() <= 1e-6 * want.norm()
    assert plain_step.block_calls.keys() == seen.block_calls.keys()
    assert set(plain_step.block_calls.values()) == {1}
    # every block runs again in backward, but the first resnet of the UNet's mid block, which diffusers leaves out
    assert {name for name, calls in seen.block_calls.items() if calls != 2} == {"unet.mid_block.resnets.0"}


def run_rank(config: str, out: str) -> None:
    """One of the distributed test's processes (RANK, WORLD_SIZE, MASTER_ADDR/PORT in its environment)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        seen = observe(monkeypatch)
        train(TrainConfig(**json.loads(config)), log=lambda *_: None)
    (step,) = seen.steps
    torch.save({"grads": step.grads, "update": _update(step), "after": step.after}, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(config: str, tmp_path, cpu: bool = True) -> list[int]:
    """What `accelerate launch --cpu --num_processes 2` starts: two ranks of run_rank; their exit codes."""
    code = ("import sys; sys.path[:0] = [{root!r}, {tests!r}]; from test_training_modes import run_rank; "
            "run_rank(sys.argv[1], sys.argv[2])").format(root=str(ROOT), tests=str(ROOT / "tests"))
    port, ranks = _free_port(), []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        env.pop("ACCELERATE_USE_CPU", None)
        if cpu:
            env["ACCELERATE_USE_CPU"] = "true"
        with open(tmp_path / f"rank{rank}.log", "w") as log:
            ranks.append(subprocess.Popen([sys.executable, "-c", code, config, str(tmp_path / f"rank{rank}.pt")],
                                          env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    try:
        return [p.wait(timeout=300) for p in ranks]
    finally:
        for p in ranks:
            p.kill()


def test_two_processes_each_taking_one_pair_take_the_step_of_one_process_at_batch_two(
        plain_step, pairs, tiny_base, tmp_path):
    config = json.dumps(asdict(_config(pairs, tiny_base, tmp_path / "run", batch_size=1, gradient_checkpointing=False)))
    codes = launch_two(config, tmp_path)
    assert codes == [0, 0], "".join((tmp_path / f"rank{rank}.log").read_text()[-3000:] for rank in range(2))
    first, second = (torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first["after"], second["after"]))
    (reference,) = plain_step.steps
    assert _relative(first["grads"], reference.grads) < GRADIENT_TOLERANCE
    assert _relative(first["update"], _update(reference)) < UPDATE_TOLERANCE


def test_processes_launched_without_cpu_mode_on_a_machine_without_a_gpu_refuse_instead_of_training_alone(
        pairs, tiny_base, tmp_path):
    """Without ACCELERATE_USE_CPU, accelerate on a CPU-only machine runs each rank as a single process: both would
    train on the same pairs and write the same run folder."""
    config = json.dumps(asdict(_config(pairs, tiny_base, tmp_path / "run", batch_size=1, gradient_checkpointing=False)))
    codes = launch_two(config, tmp_path, cpu=False)
    logs = [(tmp_path / f"rank{rank}.log").read_text() for rank in range(2)]
    assert all(c != 0 for c in codes), logs
    assert all("accelerate launch --cpu" in log for log in logs)
    assert not (tmp_path / "run" / "state.pt").exists()
