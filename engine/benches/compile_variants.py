"""Which torch.compile options bring the compiled model closer to its compute floor, at equal outputs (issue 26).

    python -m engine.benches.compile_variants [--random-weights | --weights W [--base B]] [--size 512] [--batch 1]
        [--repeats 20] [--variants baseline,all,freezing,fused_qkv,conv1x1mm] [--out FILE] [--json]

The model is built as `engine bench` builds it (full SD-Turbo shapes with random weights by default, merged LoRA,
fp16 and channels_last on GPUs, SDPA). Each variant compiles it as the engine does (fastpath.inductor_mode: CUDA graphs
on CUDA), from a fresh torch._dynamo state, with some of Inductor's options set:

    baseline   the engine's compile today
    freezing   the merged weights become constants Inductor can fold and lay out ahead of time
    conv1x1mm  1x1 convolutions (skip convs, VAE shortcuts) run as matmuls
    coordesc   coordinate-descent tuning of each Triton kernel's launch parameters (compiles longer)
    fused_qkv  each UNet attention's q/k/v projections as one matmul (fastpath.fuse_qkv)
    all        all of the above

Each is timed (median of --repeats calls, CUDA events on GPUs) and its output compared with the eager fast path's
on the same input; "equal" means within the tolerance tests/test_fastpath.py holds the fast path to (fp16 0.02 on
the [-1, 1] scale). Before the variants it reports which SDPA kernel each attention runs (observed at the dispatcher)
and times every SDPA backend that accepts that attention's inputs: the VAE's one 512-wide head is past flash
attention's head size limit of 256. A cold reduce-overhead compile of the full model takes about 95 s on an H200,
so variants that would overrun --budget-s are skipped (named in the output), and results are printed and written to
--out as each one finishes: a run cut short still leaves its numbers.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import write_bytes_atomic
from ..fastpath import attention_kernels, fuse_qkv, inductor_mode, prepare, use_compile_cache
from ..runtime import pick_device, pick_dtype
from .speed import _free, _inputs, _sync, build_models, count_flops, merged, peak_tflops

# tests/test_fastpath.py's bounds for the fast path against its fp32 reference, per dtype
TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 1e-1, torch.float32: 1e-4}
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                 "math": "MATH"}


@dataclass(frozen=True)
class Variant:
    name: str
    inductor: dict = field(default_factory=dict)  # torch._inductor.config options set while it compiles and runs
    fused_qkv: bool = False


SINGLE = [Variant("baseline"), Variant("freezing", {"freezing": True}), Variant("conv1x1mm", {"conv_1x1_as_mm": True}),
          Variant("coordesc", {"coordinate_descent_tuning": True}), Variant("fused_qkv", fused_qkv=True)]
VARIANTS = {v.name: v for v in SINGLE}
VARIANTS["all"] = Variant("all", {k: v for s in SINGLE for k, v in s.inductor.items()}, fused_qkv=True)
# most telling first, for a run cut short: the engine's compile, everything at once, then the options one by one
# (1x1 convolutions are few here: the UNet projects with Linear layers); coordesc alone on request
DEFAULT_VARIANTS = "baseline,all,freezing,fused_qkv,conv1x1mm"
# a guess, to be replaced by a measurement: coordinate-descent tuning benchmarks launch settings for every kernel
COORDESC_COMPILE_FACTOR = 1.5


def parse_variants(text: str) -> list[Variant]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"unknown variant(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(VARIANTS)}")
    if len(set(names)) < len(names):
        raise ValueError(f"a variant is named twice in {text!r}")
    return [VARIANTS[n] for n in names]


def median_ms(fn, repeats: int, device: torch.device, warmup: int = 3) -> float:
    """Median milliseconds of one fn() call: CUDA events around each call on GPUs, the wall clock elsewhere."""
    for _ in range(warmup):  # cuDNN's algorithm search; CUDA graphs are recorded on the second call
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - began))
    return statistics.median(times)


def sdpa_backends(q, k, v, repeats: int, device: torch.device) -> dict:
    """{backend: {"ms": median} or {"why": its refusal}} for every SDPA backend, on exactly these inputs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    for name, member in SDPA_BACKENDS.items():
        with warnings.catch_warnings(record=True) as said, torch.inference_mode():
            warnings.simplefilter("always")
            try:
                with sdpa_kernel([getattr(SDPBackend, member)]):
                    out[name] = {"ms": median_ms(
                        lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), repeats, device)}
            except RuntimeError as e:  # no kernel of this backend takes these inputs; its warnings say why
                reasons = dict.fromkeys(str(w.message).strip() for w in said) or [str(e).splitlines()[0]]
                out[name] = {"why": " ".join(reasons)[:400]}
    return out


def kernel_table(model: torch.nn.Module, x: torch.Tensor, repeats: int, device: torch.device) -> list[dict]:
    """One row per kind of attention (component, self/cross, input shapes): how many modules, the kernel PyTorch
    picks, and each backend's time or refusal."""
    rows: dict[tuple, dict] = {}
    for call in attention_kernels(model, x):
        q, k, _ = call.inputs
        key = (call.module.split(".")[0], call.cross, tuple(q.shape), tuple(k.shape), call.kernel)
        if key not in rows:
            rows[key] = {"component": key[0], "attention": "cross" if call.cross else "self", "q": list(q.shape),
                         "k": list(k.shape), "dtype": str(q.dtype).replace("torch.", ""), "picked": call.kernel,
                         "op": call.op, "modules": [], "backends": sdpa_backends(*call.inputs, repeats, device)}
        rows[key]["modules"].append(call.module)
    return list(rows.values())


def run_variant(variant: Variant, eager: torch.nn.Module, x: torch.Tensor, expected: torch.Tensor, mode: str | None,
                repeats: int, device: torch.device) -> dict:
    """Compile (or, with compiling off, only transform) `eager` as the variant says, time it and compare it."""
    row = {"variant": variant.name, "inductor": variant.inductor, "fused_qkv": variant.fused_qkv, "mode": mode}
    torch._dynamo.reset()
    try:
        row.update(_measure(variant, eager, x, expected, mode, repeats, device))
    except Exception as e:  # noqa: BLE001 - one variant that does not compile must not cost the others' numbers
        row["error"] = f"{type(e).__name__}: {str(e).strip()[:500]}"
    torch._dynamo.reset()  # drops the compiled code and its CUDA graphs before the next variant
    _free(device)
    return row


def _measure(variant: Variant, eager, x, expected, mode, repeats, device) -> dict:
    import torch._inductor.config as inductor
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    model, fused = eager, 0
    if variant.fused_qkv:
        model = copy.deepcopy(eager)
        fused = fuse_qkv(model.unet)  # the VAE's attention stays as it is: one head, no cross-attention to fuse
    with inductor.patch(variant.inductor), torch.inference_mode():
        run = torch.compile(model, mode=mode, dynamic=False, fullgraph=False) if mode else model
        began = time.perf_counter()
        run(x)  # compiles
        _sync(device)
        compile_s = time.perf_counter() - began if mode else None
        compiled = counters["stats"]["unique_graphs"]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ms = median_ms(lambda: run(x), repeats, device)
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
        got = run(x).to(torch.float32, copy=True)  # CUDA graphs reuse their output buffer on the next call
    batch = x.shape[0]
    # graphs: one, or more where Dynamo breaks the graph; recompiles: graphs made while timing (0, or the timing is off)
    return {"fused_attentions": fused, "compile_s": compile_s, "graphs": compiled - graphs,
            "recompiles": counters["stats"]["unique_graphs"] - compiled, "ms_per_frame": ms / batch,
            "fps": 1000 * batch / ms, "peak_gib": peak, "max_diff": float((got - expected).abs().max())}


def describe_device(device: torch.device) -> dict:
    import diffusers

    out = {"device": str(device), "torch": torch.__version__, "diffusers": diffusers.__version__,
           "cuda": torch.version.cuda}
    if device.type == "cuda":
        out.update(gpu=torch.cuda.get_device_name(device), cudnn=torch.backends.cudnn.version())
    return out


def run(report, weights=None, base=None, arch="sd-turbo", size=512, batch=1, repeats=20, variants=None,
        device="auto", dtype="auto", compile_mode="auto", budget_s=480.0, compile_cache=None) -> dict:
    """Measures everything, calling report(result, line) after each step with the result so far and a line of the
    human table."""
    started = time.perf_counter()
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    mode = inductor_mode(dev.type, compile_mode)
    torch.manual_seed(0)
    model, label = build_models(weights, base, arch, dev)
    eager = prepare(merged(model).to(dev, dt), dev)
    x = _inputs(batch, size, dev, dt)
    flops = count_flops(eager, _inputs(1, size, dev, dt))
    with torch.inference_mode():
        expected = eager(x).to(torch.float32, copy=True)
        eager_ms = median_ms(lambda: eager(x), repeats, dev)
    peak = peak_tflops(dev)
    r = {**describe_device(dev), "model": label, "dtype": str(dt).replace("torch.", ""), "size": size,
         "batch": batch, "repeats": repeats, "compile_mode": mode, "tolerance": TOLERANCE[dt],
         "tflop_per_frame": flops / 1e12, "floor_ms_per_frame": 1000 * flops / (peak * 1e12) if peak else None,
         "eager_ms_per_frame": eager_ms / batch, "attention": [], "variants": []}
    report(r, f"{label} on {r.get('gpu', r['device'])} (torch {r['torch']}, CUDA {r['cuda']}), {r['dtype']}, "
              f"{size} px, batch {batch}, compile {mode or 'off'}: {r['tflop_per_frame']:.3g} TFLOP/frame, floor "
              f"{_cell(r['floor_ms_per_frame'], '.1f')} ms/frame; eager fast path {r['eager_ms_per_frame']:.1f} "
              f"ms/frame")
    r["attention"] = kernel_table(eager, x, repeats, dev)
    report(r, attention_lines(r["attention"]))
    report(r, variant_header())
    with tempfile.TemporaryDirectory() as empty:  # cold by default: the first variant's compile is a cold one
        if mode:
            r["compile_cache"] = str(use_compile_cache(compile_cache or empty))
        longest = 0.0
        for variant in variants or parse_variants(DEFAULT_VARIANTS):
            elapsed = time.perf_counter() - started
            estimate_s = longest * (COORDESC_COMPILE_FACTOR if variant.inductor.get("coordinate_descent_tuning") else 1)
            if elapsed + estimate_s > budget_s:
                row = {"variant": variant.name, "skipped": f"budget: {elapsed:.0f} s gone, {estimate_s:.0f} s "
                                                           f"expected, --budget-s {budget_s:.0f}"}
            else:
                began = time.perf_counter()
                row = run_variant(variant, eager, x, expected, mode, repeats, dev)
                longest = max(longest, time.perf_counter() - began)
                if "max_diff" in row:
                    row["equal"] = row["max_diff"] <= r["tolerance"]
                    if r["floor_ms_per_frame"]:
                        row["floor_fraction"] = r["floor_ms_per_frame"] / row["ms_per_frame"]
            r["variants"].append(row)
            r["elapsed_s"] = time.perf_counter() - started
            report(r, variant_line(row, next((v for v in r["variants"] if v["variant"] == "baseline"), {})))
    return r


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def attention_lines(rows: list[dict]) -> str:
    lines = [f"{'attention':<14} {'n':>2} {'q':<18} {'k':<18} {'picked':<9} " +
             " ".join(f"{b + ' ms':>12}" for b in SDPA_BACKENDS)]
    for row in rows:
        times = [format(row["backends"][b]["ms"], ".3f") if "ms" in row["backends"][b] else "no"
                 for b in SDPA_BACKENDS]
        lines.append(f"{row['component'] + ' ' + row['attention']:<14} {len(row['modules']):>2} "
                     f"{'x'.join(map(str, row['q'])):<18} {'x'.join(map(str, row['k'])):<18} {row['picked']:<9} " +
                     " ".join(f"{t:>12}" for t in times))
    refused = {f"{b}: {row['backends'][b]['why']}" for row in rows for b in SDPA_BACKENDS
               if "why" in row["backends"][b]}
    return "\n".join(lines + [f"  refused ({len(refused)} kinds): " + "; ".join(sorted(refused))] if refused else
                     lines)


def variant_header() -> str:
    return (f"{'variant':<10} {'ms/frame':>9} {'frames/s':>9} {'vs base':>8} {'max diff':>9} {'equal':>6} "
            f"{'compile s':>10} {'graphs':>6} {'floor':>6} {'peak GiB':>9}")


def variant_line(row: dict, baseline: dict) -> str:
    if "skipped" in row or "error" in row:
        return f"{row['variant']:<10} {'skipped, ' + row['skipped'] if 'skipped' in row else 'failed: ' + row['error']}"
    base_ms = baseline.get("ms_per_frame")
    ratio = f"{base_ms / row['ms_per_frame']:.2f}x" if base_ms else "-"
    floor = f"{row['floor_fraction'] * 100:.0f}%" if "floor_fraction" in row else "-"
    recompiled = f" (recompiled {row['recompiles']}x while timed: not a steady state)" if row["recompiles"] else ""
    return (f"{row['variant']:<10} {row['ms_per_frame']:>9.2f} {row['fps']:>9.1f} {ratio:>8} "
            f"{row['max_diff']:>9.2e} {'yes' if row['equal'] else 'NO':>6} {_cell(row['compile_s'], '.1f'):>10} "
            f"{row['graphs']:>6} {floor:>6} {_cell(row['peak_gib'], '.2f'):>9}{recompiled}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.benches.compile_variants", description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--weights", default=None, help="a checkpoint (default: random weights at full size)")
    src.add_argument("--random-weights", action="store_true", help="random weights at full size (the default)")
    ap.add_argument("--base", default=None, help="a diffusers folder instead of --arch")
    ap.add_argument("--arch", default="sd-turbo")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    ap.add_argument("--compile", choices=["auto", "off", "on"], default="auto",
                    help="off: each variant's model runs eagerly (a dry run of the script)")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="skip a variant that would end past this many seconds from the start (default 480)")
    ap.add_argument("--compile-cache", default=None, help="Inductor's cache folder (default: a new, empty one)")
    ap.add_argument("--out", default=None, help="write the JSON here, after each step")
    ap.add_argument("--json", action="store_true", help="print the JSON at the end (the table goes to stderr)")
    a = ap.parse_args(argv)
    try:
        variants = parse_variants(a.variants)
    except ValueError as e:
        ap.error(str(e))
    table = sys.stderr if a.json else sys.stdout

    def report(result: dict, line: str) -> None:
        print(line, file=table, flush=True)
        if a.out:
            write_bytes_atomic(Path(a.out), json.dumps(result, indent=1).encode())

    r = run(report, a.weights, a.base, a.arch, a.size, a.batch, a.repeats, variants, a.device, a.dtype, a.compile,
            a.budget_s, a.compile_cache)
    if a.json:
        print(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
