"""Planted bugs the suite must catch: `python build.py mutants`.

Each mutant is a small textual change that brings back a bug this project once had (or a reviewer showed the suite
let through). The runner plants each one in a scratch copy of the tree, runs only the tests named for it, and calls
it killed when at least one of them fails. A survivor means a test that a wrong implementation passes: fix the test.
A mutant whose original text is gone is "stale": the code moved, so the mutant must move with it.

Stdlib only. Not part of `build.py test` (it takes minutes); run it after changing a test or the code a mutant names.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    bug: str  # what goes wrong for a user
    file: str  # relative to the repository root
    original: str  # must occur exactly once in `file`
    planted: str
    tests: tuple[str, ...]  # pytest node ids; tests/blender/... run in the Blender venv


MUTANTS: list[Mutant] = [
    Mutant("tiles blended with a hard cut in the middle of the overlap",
           "engine/tiling.py",
           "        r = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap\n",
           "        r = np.where(np.arange(overlap) < overlap // 2, 1e-4, 1.0).astype(np.float32)\n",
           ("tests/test_tiling.py",)),
    Mutant("face paste-back mask replaced by the whole feathered square",
           "engine/faces/align.py",
           "    return mask * ramp[:, None] * ramp[None, :]\n",
           "    return ramp[:, None] * ramp[None, :]\n",
           ("tests/test_faces.py::test_the_change_reaches_the_hair_and_spares_neck_clothes_and_background_inside_the_crop",)),
    Mutant("a do-nothing model's change taken against the 8-bit-rounded crop",
           "engine/faces/restore.py",
           "                changes = [(f.frame, a - c, m) for (f, c, m), a in zip(faces, after)]\n",
           "                changes = [(f.frame, a - np.round(c * 255) / 255, m) for (f, c, m), a in zip(faces, after)]\n",
           ("tests/test_faces.py::test_with_an_identity_model_the_pasted_frame_equals_the_input",)),
    Mutant("the fast path loses the LoRA adapters, judged by the bf16 check alone",
           "engine/model.py",
           "        layer.merge()\n",
           "        pass\n",
           ("tests/test_fastpath.py::test_fast_path_matches_the_eager_fp32_reference[bf16-0.1]",)),
    Mutant("an in-place restore writes the input pixels back",
           "engine/jobs.py",
           "write_image(item.output, frame, result.rgb, pipeline.provenance)",
           "write_image(item.output, frame, frame.rgb if same_file(item.input, item.output) else result.rgb, "
           "pipeline.provenance)",
           ("tests/test_service.py::test_bad_images_and_outputs_are_named",)),
    Mutant("face crops drop the frame's colour profile",
           "engine/jobs.py",
           "    plain = replace(frame, alpha=None)",
           "    plain = Frame(frame.rgb, None, frame.bit_depth, frame.format, frame.grayscale)",
           ("tests/test_faces.py::test_the_cli_writes_numbered_crops_in_only_crops_mode",)),
    Mutant("the memory plan leaves out AdamW's moments",
           "training/memory_plan.py",
           "    return 2 * sum(p.numel() * 4 for p in params)\n",
           "    return 0\n",
           ("tests/test_memory_plan.py",)),
    Mutant("the memory plan's prediction drops the optimizer state",
           "training/memory_plan.py",
           "    return resident + optimizer_state + batch * max(0, peak_batch1 - resident)\n",
           "    return resident + batch * max(0, peak_batch1 - resident)\n",
           ("tests/test_memory_plan.py",)),
    Mutant("SPLAT_RESTORE_ACCEPT_LICENSE=0 or no taken as acceptance",
           "blender_addon/engine_link/licenses.py",
           'return os.environ.get(ACCEPT_ENV, "").strip().lower() in ("1", "true", "yes")',
           'return os.environ.get(ACCEPT_ENV, "").strip().lower() != ""',
           ("tests/test_difix.py::test_only_an_explicit_yes_in_the_environment_accepts",)),
    Mutant("cut detection switched off in temporal fusion",
           "engine/temporal/fusion.py",
           "        if self.carried < c.cut:\n",
           "        if self.carried < 0:\n",
           ("tests/test_temporal.py::test_the_first_frame_after_a_cut_is_its_per_frame_restore_in_every_pixel",)),
    Mutant("the flicker ratio taken as the mean of per-frame ratios",
           "engine/temporal/flicker.py",
           '        return self.mean / self.reference_mean if self.reference_mean > 0 else float("inf")\n',
           '        return float(np.mean(np.divide(self.frames, self.reference))) if self.reference_mean > 0 '
           'else float("inf")\n',
           ("tests/test_temporal.py::test_a_constructed_flicker_measures_its_known_warping_error_and_ratio",
            "tests/test_temporal.py::test_flicker_cli_prints_per_frame_values_mean_and_ratio")),
    Mutant("the flicker's warping error summed over the colour channels (3x the levels it reports)",
           "engine/temporal/flicker.py",
           "    diff = np.abs(current - warp(previous, pair.backward)).mean(axis=2)\n",
           "    diff = np.abs(current - warp(previous, pair.backward)).sum(axis=2)\n",
           ("tests/test_temporal.py::test_a_constructed_flicker_measures_its_known_warping_error_and_ratio",
            "tests/test_temporal.py::test_flicker_cli_prints_per_frame_values_mean_and_ratio")),
    Mutant("evaluate's restored metrics computed on the degraded input",
           "training/evaluate.py",
           '        images = {"restored": restored, "degraded": degraded}\n',
           '        images = {"restored": degraded, "degraded": degraded}\n',
           ("tests/test_evaluate.py::test_with_a_model_that_returns_the_clean_image_the_restored_numbers_are_perfect",)),
    Mutant("evaluate's degraded baseline computed on the restored image",
           "training/evaluate.py",
           '        images = {"restored": restored, "degraded": degraded}\n',
           '        images = {"restored": restored, "degraded": restored}\n',
           ("tests/test_evaluate.py::test_the_degraded_numbers_are_the_mean_psnr_and_ssim_of_the_degraded_inputs",)),
    Mutant("SSIM with a 7x7 box window instead of BasicSR's 11x11 Gaussian",
           "engine/measure/fidelity.py",
           "    g = torch.exp(-((torch.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2)).double()\n",
           "    g = torch.ones(7).double()\n",
           ("tests/test_measure.py::test_ssim_is_basicsr_calculate_ssim_on_a_blurred_noisy_photo",)),
    Mutant("PSNR and SSIM without BasicSR's 8-bit rounding",
           "engine/measure/fidelity.py",
           "    rgb = np.rint(np.clip(img, 0, 1) * 255) / 255\n",
           "    rgb = np.clip(img, 0, 1)\n",
           ("tests/test_measure.py::test_psnr_is_basicsr_calculate_psnr_on_a_blurred_noisy_photo",
            "tests/test_measure.py::test_ssim_is_basicsr_calculate_ssim_on_a_blurred_noisy_photo")),
    Mutant("PSNR and SSIM without BasicSR's clamp to [0, 1]",
           "engine/measure/fidelity.py",
           "    rgb = np.rint(np.clip(img, 0, 1) * 255) / 255\n",
           "    rgb = np.rint(img * 255) / 255\n",
           ("tests/test_measure.py::test_psnr_is_basicsr_calculate_psnr_on_a_blurred_noisy_photo",
            "tests/test_measure.py::test_ssim_is_basicsr_calculate_ssim_on_a_blurred_noisy_photo")),
]


def tree_files(root: Path) -> list[str]:
    """The files a clean checkout with this session's work would have: tracked plus untracked, not ignored."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                         capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def plant(tree: Path, m: Mutant) -> bool:
    path = tree / m.file
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    if text.count(m.original) != 1:
        return False
    path.write_text(text.replace(m.original, m.planted), encoding="utf-8")
    return True


def run_tests(tree: Path, tests: tuple[str, ...], pythons: dict[str, str]) -> list[int]:
    """pytest's exit code per venv: 1 means a test failed (killed); 0 survived; others are errors of the run."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    groups = {"blender": [t for t in tests if t.startswith("tests/blender")],
              "engine": [t for t in tests if not t.startswith("tests/blender")]}
    codes = []
    for venv, ids in groups.items():
        if ids:
            cmd = [pythons[venv], "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *ids]
            codes.append(subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL).returncode)
    return codes


def judge(m: Mutant, files: list[str], pythons: dict[str, str]) -> str:
    with tempfile.TemporaryDirectory(prefix="splat-restore-mutant-") as scratch:
        tree = Path(scratch)
        for f in files:
            (tree / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, tree / f)
        if not plant(tree, m):
            return "stale"
        codes = run_tests(tree, m.tests, pythons)
    if 1 in codes:
        return "killed"
    return "survived" if all(c == 0 for c in codes) else f"error (pytest exit {codes})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", dest="only", default="", help="only mutants whose bug or file contains this text")
    a = ap.parse_args(argv)
    pythons = {"engine": os.environ.get("SPLAT_RESTORE_ENGINE_PYTHON", sys.executable),
               "blender": os.environ.get("SPLAT_RESTORE_BLENDER_PYTHON", sys.executable)}
    files = tree_files(ROOT)
    chosen = [m for m in MUTANTS if a.only in m.bug or a.only in m.file]
    width = max((len(m.bug) for m in chosen), default=10)
    print(f"{'bug':<{width}}  {'result':<8}  seconds", flush=True)
    bad = 0
    for m in chosen:
        start = time.perf_counter()
        result = judge(m, files, pythons)
        bad += result != "killed"
        print(f"{m.bug:<{width}}  {result:<8}  {time.perf_counter() - start:7.1f}", flush=True)
    print(f"{len(chosen) - bad} of {len(chosen)} killed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
