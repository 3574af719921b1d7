"""The inference fast path: what a frame runs through once the model is loaded.

Merged LoRA (done at load), half precision on GPUs, channels_last convolutions, PyTorch's SDPA attention, and
torch.compile (on CUDA by default: "reduce-overhead", i.e. CUDA graphs, static shapes). Compiling takes minutes on a GPU,
so it never sits between an artist and a frame: `FastForward` serves every frame eagerly until the compiled code for
that input shape is ready, compiling in a background thread on dummy inputs of that shape, and swaps it in then.
Callers pad batches to a few fixed sizes (runtime.ModelRunner's buckets), so a session compiles a handful of shapes
once. Inductor's FX-graph and autotune caches live in a named folder (`--compile-cache`), so a restarted engine
reuses them. The VAE decoder is about 75 % of the FLOPs at 512 px, so it is compiled with the encoder and UNet.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .model import Pix2PixTurbo

COMPILE_MODES = ("auto", "off", "on")
COMPILE_THREAD = "splat-restore-compile"


def use_sdpa(model: Pix2PixTurbo) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    from .model import CrossViewAttnProcessor

    for module in (getattr(model, "unet", None), getattr(model, "vae", None)):
        if hasattr(module, "set_attn_processor"):
            # cross-view attention (Difix-ref) is part of the model, not a speed choice: it stays (it runs SDPA too)
            module.set_attn_processor({name: p if isinstance(p, CrossViewAttnProcessor) else AttnProcessor2_0()
                                       for name, p in module.attn_processors.items()})


def fuse_qkv(module: torch.nn.Module) -> int:
    """Fuse each attention's input projections in `module` into one matmul, in place (q, k and v for
    self-attention; k and v for cross-attention, whose q reads other tokens); returns how many attentions.

    For inference after merge_lora: the fused weight is the merged weights concatenated and the separate projections
    are dropped, so the parameter count stays. Each processor runs the fused projections, cross-view attention too
    (its inner SDPA processor becomes the fused one). Not part of the default fast path until a GPU measures it faster.
    """
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0, FusedAttnProcessor2_0

    from .model import CrossViewAttnProcessor

    attentions = [(name, m) for name, m in module.named_modules() if isinstance(m, Attention)]
    for name, attn in attentions:  # every one checked before any changes: no half-fused model
        if getattr(attn, "fused_projections", False):
            raise ValueError(f"cannot fuse {name}: its projections are fused already")
        for proj in _projections(attn):
            if type(getattr(attn, proj)) is not torch.nn.Linear:
                raise ValueError(f"cannot fuse {name}.{proj}: it is a {type(getattr(attn, proj)).__name__}, not a "
                                 f"plain Linear (merge the LoRA adapters first, model.merge_lora)")
        if not isinstance(attn.processor, (AttnProcessor2_0, CrossViewAttnProcessor)):
            raise ValueError(f"cannot fuse {name}: its attention processor {type(attn.processor).__name__} has no "
                             f"fused form (use_sdpa first)")
    for _, attn in attentions:
        attn.fuse_projections()
        for proj in _projections(attn):
            delattr(attn, proj)
        if isinstance(attn.processor, CrossViewAttnProcessor):
            attn.processor.attend = FusedAttnProcessor2_0()
        else:
            attn.set_processor(FusedAttnProcessor2_0())
    return len(attentions)


def _projections(attn) -> tuple[str, ...]:
    return ("to_k", "to_v") if attn.is_cross_attention else ("to_q", "to_k", "to_v")


def inductor_mode(device_type: str, compile_mode: str) -> str | None:
    """torch.compile's mode for this device and --compile setting, or None for eager only."""
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, not {compile_mode!r}")
    if compile_mode == "off" or (compile_mode == "auto" and device_type != "cuda"):
        return None
    # CUDA graphs remove the launch overhead that dominates batch 1 on CUDA. Not max-autotune: on an H200 its cold
    # compile of batch 1 at 512 px outran 240 s, where reduce-overhead took 95 s for 15.8 ms/frame (README, Speed).
    return "reduce-overhead" if device_type == "cuda" else "default"


def default_compile_cache(env: dict | None = None, platform: str = sys.platform) -> Path:
    """Where compiled kernels are kept between engine runs: the user's cache folder, per platform."""
    env = os.environ if env is None else env
    if platform == "win32":
        root = Path(env.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif platform == "darwin":
        root = Path.home() / "Library" / "Caches"
    else:
        root = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "splat-restore" / "compile"


def use_compile_cache(folder: str | os.PathLike | None = None) -> Path:
    """Point Inductor's on-disk caches (FX graphs, autotuning results, Triton kernels) at `folder`; without one, at
    $TORCHINDUCTOR_CACHE_DIR when set, else at default_compile_cache(). Must run before the first compile."""
    chosen = Path(folder or os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_compile_cache()).expanduser()
    chosen.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(chosen.resolve())  # Inductor reads it at each compile
    import torch._inductor.config as inductor

    inductor.fx_graph_cache = True
    inductor.autotune_local_cache = True
    return chosen


def prepare(model: Pix2PixTurbo, device: torch.device) -> Pix2PixTurbo:
    """The eager half of the fast path, in place: SDPA attention, and on CUDA channels_last and TF32."""
    use_sdpa(model)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return model


class FastForward:
    """(N, 3, H, W) -> (N, 3, H, W). Eager until the compiled code for an input's shape is ready, compiled after.

    Call it in torch.inference_mode() with inference tensors, as the warm-up runs: compiled code is guarded on that
    (and on shape, dtype and layout), and a call that misses the guards would compile on the caller's thread.
    Thread-safe: the service's worker calls it while the compile thread warms shapes up; the two only share the
    set of ready shapes (under a lock) and the model's weights (read-only). `status()` says where compiling stands;
    `on_change()` is called (mostly from the compile thread) at each change.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, compile_mode: str = "auto",
                 compile_cache: str | os.PathLike | None = None):
        self.eager = prepare(model, device)
        self.device = device
        self.memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self.mode = inductor_mode(device.type, compile_mode)
        self.compiled = None
        if self.mode:
            self.cache = use_compile_cache(compile_cache)
            self.compiled = torch.compile(self.eager, mode=self.mode, dynamic=False, fullgraph=False)
        self.on_change: Callable[[], None] | None = None
        self.compiled_calls = 0
        self.seconds: dict[tuple, float] = {}  # shape -> seconds its compile took
        self.error = ""
        self._ready: set[tuple] = set()
        self._asked: set[tuple] = set()
        self._todo: deque[tuple] = deque()
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None

    def __call__(self, x: torch.Tensor, reference_latent: torch.Tensor | None = None) -> torch.Tensor:
        """`reference_latent`: for a restorer with a reference view, the reference's latent (1, C, H/8, W/8)."""
        x = x.contiguous(memory_format=self.memory_format)  # compiled code is guarded on strides too
        extra = {} if reference_latent is None else {"reference_latent": reference_latent.contiguous()}
        shape = tuple(x.shape)
        with self._lock:
            ready = shape in self._ready
        if ready:
            self.compiled_calls += 1
            return self.compiled(x, **extra)
        self.compile_async([shape])
        return self.eager(x, **extra)

    def compile_async(self, shapes) -> None:
        """Compile for these input shapes in the background (each once; nothing when compiling is off)."""
        if self.compiled is None:
            return
        with self._lock:
            new = [tuple(s) for s in shapes if tuple(s) not in self._asked and not self.error]
            self._asked.update(new)
            if not new:
                return
            self._idle.clear()
            self._todo.extend(new)
            if self._thread is None:
                # daemon: a run that ends mid-compile must not wait minutes for a kernel no frame will use
                self._thread = threading.Thread(target=self._compile_loop, name=COMPILE_THREAD, daemon=True)
                self._thread.start()
        self._changed()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every shape asked for is compiled (or compiling failed); False on timeout."""
        return self._idle.wait(timeout)

    @property
    def state(self) -> str:
        if self.compiled is None:
            return "off"
        if self.error:
            return "failed"
        return "ready" if self._idle.is_set() else "compiling"

    def status(self) -> dict:
        with self._lock:
            shapes = sorted(self._ready)
        out = {"state": self.state, "mode": self.mode, "shapes": [list(s) for s in shapes],
               "seconds": round(sum(self.seconds.values()), 3)}
        if self.compiled is not None:
            out["cache"] = str(self.cache)
        if self.error:
            out["message"] = self.error
        return out

    def _compile_loop(self) -> None:
        """Compiles what is asked for, then ends: a live compile thread means a compile is under way."""
        while True:
            with self._lock:
                if not self._todo or self.error:  # after one failure the compiler does not work here
                    self._todo.clear()
                    self._thread = None
                    self._idle.set()
                    break
                shape = self._todo.popleft()
            self._compile_one(shape)
            self._changed()
        self._changed()

    def _compile_one(self, shape: tuple) -> None:
        start = time.perf_counter()
        try:
            # made and run as ModelRunner.run_model does: an inference tensor in inference mode, or the guards miss
            with torch.inference_mode():
                x = torch.zeros(shape, device=self.device, dtype=next(self.eager.parameters()).dtype)
                extra = {}
                if getattr(getattr(self.eager, "config", None), "views", 1) > 1:  # warmed up as frames will come
                    latent = (1, self.eager.vae.config.latent_channels, shape[2] // 8, shape[3] // 8)
                    extra["reference_latent"] = torch.zeros(latent, device=self.device, dtype=x.dtype)
                self.compiled(x.contiguous(memory_format=self.memory_format), **extra)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as e:  # noqa: BLE001 - a compiler failure costs speed, never frames
            self.error = f"compiling for input {list(shape)} failed, frames stay eager: {type(e).__name__}: {e}"
            print(f"warning: {self.error}", file=sys.stderr)
            return
        self.seconds[shape] = time.perf_counter() - start
        with self._lock:
            self._ready.add(shape)

    def _changed(self) -> None:
        if self.on_change:
            self.on_change()


def compiling_now() -> bool:
    """Whether a FastForward of this process is in the middle of a compile."""
    return any(t.name == COMPILE_THREAD and t.is_alive() for t in threading.enumerate())


# the kernels behind F.scaled_dot_product_attention (torch.nn.attention.SDPBackend), as their aten ops name them
SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math", "overrideable")


@dataclass
class AttentionCall:
    """One SDPA call of an attention module: which kernel PyTorch dispatched it to, and (copies of) its inputs."""
    module: str
    cross: bool
    kernel: str  # "flash", "efficient", "cudnn", "math" or "overrideable"
    op: str  # the aten op, e.g. _scaled_dot_product_flash_attention_for_cpu
    inputs: tuple  # query, key, value as SDPA got them (same shape, strides and dtype)


def attention_kernels(model: torch.nn.Module, *args, **kwargs) -> list[AttentionCall]:
    """Run `model(*args, **kwargs)` once (eager, in inference mode) and say which SDPA kernel each attention module's
    call went to, as the dispatcher chose it under the current settings (dtype, head size, sdpa_kernel limits)."""
    from diffusers.models.attention_processor import Attention
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: list[AttentionCall] = []
    inside: list[tuple[str, bool]] = []
    sdpa = torch.ops.aten.scaled_dot_product_attention.default

    class Observer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is sdpa:  # the composite op: run its own choice of kernel under this mode to see which it is
                with self:
                    return func.decompose(*args, **kwargs)
            op = func.overloadpacket.__name__
            if op.startswith("_scaled_dot_product") and inside:
                kernel = next((b for b in SDPA_BACKENDS if b in op), op)
                calls.append(AttentionCall(*inside[-1], kernel, op,
                                           tuple(t.clone(memory_format=torch.preserve_format) for t in args[:3])))
            return func(*args, **kwargs)

    def leave(*_):  # a forward hook's return value would replace the module's output
        inside.pop()

    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, Attention):
            entered = (name, m.is_cross_attention)
            hooks.append(m.register_forward_pre_hook(lambda *_, e=entered: inside.append(e)))
            hooks.append(m.register_forward_hook(leave))
    try:
        with torch.inference_mode(), Observer():
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return calls
