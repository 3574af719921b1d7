"""What a training run is: every setting that shapes its weights, recorded in RUN/config.json, and the check that a
resume changes none of them (Adam's moments, the scheduler's step and the RNG come from state.pt, so a resume with
another learning rate, base, prompt or data would silently train a mix of two runs).

Free to change on resume, because they change how long the run goes or how it is watched, not what a step computes:
the step counts (`steps`: the learning rate then follows the schedule of the new length from where the run stands,
its warmup kept as the run started it; `stop_after`), the logging and checkpoint intervals (`save_every`,
`sample_every`, `eval_every`), the loader's worker count (a batch is a function of seed and index in any worker),
gradient checkpointing (it recomputes the same forward), the licence acceptance (it changes no step), and where things
are: `out`, and `pairs`, `base`, `vgg_weights`, `init`, `synthetic_pairs`, which are compared by what they hold
instead (the fingerprints of the pairs, of the base weights, of the VGG weights, of the init restorer's weights and
of the synthetic pairs), so a moved folder resumes and a regenerated one does not. `warmup` is compared as the
effective warmup (`warmup_steps`), so `--warmup 10` resumes a run whose implicit warmup was 10. Everything else is
compared, the number of processes included; a deliberate change is a new run. `reference` (training with reference
photos, a 2-view restorer) is compared like any setting, and with it the pairs fingerprint covers which photos each
pair may be shown (reference/ files, identities, cameras): other references are other data.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

FREE_ON_RESUME = frozenset({"steps", "stop_after", "save_every", "sample_every", "eval_every", "workers",
                            "gradient_checkpointing", "out", "pairs", "base", "vgg_weights", "init", "synthetic_pairs",
                            "accept_license", "warmup"})
FINGERPRINT_OF = {"base_fingerprint": "base", "pairs_fingerprint": "pairs", "vgg_fingerprint": "vgg_weights",
                  "init_fingerprint": "init", "synthetic_fingerprint": "synthetic_pairs"}
# what a run recorded before these settings existed trained with
RECORDED_LATER = {"synthetic_share": 0.3, "init_fingerprint": "", "synthetic_fingerprint": "", "reference": False}


class RunMismatch(ValueError):
    pass


def pairs_fingerprint(*datasets) -> str:
    """Which pairs each split holds, by name and file size: adding, removing, moving between splits or regenerating
    pairs changes it (a regenerated PNG's size differs); moving the whole folder does not. With references, which
    photos each pair may be shown, by name and size (unchanged without: runs from before references resume)."""
    h = hashlib.sha256()
    for data in datasets:
        h.update(b"split\n")
        for pair in data.pairs:
            for path in pair:
                h.update(f"{path.relative_to(data.folder).as_posix()} {path.stat().st_size}\n".encode())
        if getattr(data, "references", None) is not None:
            for name in data.names:
                shown = data.references.describe(name)
                h.update(f"reference {name}: {' '.join(f'{p} {(data.folder / p).stat().st_size}' for p in shown)}"
                         f"\n".encode())
    return h.hexdigest()[:16]


def weights_fingerprint(module) -> str:
    """A hash of every tensor of a frozen module (the VGG of the perceptual loss: about 60 MB, a fraction of a
    second)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_record(cfg, *, base_fingerprint: str, pairs_fingerprint: str, vgg_fingerprint: str, processes: int,
               warmup_steps: int, init_fingerprint: str = "", synthetic_fingerprint: str = "") -> dict:
    return asdict(cfg) | {"base_fingerprint": base_fingerprint, "pairs_fingerprint": pairs_fingerprint,
                          "vgg_fingerprint": vgg_fingerprint, "processes": processes, "warmup_steps": warmup_steps,
                          "init_fingerprint": init_fingerprint, "synthetic_fingerprint": synthetic_fingerprint}


def read_record(path: Path) -> dict:
    """A run's config.json, with the settings added since it was written filled in as that run had them."""
    recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if "base_fingerprint" in recorded:
        recorded = RECORDED_LATER | {"warmup_steps": recorded.get("warmup")} | recorded
    return recorded


def check_resume(path: Path, record: dict, log=print) -> None:
    """Refuse to continue the run recorded in `path` (its config.json) with settings other than its own.

    Only the keys of `record` are compared, so `fit` can check a finished run's plain settings without loading the
    base to fingerprint it."""
    recorded = read_record(path)
    if "base_fingerprint" not in recorded:
        log(f"{path.parent} has no recorded configuration (started before runs recorded one), so this resume cannot "
            f"be checked against it; recording this invocation's settings")
        return
    changed = sorted(k for k in record if k not in FREE_ON_RESUME and recorded.get(k) != record[k])
    if changed:
        lines = [f"  {k}: {_show(recorded, k)} in the run, {_show(record, k)} now" for k in changed]
        raise RunMismatch(f"run {path.parent} was started with other settings; resuming would train a mix of "
                          f"both:\n" + "\n".join(lines) + f"\nresume it with its own settings (recorded in {path}), "
                          f"or start a new run with another --out")


def _show(record: dict, key: str) -> str:
    value = json.dumps(record.get(key))
    source = FINGERPRINT_OF.get(key)
    return f"{value} ({source} {json.dumps(record.get(source))})" if source else value
