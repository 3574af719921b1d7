"""Planted bugs the suite must catch: `python build.py mutants`.

Each mutant is a small textual change that brings back a bug this project once had (or a reviewer showed the suite
let through). The runner plants each one in a scratch copy of the tree, runs only the tests named for it, and calls
it killed when at least one of them fails (they must all pass on the unchanged tree first). A survivor means a test that a wrong implementation passes: fix the test.
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
           "            changes = [(f.frame, a - c, m) for (f, c, m), a in zip(faces, output)]\n",
           "            changes = [(f.frame, a - np.round(c * 255) / 255, m) for (f, c, m), a in zip(faces, output)]\n",
           ("tests/test_faces.py::test_with_an_identity_model_the_pasted_frame_equals_the_input",)),
    Mutant("the fast path loses the LoRA adapters, judged by the bf16 check alone",
           "engine/model.py",
           "        layer.merge()\n",
           "        pass\n",
           ("tests/test_fastpath.py::test_fast_path_matches_the_eager_fp32_reference[bf16-0.1]",)),
    Mutant("an in-place restore writes the input pixels back",
           "engine/pipeline/steps.py",
           "write_image(item.output, frame, result.rgb, pipeline.provenance)",
           "write_image(item.output, frame, frame.rgb if item.input.resolve() == item.output.resolve() else "
           "result.rgb, pipeline.provenance)",
           ("tests/test_service.py::test_bad_images_and_outputs_are_named",)),
    Mutant("face crops drop the frame's colour profile",
           "engine/pipeline/steps.py",
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
           '        images = {"degraded": degraded} | {side: _restore(r, degraded, reference) for side, r in '
           'restorers.items()}\n',
           '        images = {"degraded": degraded} | {side: degraded for side in restorers}\n',
           ("tests/test_evaluate.py::test_with_a_model_that_returns_the_clean_image_the_restored_numbers_are_perfect",)),
    Mutant("evaluate's degraded baseline computed on the restored image",
           "training/evaluate.py",
           '        images = {"degraded": degraded} | {side: _restore(r, degraded, reference) for side, r in '
           'restorers.items()}\n',
           '        images = {"degraded": _restore(restorers["restored"], degraded, reference)} | {side: '
           '_restore(r, degraded, reference) for side, r in restorers.items()}\n',
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
    Mutant("write_image writes nothing",
           "engine/images.py",
           "        write_bytes_atomic(path, data)\n",
           "        pass\n",
           ("tests/test_difix.py::test_environment_accepts_for_farms",)),
    Mutant("the shipped example's restore never pastes the changes back",
           "engine/faces/restore.py",
           "            result = FrameResult(paste_changes(prepared.image, changes), \"faces\", reports)",
           "            result = FrameResult(prepared.image, \"faces\", reports)",
           ("tests/test_difix.py::test_the_shipped_example_restores_with_difix_weights",)),
    Mutant("bench-faces never times the paste",
           "engine/faces/restore.py",
           "        self._spent(\"paste\", time.perf_counter() - t, frames=1)\n",
           "        self._spent(\"paste\", 0.0, frames=1)\n",
           ("tests/test_faces.py::test_bench_faces_prints_the_stage_split",)),
    # issue 22's fixes
    Mutant("a NUL byte in a path is not refused where it is received",
           "blender_addon/engine_link/scan.py",
           '    if "\\0" in text:\n        return "the path holds a NUL byte, which no file name can"\n',
           "",
           ("tests/test_service.py::test_an_output_path_no_file_can_have_fails_its_request_before_restoring", "tests/test_service.py::test_an_input_path_no_file_can_have_is_bad_input_and_named")),
    Mutant("an output name with no room for the engine's temporary name is not refused",
           "blender_addon/engine_link/scan.py",
           "    room = MAX_NAME - _TEMPORARY_EXTRA if written else MAX_NAME\n",
           "    room = MAX_NAME\n",
           ("tests/test_service.py::test_an_output_path_no_file_can_have_fails_its_request_before_restoring",)),
    Mutant("JSON nested too deeply kills the reader thread",
           "blender_addon/engine_link/protocol.py",
           "    except RecursionError:",
           "    except ZeroDivisionError:",
           ("tests/test_service.py::test_a_line_nested_too_deeply_is_answered_without_an_id_and_reading_goes_on",)),
    Mutant("a fault answering one line ends the service's reading",
           "engine/service.py",
           "                except Exception as e:  # a fault answering one line",
           "                except OSError as e:  # a fault answering one line",
           ("tests/test_service.py::test_the_reader_answers_a_line_it_fails_to_handle_and_reads_on",)),
    Mutant("a fault checking one frame ends the service",
           "engine/service.py",
           "                except Exception as e:  # check_item means not to raise",
           "                except OSError as e:  # check_item means not to raise",
           ("tests/test_service.py::test_whatever_checking_one_frame_raises_costs_that_frame_only",)),
    Mutant("an output the OS refuses to probe raises instead of failing its frame",
           "engine/jobs.py",
           "        return _check_output(item, skip_existing, overwrite, allow_in_place)\n    except OSError as e:",
           "        return _check_output(item, skip_existing, overwrite, allow_in_place)\n    except LookupError as e:",
           ("tests/test_service.py::test_an_output_the_os_refuses_to_probe_fails_that_frame_only",)),
    Mutant("progress events do not name the frame they decided",
           "engine/service.py",
           "job.total, outcome.to_dict()))",
           "job.total))",
           ("tests/test_service.py::test_restore_a_list_reports_progress",)),
    Mutant("temporal shards start fusion afresh at their first frame",
           "engine/cli.py",
           "        before = preroll(every, shard_start(len(every), *shard), temporal.memory) if temporal and items else []",
           "        before = []",
           ("tests/test_shards.py::test_temporal_shards_write_every_frame_as_one_process_does",)),
    Mutant("a shard writes the frames it pre-rolled",
           "engine/pipeline/steps.py",
           "        if item.preroll:",
           "        if False:",
           ("tests/test_shards.py::test_a_temporal_shard_writes_and_counts_only_its_own_frames",)),
    Mutant("the fusion's memory too short for 1/255",
           "engine/temporal/fusion.py",
           "math.log(1 / 255) / math.log(self.carry)",
           "math.log(1 / 15) / math.log(self.carry)",
           ("tests/test_temporal.py::test_fusion_started_afresh_matches_the_full_run_within_1_255_after_its_memory",)),
    Mutant("a shard pre-rolls frames of another sequence",
           "engine/temporal/sequences.py",
           "    while first > limit and items[first - 1].sequence == items[start].sequence:",
           "    while first > limit:",
           ("tests/test_shards.py::test_a_shard_pre_rolls_at_most_the_fusion_memory_and_only_from_its_own_sequence",)),
    Mutant("after an engine crash the client resends frames already written",
           "blender_addon/frame_queue.py",
           "if request.decided:  # written",
           "if False:  # written",
           ("tests/test_engine_link.py::test_frames_the_engine_wrote_before_it_died_are_not_restored_again_in_place",)),
    Mutant("a missing frame does not use up its sequence index",
           "blender_addon/frame_queue.py",
           "        if self.sequence is not None:\n            self.next_index += 1\n",
           "",
           ("tests/test_frame_queue.py::test_a_frame_that_cannot_be_found_keeps_the_frames_around_it_from_being_fused",)),
    Mutant("the client writes to the engine under the reader's lock",
           "blender_addon/engine_link/client.py",
           "with self._write_lock:\n                self.process.stdin.write(",
           "with self._lock:\n                self.process.stdin.write(",
           ("tests/test_engine_link.py::test_the_engine_s_answers_are_taken_while_a_request_waits_to_be_written",)),
    Mutant("Restore Folder always overwrites",
           "blender_addon/operators.py",
           '        overwrite = self.existing == "overwrite"',
           "        overwrite = True",
           ("tests/blender/test_hardening.py::test_restore_folder_keeps_restored_files_already_in_the_output_folder",)),
    Mutant("an engine installed into a chosen folder is not the one used",
           "blender_addon/engine_setup.py",
           '    _prefs().engine_folder = "" if home == engine_home() else str(home)\n',
           "",
           ("tests/blender/test_engine_install.py::test_an_engine_installed_into_a_chosen_folder_is_the_one_used",)),
    Mutant("Restore Render leaves its temporary folder",
           "blender_addon/operators.py",
           "        if folder is not None:\n            shutil.rmtree(folder, ignore_errors=True)",
           "        pass",
           ("tests/blender/test_hardening.py::test_restore_render_leaves_no_temporary_files", "tests/blender/test_hardening.py::test_a_failed_restore_render_leaves_no_temporary_files", "tests/blender/test_hardening.py::test_a_cancelled_restore_render_leaves_no_temporary_files")),
    Mutant("Install Engine ignores the tested versions",
           "blender_addon/engine_install.py",
           '    pip = (*PIP, "--constraint", str(constraints))',
           "    pip = PIP",
           ("tests/test_engine_install.py::test_every_pip_step_keeps_to_the_constraints_the_tests_ran_with",)),
    Mutant("the add-on zip carries no constraints",
           "build.py",
           '        zf.writestr("engine_wheel/constraints.txt", constraints)\n',
           "",
           ("tests/test_engine_wheel.py::test_the_addon_zip_pins_the_engines_dependencies_at_the_versions_the_tests_run_with",)),
    Mutant("an engine requirement without an upper bound",
           "pyproject.toml",
           '    "diffusers>=0.30,<1",',
           '    "diffusers>=0.30",',
           ("tests/test_engine_wheel.py",)),
    Mutant("EXIF orientation ignored on read",
           "engine/images.py",
           "    pixels = _UPRIGHT[header.orientation](pixels)",
           "    pixels = _UPRIGHT[1](pixels)",
           ("tests/test_images.py::test_exif_orientation_is_applied_on_reading",)),
    Mutant("ICC profiles dropped on write",
           "engine/images.py",
           "    if frame.icc_profile:",
           "    if None:",
           ("tests/test_images.py::test_icc_profile_is_carried_to_the_output",)),
    Mutant("grey+alpha PNG comes back RGBA",
           "engine/images.py",
           "    if grey_alpha and pixels.shape[2] == 4:",
           "    if False:",
           ("tests/test_images.py::test_grey_with_alpha_stays_grey_with_alpha",)),
    Mutant("the detector silences the whole process's stderr",
           "engine/faces/detect.py",
           "for line in lines if not _MEDIAPIPE_CHATTER.match(line)))",
           "for line in lines if False))",
           ("tests/test_detector_stderr.py",)),
    Mutant("the web page keeps every result file",
           "engine/demo/actions.py",
           "            shutil.rmtree(previous, ignore_errors=True)",
           "            pass",
           ("tests/test_demo.py::test_result_files_stay_bounded_over_100_requests",)),
    Mutant("the web page imports training's metrics",
           "engine/demo/actions.py",
           "from ..measure.fidelity import psnr, ssim",
           "from training.evaluate import psnr, ssim",
           ("tests/test_layout.py::test_the_engine_imports_training_only_for_the_degrade_tab",)),
    Mutant("Blender's In Place render restore writes the input pixels back",
           "engine/pipeline/steps.py",
           "write_image(item.output, frame, result.rgb, pipeline.provenance)",
           "write_image(item.output, frame, frame.rgb if item.input.resolve() == item.output.resolve() else "
           "result.rgb, pipeline.provenance)",
           ("tests/blender/test_addon.py::test_in_place_replaces_each_frame_with_its_restore",)),
    Mutant("Install Engine switches to a new environment without probing it",
           "blender_addon/engine_install.py",
           "                probe = self._probe(python)\n",
           "                probe = {}\n",
           ("tests/test_engine_install.py::test_a_new_engine_whose_import_fails_its_probe_is_not_switched_to",
            "tests/test_engine_install.py::test_a_new_engine_whose_probe_prints_no_description_is_not_switched_to",
            "tests/blender/test_engine_install.py::"
            "test_an_install_whose_new_engine_fails_its_probe_leaves_the_engine_in_use")),
    Mutant("Install Engine takes a probe that printed no description as an empty one",
           "blender_addon/engine_install.py",
           '            probe = json.loads(next(line for line in reversed(self.tail) if line.startswith("{")))\n',
           '            probe = json.loads(next((line for line in reversed(self.tail) if line.startswith("{")), '
           '"{}"))\n',
           ("tests/test_engine_install.py::test_a_new_engine_whose_probe_prints_no_description_is_not_switched_to",)),
    Mutant("a failed Install Engine into another folder becomes the engine in use",
           "blender_addon/engine_setup.py",
           '    InstallState.note = str(job.error) if cancelled else ""\n    if job.error is not None:\n',
           '    InstallState.note = str(job.error) if cancelled else ""\n'
           '    _prefs().engine_folder = "" if job.installer.home == engine_home() else str(job.installer.home)\n'
           '    if job.error is not None:\n',
           ("tests/blender/test_engine_install.py::"
            "test_an_install_whose_new_engine_fails_its_probe_leaves_the_engine_in_use",)),
    Mutant("a render frame that cannot be found does not use up its sequence index (3 fused with 1)",
           "blender_addon/handlers.py",
           '        queue.record_missing(render.filepath, "cannot find the frame Blender just wrote")\n',
           '        queue.report.failed.append((render.filepath, "cannot find the frame Blender just wrote"))\n',
           ("tests/blender/test_addon.py::test_the_frame_after_one_that_cannot_be_found_is_restored_alone",)),
    Mutant("Restore Folder resends every render to an engine restarted after a crash",
           "blender_addon/engine_job.py",
           "        return client.restore(self.undecided(), **self.options, **request_options(self.reference, client))\n",
           "        return client.restore(self.items, **self.options, **request_options(self.reference, client))\n",
           ("tests/blender/test_hardening.py::"
            "test_restore_folder_sends_a_restarted_engine_only_the_renders_not_yet_restored",
            "tests/blender/test_hardening.py::"
            "test_renders_restored_before_an_engine_crash_are_reported_restored_not_skipped")),
    Mutant("Restore Folder's report forgets the renders a crashed engine restored",
           "blender_addon/engine_job.py",
           "        if not self.decided:\n",
           "        if True:\n",
           ("tests/blender/test_hardening.py::"
            "test_renders_restored_before_an_engine_crash_are_reported_restored_not_skipped",)),
    Mutant("a second degrade keeps the old pairs",
           "training/prepare.py",
           "    if pairs and not overwrite:",
           "    if False:",
           ("tests/test_degradation.py::test_a_second_degrade_into_a_folder_holding_pairs_is_refused_naming_it_and_overwrite",)),
    Mutant("degrade --overwrite merges into the old pairs",
           "training/prepare.py",
           "            replace_folder(staging, out)",
           "            shutil.copytree(staging, out, dirs_exist_ok=True)",
           ("tests/test_degradation.py::test_overwrite_replaces_the_pairs_whole",)),
    Mutant("degrade --overwrite deletes files it did not write",
           "training/prepare.py",
           "    if foreign:",
           "    if False:",
           ("tests/test_degradation.py::test_overwrite_never_deletes_files_degrade_did_not_write",)),
    Mutant("the dataset trains on pairs its manifest does not list",
           "training/pairs.py",
           "        found = {sub: {n: p for n, p in images.items() if n in listed} for sub, images in found.items()}\n",
           "",
           ("tests/test_training.py::test_the_dataset_reads_only_the_pairs_its_manifest_lists_and_names_the_rest",)),
    Mutant("a resume with other settings mixes them silently",
           "training/train.py",
           "        check_resume(out / \"config.json\", record, log)",
           "        pass",
           ("tests/test_training.py::test_a_resume_with_another_setting_is_refused_naming_both_values",)),
    Mutant("a resume on another base of the same shapes is taken",
           "training/train.py",
           "record = run_record(cfg, base_fingerprint=start.base_fingerprint,",
           "record = run_record(cfg, base_fingerprint=\"\",",
           ("tests/test_training.py::test_a_resume_on_another_base_of_the_same_shapes_is_refused_naming_both",)),
    Mutant("a folder the OS refuses to list is skipped without a word",
           "blender_addon/engine_link/scan.py",
           "    for here, dirs, files in os.walk(root, onerror=refuse):",
           "    for here, dirs, files in os.walk(root):",
           ("tests/test_scan.py::test_a_folder_that_cannot_be_listed_is_named_not_skipped",
            "tests/test_cli_restore.py::test_an_input_the_os_refuses_to_list_is_a_usage_error_naming_it")),
    # training modes (issue 27, item 14)
    Mutant("training's default is not bf16 mixed precision",
           "training/train.py",
           "    mixed_precision: str = \"bf16\"  # \"bf16\", \"fp16\" or \"no\"\n",
           "    mixed_precision: str = \"no\"  # \"bf16\", \"fp16\" or \"no\"\n",
           ("tests/test_training_modes.py::test_the_default_step_runs_in_bf16_autocast_over_fp32_weights_and_matches_the_fp32_step",)),
    Mutant("the training step ignores the mixed-precision setting",
           "training/train.py",
           "    acc = Accelerator(mixed_precision=cfg.mixed_precision, log_with=",
           "    acc = Accelerator(mixed_precision=\"no\", log_with=",
           ("tests/test_training_modes.py::test_the_default_step_runs_in_bf16_autocast_over_fp32_weights_and_matches_the_fp32_step",)),
    Mutant("--grad-accum sums micro-batch losses instead of averaging them",
           "training/train.py",
           "                acc.backward(loss / cfg.grad_accum)\n",
           "                acc.backward(loss)\n",
           ("tests/test_training_modes.py::test_grad_accum_of_two_micro_batches_takes_the_step_of_one_batch_twice_as_large",)),
    Mutant("--grad-accum steps the optimizer every micro-batch",
           "training/train.py",
           "                acc.backward(loss / cfg.grad_accum)\n            acc.clip_grad_norm_(params, cfg.max_grad_norm)\n            optimizer.step()\n",
           "                acc.backward(loss / cfg.grad_accum)\n                optimizer.step()\n            acc.clip_grad_norm_(params, cfg.max_grad_norm)\n",
           ("tests/test_training_modes.py::test_with_grad_accum_the_optimizer_and_its_schedule_count_steps_not_micro_batches",)),
    Mutant("processes never synchronise their gradients",
           "training/train.py",
           "                sync = acc.no_sync(model) if micro < cfg.grad_accum - 1 else contextlib.nullcontext()\n",
           "                sync = acc.no_sync(model)\n",
           ("tests/test_training_modes.py::test_two_processes_each_taking_one_pair_take_the_step_of_one_process_at_batch_two",)),
    Mutant("every process trains on the same micro-batches",
           "training/train.py",
           " * acc.num_processes + acc.process_index\n",
           " * acc.num_processes\n",
           ("tests/test_training_modes.py::test_two_processes_each_taking_one_pair_take_the_step_of_one_process_at_batch_two",)),
    Mutant("gradient checkpointing cuts the graph at each VAE block",
           "engine/model.py",
           "            return checkpoint(block, *args, use_reentrant=False)\n",
           "            return checkpoint(block, *(a.detach() for a in args), use_reentrant=False)\n",
           ("tests/test_training_modes.py::test_a_gradient_checkpointed_step_recomputes_every_block_and_takes_the_plain_step",)),
    Mutant("ranks launched without CPU mode train alone on the same pairs",
           "training/train.py",
           "    if acc.num_processes != launched:",
           "    if False:",
           ("tests/test_training_modes.py::test_processes_launched_without_cpu_mode_on_a_machine_without_a_gpu_refuse_instead_of_training_alone",)),
    Mutant("init fine-tune: the warmup stays 500 steps whatever the run's length",
           "training/train.py",
           "    return min(MAX_WARMUP, cfg.steps // 10)\n",
           "    return MAX_WARMUP\n",
           ("tests/test_training.py::test_a_short_run_reaches_its_learning_rate_and_an_explicit_warmup_is_kept",)),
    Mutant("init fine-tune: the init's conv_in and skip convs train too (zeroing the new LoRA misses the init)",
           "engine/model.py",
           "        if self.lora_only:\n            return params\n",
           "",
           ("tests/test_init_finetune.py::test_with_its_new_lora_zeroed_the_checkpoint_restores_exactly_as_the_init",)),
    Mutant("init fine-tune: a fine-tune loads on whatever init it finds, unchecked",
           "engine/weights/lineage.py",
           "        if found != info.init.get(\"fingerprint\"):\n",
           "        if False:\n",
           ("tests/test_init_finetune.py::test_a_changed_moved_or_wrong_init_is_named",)),
    Mutant("init fine-tune: a fine-tune of Difix drops NVIDIA's licence",
           "training/starting_point.py",
           "license=init_info.license,",
           "license=\"\",",
           ("tests/test_init_finetune.py::test_the_engine_gates_a_fine_tune_of_difix_as_difix",)),
    Mutant("training pairs: a timeline marker's camera renders every pair instead of each capture camera",
           "blender_addon/pairs_render.py",
           "            marker.camera = None\n",
           "            pass\n",
           ("tests/blender/test_training_pairs.py::test_pairs_from_every_camera_at_each_photos_size_and_the_scene_kept",)),
    Mutant("training pairs: the scene's output format is left as PNG after making pairs",
           "blender_addon/pairs_render.py",
           '        _restore(render.image_settings, saved["image"], problems)\n',
           "        pass\n",
           ("tests/blender/test_training_pairs.py::test_cancel_between_cameras_leaves_only_whole_listed_pairs",)),
    Mutant("training pairs: a pair that could not be listed leaves its render and photo behind, unlisted",
           "blender_addon/pairs_operator.py",
           "            for path in moved:\n                path.unlink(missing_ok=True)\n",
           "            pass\n",
           ("tests/blender/test_training_pairs.py::test_a_pair_that_cannot_be_listed_is_removed_whole",)),
    Mutant("check-pairs: the flow is measured photo -> render, so a pair's shift is reported mirrored",
           "training/misalignment.py",
           "        self.forward = dis.calc(r8, p8, None)\n",
           "        self.forward = dis.calc(p8, r8, None)\n",
           ("tests/test_pair_check.py::test_a_pair_shifted_by_3_and_minus_2_px_is_measured_within_0_3_px_and_flagged",)),
    Mutant("check-pairs: invalid target pixels (no data after --align) reach the perceptual loss",
           "training/train.py",
           "        target = (guess + valid * (target.float() - guess)).to(target.dtype)\n",
           "        target = target.float().to(target.dtype)\n",
           ("tests/test_pair_check.py::test_invalid_pixels_never_reach_the_loss",)),
    Mutant("check-pairs: training uses the pairs check-pairs flagged",
           "training/dataset.py",
           "        rel = [(d, c, name) for d, c, name in rel if name not in self.skipped]\n",
           "        rel = list(rel)\n",
           ("tests/test_pair_check.py::test_training_skips_flagged_pairs_naming_them",)),
    Mutant("check-pairs: a second --align aligns the aligned copy again instead of the kept original",
           "training/aligned_files.py",
           "        return kept\n",
           "        return clean\n",
           ("tests/test_pair_check.py::test_a_second_align_starts_again_from_the_originals_and_a_new_photo_replaces_them",)),
    Mutant("Difix-ref: self-attention over the frame's tokens alone, the reference view never seen",
           "engine/model.py",
           "        joint = hidden_states.reshape(bv // self.views, self.views * n, d)\n",
           "        joint = hidden_states\n",
           ("tests/test_difix_ref.py::test_engine_matches_difix3d_mv_forward_in_fp32",)),
    Mutant("Difix-ref: the fast path's SDPA processors replace the cross-view attention in every restore",
           "engine/fastpath.py",
           "p if isinstance(p, CrossViewAttnProcessor) else AttnProcessor2_0()",
           "AttnProcessor2_0()",
           ("tests/test_difix_ref.py::test_runner_output_is_difix3ds_through_the_fast_path",)),
    Mutant("Difix-ref: a new reference photo restores with the previous photo's cached latent",
           "engine/runtime.py",
           "        entry = next((e for e in self._references if e[0] is reference), None)\n",
           "        entry = self._references[-1] if self._references else None\n",
           ("tests/test_difix_ref.py::test_runner_encodes_the_reference_once_per_shape",)),
    Mutant("fetch: a cancelled download starts over from zero (a partial file per process, as the hub's own)",
           "engine/weights/fetch.py",
           "    part = folder / hub_cache.STATE_DIR / hub_cache.PARTIAL / entry.key\n",
           "    part = folder / hub_cache.STATE_DIR / hub_cache.PARTIAL / f\"{entry.key}.{os.getpid()}\"\n",
           ("tests/test_fetch.py::test_a_fetch_killed_halfway_is_refused_by_the_engine_and_the_next_fetch_"
            "continues_it",)),
    Mutant("fetch: Blender's online access is not asked before Fetch goes online",
           "blender_addon/models_box.py",
           '    refusal = online.refusal(f"Fetching {model.label}")\n',
           '    refusal = ""\n',
           ("tests/blender/test_models.py::test_with_online_access_off_fetch_and_install_engine_are_refused_saying_"
            "where_to_turn_it_on",)),
    Mutant("install: Cancel kills pip but not what it started, which keeps the install waiting",
           "blender_addon/engine_install.py",
           "            os.killpg(process.pid, signal.SIGKILL)\n",
           "            process.kill()\n",
           ("tests/blender/test_engine_install.py::test_cancel_stops_pip_and_keeps_the_engine_in_use_exactly_as_"
            "it_was",)),
    Mutant("reference: face crops get the whole reference photo, not its face cut with the frames' framing",
           "engine/faces/restore.py",
           '        return {} if self.reference is None else {"reference": self.reference_face()}\n',
           '        return {} if self.reference is None else {"reference": self.reference.rgb}\n',
           ("tests/test_reference_faces.py::test_the_references_face_is_framed_like_the_frames_face",)),
    Mutant("reference: the service batches frames of requests with different reference photos together",
           "engine/service.py",
           "            if batch and job.reference != reference:  # served in a later batch, once this reference's "
           "are done\n",
           "            if False:\n",
           ("tests/test_reference_service.py::test_a_reference_is_read_and_encoded_once_for_the_requests_that_name_"
            "it",)),
    Mutant("reference training: a pair may be shown its own clean image as its reference",
           "training/references.py",
           "            others = [n for n in members.get(group, []) if n != name]  # never the pair's own clean image\n",
           "            others = members.get(group, [])\n",
           ("tests/test_reference_training.py::test_an_identity_reference_is_another_photo_of_the_person_never_the_"
            "pairs_own",)),
    Mutant("reference training: the restorer is shown its own degraded frame instead of the reference",
           "training/train.py",
           "                    loss, last = recipe_loss(restore(model, x, ref[0] if ref else None), y, perceptual, cfg, m)\n",
           "                    loss, last = recipe_loss(restore(model, x, x if ref else None), y, perceptual, cfg, m)\n",
           ("tests/test_reference_training.py::test_trained_with_references_the_right_reference_restores_better_than_"
            "a_wrong_one",)),
    Mutant("pipelined: a frame's faces tracked before the frame before it was",
           "engine/pipeline/steps.py",
           "            self.before.tracked.wait()\n",
           "            pass\n",
           ("tests/test_pipeline.py::test_pipelined_frames_are_byte_identical_to_serial_ones_with_tracking_and_fusion",
            "tests/test_pipeline.py::test_frames_of_several_sequences_tracked_and_fused_at_once_match_serial")),
    Mutant("pipelined: a frame fused before the frame before it was",
           "engine/pipeline/steps.py",
           "            before.fused.wait()\n",
           "            pass\n",
           ("tests/test_pipeline.py::test_pipelined_frames_are_byte_identical_to_serial_ones_with_tracking_and_fusion",
            "tests/test_pipeline.py::test_frames_of_several_sequences_tracked_and_fused_at_once_match_serial")),
    Mutant("pipelined: frames in flight unbounded (memory grows with the folder)",
           "engine/pipeline/run.py",
           "        self.limit = batch if not workers else 2 * batch + workers  # frames in flight",
           "        self.limit = batch if not workers else 10 ** 6  # frames in flight",
           ("tests/test_pipeline.py::test_frames_in_flight_never_exceed_twice_the_batch_plus_the_workers",)),
    Mutant("pipelined: outcomes reported as frames finish, not in the order given",
           "engine/pipeline/run.py",
           "            group, state, future = finishing.popleft()",
           "            group, state, future = finishing.popleft() if finishing[0][2].done() or len(finishing) == 1 "
           "else finishing.pop()",
           ("tests/test_pipeline.py::test_outcomes_come_in_the_order_given_when_later_frames_finish_first",)),
    Mutant("the service answers a cancelled request while its frames are still in flight",
           "engine/service.py",
           "        return not job.in_flight and (job.cancelled or",
           "        return (job.cancelled or",
           ("tests/test_service.py::test_a_pipelined_service_answers_each_request_after_all_its_frames_and_a_cancel_after_those_in_flight",)),
    Mutant("faces followed forever: no fresh detection every N frames",
           "engine/faces/track.py",
           "        follows = continues and state.tracks and state.since_detection + 1 < self.detect_every",
           "        follows = continues and state.tracks",
           ("tests/test_pipeline.py::test_pipelined_frames_are_byte_identical_to_serial_ones_with_tracking_and_fusion",
            "tests/test_face_tracking.py")),
    Mutant("8-bit outputs truncated instead of rounded",
           "engine/images.py",
           "    return cv2.addWeighted(bgr, 255.0, bgr, 0.0, 0.0, dtype=cv2.CV_8U)",
           "    return np.clip(bgr * 255.0, 0, 255).astype(np.uint8)",
           ("tests/test_images.py::test_8_bit_conversions_give_numpys_values_exactly",)),
    Mutant("restore's timings leave out whole frames (ms per frame overstated)",
           "engine/faces/restore.py",
           "            self._spent(\"paste\", 0.0, frames=1)\n",
           "            pass\n",
           ("tests/test_pipeline.py::test_timings_count_every_finished_frame_whole_or_faces",)),
    Mutant("bench-pipeline measures both tracking runs' flicker on the same outputs",
           "engine/benches/pipeline.py",
           "    flicker = measure_many({name: frames(out / name) for name in report},",
           "    flicker = measure_many({name: (read_image(out / name / p.name).rgb for p in paths) for name in report},",
           ("tests/test_pipeline.py::test_bench_pipeline_reports_efficiency_end_to_end_rate_and_each_stage",)),
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


def run_tests(tree: Path, tests: tuple[str, ...], pythons: dict[str, str], failures: list | None = None) -> list[int]:
    """pytest's exit code per venv: 1 means a test failed (killed); 0 survived; others are errors of the run.
    `failures`, when given, collects pytest's FAILED/ERROR summary lines."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    groups = {"blender": [t for t in tests if t.startswith("tests/blender")],
              "engine": [t for t in tests if not t.startswith("tests/blender")]}
    codes = []
    for venv, ids in groups.items():
        if ids:
            cmd = [pythons[venv], "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *ids]
            r = subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            codes.append(r.returncode)
            if failures is not None:
                failures += [line for line in r.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return codes


def copy_tree(files: list[str], tree: Path) -> None:
    for f in files:
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, tree / f)


def judge(m: Mutant, files: list[str], pythons: dict[str, str]) -> str:
    with tempfile.TemporaryDirectory(prefix="splat-restore-mutant-") as scratch:
        tree = Path(scratch)
        copy_tree(files, tree)
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
    # a kill only counts if the same tests pass on the tree as it is: a broken test or setup would "kill" everything
    with tempfile.TemporaryDirectory(prefix="splat-restore-mutant-") as scratch:
        copy_tree(files, Path(scratch))
        failures: list[str] = []
        codes = run_tests(Path(scratch), tuple(dict.fromkeys(t for m in chosen for t in m.tests)), pythons, failures)
    if any(codes):
        print(f"the mutants' tests fail on the unchanged tree (pytest exit {codes}): fix them first", *failures,
              sep="\n")
        return 2
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
