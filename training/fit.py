"""`python -m training fit CLEAN_DIR --out RUN`: clean faces in, a restorer out, in one command.

Stages, each skipped when a previous invocation finished it (so the same command resumes):
  degrade  -> RUN/pairs/ (held-out split; pairs written larger than the training crop so crops move)
  train    -> RUN/state.pt, checkpoints, losses.jsonl (the trainer's own exact resume)
  export   -> RUN/restorer.safetensors (engine format: `python -m engine restore --weights` and the add-on)
  evaluate -> RUN/eval.json, RUN/eval_grid.png (held-out pairs, restored through the engine as users do)
  report   -> RUN/report.html
Bad inputs (unreadable, too small, no face) are named and skipped; the rest trains.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from engine.atomic import atomic_path, write_bytes_atomic

from .run_record import check_resume
from .train import TrainConfig


def pair_size(size: int) -> int:
    """Pairs 1/8 larger than the crop (576 for 512): random crops then move by up to 64 px, and the face framing
    still fills the crop."""
    return (size * 9 // 8 + 7) // 8 * 8


def degrade_with_progress(clean_dir: Path, out: Path, options, test_count: int, workers: int) -> dict:
    from tqdm import tqdm

    from .prepare import collect_sources, prepare

    with tqdm(total=len(collect_sources(clean_dir)), unit="img", desc="degrade", file=sys.stderr) as bar:
        def progress(record):
            if record["status"] == "failed" or (record["status"] == "no_face" and "file" not in record):
                bar.write(f"skipped {record['source']}: {record['reason']}", file=sys.stderr)
            bar.update(1)
        # the run owns its pairs folder: without summary.json it holds an earlier degrade's unfinished output
        return prepare(clean_dir, out, options, test_count, workers, progress, overwrite=True)


class FitRun:
    def __init__(self, out: Path):
        self.out = out
        self.pairs = out / "pairs"
        self.weights = out / "restorer.safetensors"
        self.eval_json = out / "eval.json"
        self.grid = out / "eval_grid.png"
        self.record_path = out / "fit.json"
        self.record = json.loads(self.record_path.read_text()) if self.record_path.is_file() else {"seconds": {}}

    def finished(self, stage: str, seconds: float, **facts) -> None:
        spent = self.record["seconds"]
        spent[stage] = spent.get(stage, 0.0) + seconds
        self.record |= facts
        write_bytes_atomic(self.record_path, json.dumps(self.record, indent=1).encode())


def fit(clean_dir: Path, cfg: TrainConfig, test_count: int | None = None, parser: str = "auto",
        log=print) -> dict:
    """Run every unfinished stage; returns the summary printed at the end."""
    from .evaluate import evaluate, write_json
    from .prepare import PrepareOptions, collect_sources
    from .report import write_report
    from .train import train

    run = FitRun(Path(cfg.out))
    run.out.mkdir(parents=True, exist_ok=True)
    cfg = replace(cfg, pairs=str(run.pairs))

    if (run.pairs / "summary.json").is_file():
        log(f"degrade: done ({run.pairs}; delete it to degrade again)")
        summary = json.loads((run.pairs / "summary.json").read_text())
    else:
        if test_count is None:
            test_count = max(1, len(collect_sources(clean_dir)) // 10)
        options = PrepareOptions(size=pair_size(cfg.size), seed=cfg.seed, parser=parser, no_face="skip")
        start = time.perf_counter()
        summary = degrade_with_progress(clean_dir, run.pairs, options, test_count, max(1, cfg.workers))
        run.finished("degrade", time.perf_counter() - start, skipped={**summary["failed"], **{
            n: "no face found" for n in summary["no_face"]}})
        log(f"degrade: {summary['pairs']} pairs ({summary['test']} held out) at {options.size} px, parser "
            f"{summary['parser']}")
    if summary["pairs"] == 0:
        raise ValueError(f"no usable image in {clean_dir}: {json.dumps(run.record.get('skipped', {}))}")

    if run.record.get("trained_steps", -1) >= cfg.steps:
        # the trainer checks a resume in full; a finished run is checked here on its plain settings (the base
        # is fingerprinted when its weights are loaded to evaluate)
        check_resume(run.out / "config.json", asdict(cfg), log)
        log(f"train: done ({run.record['trained_steps']} steps)")
    else:
        start = time.perf_counter()
        try:
            result = train(cfg, log=log)
        finally:
            run.finished("train", time.perf_counter() - start)
        if result["step"] >= cfg.steps:
            run.finished("train", 0.0, trained_steps=result["step"])
    latest = run.out / "latest.safetensors"
    if run.record.get("trained_steps", -1) >= cfg.steps and (
            not run.weights.is_file() or run.weights.stat().st_mtime < latest.stat().st_mtime):
        with atomic_path(run.weights) as tmp:
            shutil.copyfile(latest, tmp)
        log(f"export: {run.weights}")

    metrics = json.loads(run.eval_json.read_text()) if run.eval_json.is_file() else {}
    if metrics.get("step") == run.record.get("trained_steps", -1):
        log(f"evaluate: done ({run.eval_json})")
    elif run.record.get("trained_steps", -1) < cfg.steps:
        return {"steps": run.record.get("trained_steps", 0), "finished": False}
    else:
        start = time.perf_counter()
        split = "test" if summary["test"] else "train"
        metrics = evaluate(str(run.weights), str(run.pairs), split, cfg.base, "auto", cfg.vgg_weights,
                           cfg.random_vgg, str(run.grid), progress=True)
        metrics["step"] = run.record["trained_steps"]
        write_json(run.eval_json, metrics)
        run.finished("evaluate", time.perf_counter() - start)

    write_report(run.out)
    return {"steps": run.record["trained_steps"], "finished": True, "seconds": run.record["seconds"],
            "held_out": {side: metrics[side] for side in ("degraded", "restored")}, "count": metrics["count"],
            "split": metrics["split"], "skipped": run.record.get("skipped", {}), "weights": str(run.weights),
            "report": str(run.out / "report.html")}


def print_summary(s: dict, out=print) -> None:
    if not s["finished"]:
        out(f"stopped at step {s['steps']}; run the same command again to continue")
        return
    total = sum(s["seconds"].values())
    out(f"\n{s['steps']} steps in {total / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in
                                                                       s["seconds"].items()) + ")")
    out(f"held-out {s['split']} pairs: {s['count']}")
    out(f"{'':>10} {'LPIPS':>8} {'PSNR-Y':>8} {'SSIM-Y':>8}")
    for side in ("degraded", "restored"):
        m = s["held_out"][side]
        out(f"{side:>10} {m['lpips']:>8.4f} {m['psnr']:>8.2f} {m['ssim']:>8.4f}")
    for name, reason in s["skipped"].items():
        out(f"skipped {name}: {reason}")
    if s["skipped"]:
        out(f"{len(s['skipped'])} inputs skipped (exit code 1); the restorer was trained on the rest")
    out(f"weights: {s['weights']}\nreport:  {s['report']}")
