"""`python -m training fit CLEAN_DIR --out RUN`: clean faces in, a restorer out, in one command; or
`fit --pairs DIR [--init WEIGHTS] [--synthetic CLEAN_DIR] --out RUN`: a studio's own (render, photo) pairs in, used as
they are, fine-tuning a restorer that already works.

Stages, each skipped when a previous invocation finished it (so the same command resumes):
  degrade   -> RUN/pairs/ (CLEAN_DIR: held-out split; pairs written larger than the training crop so crops move)
  check     -> (--pairs) DIR/pair_check.json: misaligned or mismatched pairs are flagged, named and left out
  synthetic -> (--pairs --synthetic) RUN/synthetic/: degraded copies of CLEAN_DIR, all for training, mixed into the
               batches at --synthetic-share; the held-out numbers stay on the real 'test' pairs
  train     -> RUN/state.pt, checkpoints, losses.jsonl (the trainer's own exact resume)
  export    -> RUN/restorer.safetensors (engine format: `python -m engine restore --weights` and the add-on)
  evaluate  -> RUN/eval.json, RUN/eval_grid.png (held-out pairs, restored through the engine as users do; with
               --init, the init restorer too, the one the fine-tune must beat)
  report    -> RUN/report.html
Bad inputs (unreadable, too small, no face) are named and skipped; the rest trains.

`--reference` trains a restorer that takes a reference photo: with CLEAN_DIR (and --synthetic) `--identities FILE`
gives the degrade stage each image's identity, from which every pair is shown another photo of the same person; a
--pairs folder brings its own (reference/NAME.png, identities, or another capture camera's photo: references.py).
The export records views = 2, and evaluate restores each held-out pair with its reference.
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


def degrade_with_progress(clean_dir: Path, out: Path, options, test_count: int, workers: int,
                          identities: dict | None = None) -> dict:
    from tqdm import tqdm

    from .prepare import collect_sources, prepare

    with tqdm(total=len(collect_sources(clean_dir)), unit="img", desc="degrade", file=sys.stderr) as bar:
        def progress(record):
            if record["status"] == "failed" or (record["status"] == "no_face" and "file" not in record):
                bar.write(f"skipped {record['source']}: {record['reason']}", file=sys.stderr)
            bar.update(1)
        # the run owns its pairs folder: without summary.json it holds an earlier degrade's unfinished output
        return prepare(clean_dir, out, options, test_count, workers, progress, overwrite=True, identities=identities)


class FitRun:
    def __init__(self, out: Path):
        self.out = out
        self.pairs = out / "pairs"
        self.synthetic = out / "synthetic"
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


SKIPPED_KEY = {"degrade": "skipped", "synthetic": "synthetic_skipped"}  # in fit.json: the inputs each left out


def degrade_stage(run: FitRun, stage: str, clean_dir: Path, folder: Path, cfg: TrainConfig, test_count: int | None,
                  parser: str, log, identities: Path | None = None) -> dict:
    """Clean images -> the pairs folder `folder` of the run (RUN/pairs, or RUN/synthetic for --synthetic)."""
    from .prepare import PrepareOptions, collect_sources, identities_fingerprint
    from .references import read_identities

    ids = read_identities(identities) if identities else None
    if (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text())
        recorded = summary.get("identity_list")
        if recorded != identities_fingerprint(ids):  # its manifest holds the identities it was degraded with
            how = ("without --identities, not with " + str(identities) if recorded is None else
                   "with --identities, not without" if ids is None else f"with another --identities list than "
                                                                        f"{identities}")
            raise ValueError(f"{folder} was degraded {how}; delete it to degrade again, or use another --out")
        log(f"{stage}: done ({folder}; delete it to degrade again)")
    else:
        if test_count is None:
            test_count = max(1, len(collect_sources(clean_dir)) // 10)
        options = PrepareOptions(size=pair_size(cfg.size), seed=cfg.seed, parser=parser, no_face="skip")
        start = time.perf_counter()
        summary = degrade_with_progress(clean_dir, folder, options, test_count, max(1, cfg.workers), ids)
        skipped = {**summary["failed"], **{n: "no face found" for n in summary["no_face"]}}
        run.finished(stage, time.perf_counter() - start, **{SKIPPED_KEY[stage]: skipped})
        log(f"{stage}: {summary['pairs']} pairs ({summary['test']} held out) at {options.size} px, parser "
            f"{summary['parser']}")
    if summary["pairs"] == 0:
        raise ValueError(f"no usable image in {clean_dir}: {json.dumps(run.record.get(SKIPPED_KEY[stage], {}))}")
    return summary


def held_out_split(folder: Path, log) -> str:
    """'test' when the pairs folder's manifest holds some out (Blender's Make Training Pairs: every Nth camera)."""
    from .pairs import manifest_splits

    if "test" in (manifest_splits(folder) or {}).values():
        return "test"
    log(f"{folder} has no 'test' split (no manifest.jsonl, or none of its pairs held out): the held-out numbers "
        f"are on training pairs, so they say how well it fits, not how well it generalises")
    return "train"


def fit(clean_dir: Path | None, cfg: TrainConfig, test_count: int | None = None, parser: str = "auto",
        log=print, synthetic: Path | None = None, identities: Path | None = None) -> dict:
    """Run every unfinished stage; returns the summary printed at the end. Without `clean_dir`, `cfg.pairs` is
    the pairs folder, used as it is; `synthetic` (clean images) then adds synthetic pairs. `identities` (an
    `image_name identity_id` list) goes to the degrade stages, for --reference."""
    from .evaluate import evaluate, write_json
    from .pair_check import ensure_checked
    from .report import write_report
    from .starting_point import check_init_license
    from .train import train

    check_init_license(cfg)  # a licence to accept (or an init of the wrong view count) stops the run before writing
    degraded = clean_dir if clean_dir is not None else synthetic
    if identities and degraded is None:
        raise ValueError("--identities applies to the images fit degrades (CLEAN_DIR, --synthetic); a --pairs folder "
                         "carries its own references (reference/NAME.png, identities in its manifest, or cameras)")
    if cfg.reference and degraded is not None and not identities:
        raise ValueError(f"--reference needs --identities FILE (`image_name identity_id` per line) for the images of "
                         f"{degraded}: each pair is shown another photo of the same person, and fit cannot tell who "
                         f"is who")
    run = FitRun(Path(cfg.out))
    mode = "clean" if clean_dir is not None else "pairs"
    made = run.record.get("mode", "clean" if run.record["seconds"] else mode)  # runs from before --pairs: clean
    if made != mode:
        raise ValueError(f"run {run.out} was made with {'CLEAN_DIR' if made == 'clean' else '--pairs'}, not "
                         f"{'CLEAN_DIR' if mode == 'clean' else '--pairs'}; start a new run with another --out")
    run.out.mkdir(parents=True, exist_ok=True)
    run.record["mode"] = mode

    if clean_dir is not None:
        cfg = replace(cfg, pairs=str(run.pairs))
        summary = degrade_stage(run, "degrade", clean_dir, run.pairs, cfg, test_count, parser, log, identities)
        split = "test" if summary["test"] else "train"
    else:
        ensure_checked(Path(cfg.pairs), log)  # PAIR CHECK: the pairs it flags are left out of training and evaluation
        split = held_out_split(Path(cfg.pairs), log)
        if synthetic is not None:
            cfg = replace(cfg, synthetic_pairs=str(run.synthetic))
            degrade_stage(run, "synthetic", synthetic, run.synthetic, cfg, 0, parser, log, identities)

    trained = run.record.get("trained_steps", -1)
    if trained >= cfg.steps:
        # the trainer checks a resume in full; a finished run is checked here on its plain settings and the init's
        # fingerprint (the base is fingerprinted when its weights are loaded to evaluate)
        from engine.weights.lineage import init_fingerprint

        check_resume(run.out / "config.json", asdict(cfg) | {
            "init_fingerprint": init_fingerprint(cfg.init) if cfg.init else ""}, log)
        log(f"train: done ({trained} steps)")
    else:
        start = time.perf_counter()
        try:
            result = train(cfg, log=log)
        finally:
            run.finished("train", time.perf_counter() - start)
        if result["step"] >= cfg.steps:
            run.finished("train", 0.0, trained_steps=result["step"])
    trained = run.record.get("trained_steps", -1)
    latest = run.out / "latest.safetensors"
    if trained >= cfg.steps and (not run.weights.is_file() or run.weights.stat().st_mtime < latest.stat().st_mtime):
        with atomic_path(run.weights) as tmp:
            shutil.copyfile(latest, tmp)
        log(f"export: {run.weights}")

    metrics = json.loads(run.eval_json.read_text()) if run.eval_json.is_file() else {}
    if metrics.get("step") == trained:
        log(f"evaluate: done ({run.eval_json})")
    elif trained < cfg.steps:
        return {"steps": max(0, trained), "finished": False}
    else:
        start = time.perf_counter()
        # a fine-tune loads its init from its own lineage; --base applied to the init when it was loaded
        metrics = evaluate(str(run.weights), cfg.pairs, split, None if cfg.init else cfg.base, "auto",
                           cfg.vgg_weights, cfg.random_vgg, str(run.grid), accept_license=cfg.accept_license,
                           progress=True, init=cfg.init, init_base=cfg.base)
        metrics["step"] = trained
        write_json(run.eval_json, metrics)
        run.finished("evaluate", time.perf_counter() - start)

    write_report(run.out)
    return {"steps": trained, "finished": True, "seconds": run.record["seconds"], "mode": mode,
            "held_out": {side: metrics[side] for side in metrics.get("sides", ("degraded", "restored"))},
            "count": metrics["count"], "split": metrics["split"],
            "skipped": {k: v for key in SKIPPED_KEY.values() for k, v in run.record.get(key, {}).items()},
            "weights": str(run.weights), "report": str(run.out / "report.html")}


def print_summary(s: dict, out=print) -> None:
    from .report import side_labels

    if not s["finished"]:
        out(f"stopped at step {s['steps']}; run the same command again to continue")
        return
    total = sum(s["seconds"].values())
    out(f"\n{s['steps']} steps in {total / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in
                                                                       s["seconds"].items()) + ")")
    out(f"held-out {s['split']} pairs: {s['count']}")
    labels = side_labels(list(s["held_out"]), s.get("mode") == "pairs")
    width = max(len(label) for label in labels.values())
    out(f"{'':>{width}} {'LPIPS':>8} {'PSNR-Y':>8} {'SSIM-Y':>8}")
    for side, m in s["held_out"].items():
        out(f"{labels[side]:>{width}} {m['lpips']:>8.4f} {m['psnr']:>8.2f} {m['ssim']:>8.4f}")
    for name, reason in s["skipped"].items():
        out(f"skipped {name}: {reason}")
    if s["skipped"]:
        out(f"{len(s['skipped'])} inputs skipped (exit code 1); the restorer was trained on the rest")
    out(f"weights: {s['weights']}\nreport:  {s['report']}")
