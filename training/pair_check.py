"""`python -m training check-pairs DIR [--align] [--json]`: is each (render, photo) pair fit to train on?

A misaligned target teaches blur, a darker photo teaches a colour shift, a blurrier photo teaches blur again; a pair
is flagged, with its reasons, when any of these goes past the thresholds below (see misalignment.py for how each is
measured and align.py for what --align does). The thresholds are lenient on purpose: a render and a sharper render
of the same scene, or a well-made render/photo pair, passes all of them.

The result is written to DIR/pair_check.json with each pair's fingerprint (size, mtime and hash of both files):
`flagged_pairs` reads only the entries whose files are unchanged, so editing, replacing or aligning a pair makes its
old verdict void instead of silently skipping (or keeping) it. `train --pairs` / `fit --pairs` (through PairDataset)
skip the pairs flagged there, naming them; `ensure_checked` measures the pairs that have no current verdict.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from engine.atomic import write_bytes_atomic
from engine.images import ImageError, encode_image, read_image

from .align import align
from .aligned_files import (keep_original, original_of, read_valid, remove_valid, valid_mask_state, write_clean,
                            write_valid)
from .misalignment import TooSmall, measure
from .pairs import file_fingerprint, matches_fingerprint, validate_pairs

CHECK_FILE = "pair_check.json"
MAX_MEDIAN_PX = 1.5  # a median displacement above this is a misaligned pair
MIN_VALID_SHARE = 0.4  # of the textured pixels, the share whose flow passes the forward-backward test
MIN_TEXTURED_SHARE = 0.002  # below this there is nothing to measure alignment on
BLURRIER = 0.8  # flagged when the photo's sharpness is under this fraction of the render's
EXPOSURE_RANGE = (0.8, 1.25)  # per-channel photo/render mean ratio: about a third of a stop either way
WORSE_BY_PX = 0.25  # an alignment that raises the median by more than this is undone
SUMMARY = ("median_px", "p95_px", "shift_px", "valid_share")


def thresholds(max_median: float = MAX_MEDIAN_PX) -> dict:
    return {"max_median_px": max_median, "min_valid_share": MIN_VALID_SHARE, "min_textured_share":
            MIN_TEXTURED_SHARE, "photo_sharpness_at_least": BLURRIER, "exposure_ratio_range": list(EXPOSURE_RANGE)}


def reasons_for(m: dict, max_median: float) -> list[str]:
    reasons = []
    if m["textured_share"] < MIN_TEXTURED_SHARE:
        reasons.append(f"too little texture to measure alignment on ({m['textured_share']:.1%} of the render)")
    elif m["median_px"] is None or m["valid_share"] < MIN_VALID_SHARE:
        reasons.append(f"only {m['valid_share']:.0%} of the textured pixels pass the forward-backward flow check "
                       f"(at least {MIN_VALID_SHARE:.0%}): photo and render may not show the same thing")
    if m["median_px"] is not None and m["median_px"] > max_median:
        dx, dy = m["shift_px"]
        reasons.append(f"misaligned: median displacement {m['median_px']:.2f} px > {max_median:g} px (shift "
                       f"{dx:+.2f}, {dy:+.2f} px); `check-pairs --align` registers the photo")
    if m["sharpness_photo"] < BLURRIER * m["sharpness_render"]:
        reasons.append(f"photo blurrier than the render (sharpness {m['sharpness_photo']:.0f} vs "
                       f"{m['sharpness_render']:.0f}): it would teach blur")
    off = [f"{c} {r:.2f}" for c, r in zip("RGB", m["exposure_ratio"])
           if r is not None and not EXPOSURE_RANGE[0] <= r <= EXPOSURE_RANGE[1]]
    if off:
        reasons.append(f"exposure/colour differs: photo/render mean ratio {', '.join(off)} (outside "
                       f"{EXPOSURE_RANGE[0]:g} to {EXPOSURE_RANGE[1]:g})")
    return reasons


def _read_pair(degraded: Path, photo: Path):
    render, frame = read_image(degraded), read_image(photo)
    if render.rgb.shape != frame.rgb.shape:  # headers matched, but a photo's EXIF orientation turns it
        raise ImageError(photo, f"is {frame.size[0]}x{frame.size[1]} once decoded (EXIF orientation applied), the "
                                f"render {render.size[0]}x{render.size[1]}")
    return render.rgb, frame


def _measure(folder: Path, name: str, degraded: Path, clean: Path) -> dict:
    render, frame = _read_pair(degraded, clean)
    state = valid_mask_state(folder, name, clean)
    valid = read_valid(folder, name, render.shape) if state == "current" else None
    notes = [f"valid/{name}.png belongs to another photo: ignored (run --align again)"] if state == "stale" else []
    return measure(render, frame.rgb, valid) | {"notes": notes}


def _align(folder: Path, name: str, degraded: Path, clean: Path) -> dict:
    source = original_of(folder, clean)
    render, frame = _read_pair(degraded, source)
    before = measure(render, frame.rgb)
    result = align(render, frame.rgb, frame.alpha, before["shift_px"] or (0.0, 0.0))
    after = measure(render, result.rgb, result.valid) if result.method else None
    note = result.note
    if after is not None and before["median_px"] is not None and (
            after["median_px"] is None or after["median_px"] > before["median_px"] + WORSE_BY_PX):
        note, after = f"aligning ({result.method}) made it worse ({before['median_px']} -> {after['median_px']} px " \
                      f"median): the photo is left unaligned", None
    info = {"method": result.method if after else None, "note": note, "source": source.relative_to(folder).as_posix()}
    if after is None:  # clean/ gets the original back: an earlier alignment's copy and mask no longer apply
        if source != clean:
            write_clean(folder, clean, source, source.read_bytes())
        remove_valid(folder, name)
        failed = result.method is None  # a reason to flag the pair; made worse: a note, the measures decide
        return before | {"before": {k: before[k] for k in SUMMARY}, "align": info,
                         "notes": [note] if note and not failed else [], "align_failed": failed}
    kept = source if source != clean else keep_original(folder, clean)
    write_clean(folder, clean, kept, encode_image(dataclasses.replace(frame, alpha=result.alpha), result.rgb,
                                                  clean.suffix))
    write_valid(folder, name, result.valid, clean)
    info |= {"matrix": result.matrix, "correlation": result.correlation,
             "masked_share": round(float(1 - result.valid.mean()), 4)}
    return after | {"before": {k: before[k] for k in SUMMARY}, "align": info, "notes": [note] if note else []}


def check_pair(folder: Path, degraded: Path, clean: Path, max_median: float = MAX_MEDIAN_PX,
               align_photo: bool = False) -> dict:
    """One pair's entry: its measures, `flagged`, `reasons`, and the fingerprint of both files as they are now."""
    name = degraded.relative_to(folder / "degraded").with_suffix("").as_posix()
    entry = {"name": name, "degraded": degraded.relative_to(folder).as_posix(),
             "clean": clean.relative_to(folder).as_posix()}
    try:
        measured = (_align if align_photo else _measure)(folder, name, degraded, clean)
        reasons = reasons_for(measured, max_median)
        if measured.pop("align_failed", False):  # asked to align and could not: the target cannot be trusted
            reasons.append(measured["align"]["note"])
    except ImageError as e:
        measured, reasons = {}, [f"cannot read {e.path}: {e.problem}"]
    except TooSmall as e:
        measured, reasons = {}, [f"cannot measure: {e}"]
    entry |= measured | {"flagged": bool(reasons), "reasons": reasons}
    entry["fingerprint"] = {k: file_fingerprint(p) for k, p in (("degraded", degraded), ("clean", clean))}
    return entry


def _pair_folder(folder) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"pair folder {folder} does not exist (or is not a folder)")
    return folder


def check_pairs(folder, align_photos: bool = False, max_median: float = MAX_MEDIAN_PX, progress=None) -> dict:
    """Check (and with `align_photos`, first align) every complete pair; write DIR/pair_check.json; return the
    result: {"pairs": [...], "flagged": [names], "threshold_px", "thresholds", "folder_report", "ok"}."""
    if not max_median > 0:
        raise ValueError(f"--max-median must be a positive number of pixels, not {max_median}")
    folder = _pair_folder(folder)
    report = validate_pairs(folder)
    entries = []
    try:
        for degraded, clean in report.pairs:
            entries.append(check_pair(folder, degraded, clean, max_median, align_photos))
            if progress:
                progress(entries[-1])
        _write(folder, entries, max_median)
    except OSError as e:  # a read-only or full pairs folder: said with the path, not as a traceback
        raise ValueError(f"pair folder {folder}: {e.strerror or e}: {e.filename or ''}") from None
    flagged = [e["name"] for e in entries if e["flagged"]]
    return {"folder": str(folder), "pairs": [{k: v for k, v in e.items() if k != "fingerprint"} for e in entries],
            "flagged": flagged, "threshold_px": max_median, "thresholds": thresholds(max_median),
            "aligned": align_photos, "folder_report": report.describe().splitlines(),
            "ok": report.ok and not flagged}


def _write(folder: Path, entries: list, max_median: float) -> None:
    record = {"version": 1, "thresholds": thresholds(max_median), "pairs": entries}
    write_bytes_atomic(folder / CHECK_FILE, json.dumps(record, indent=1).encode())


def _recorded(folder: Path) -> dict:
    try:
        record = json.loads((folder / CHECK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or damaged: as if never checked
        return {}
    return record if isinstance(record, dict) and isinstance(record.get("pairs"), list) else {}


def current_entries(folder) -> dict:
    """{name: entry} of the recorded verdicts whose two files are still the ones measured."""
    folder = Path(folder)
    current = {}
    for e in _recorded(folder).get("pairs", []):
        try:
            if all(matches_fingerprint(folder / e[k], e["fingerprint"][k]) for k in ("degraded", "clean")):
                current[e["name"]] = e
        except (KeyError, TypeError):
            continue
    return current


def flagged_pairs(folder) -> dict:
    """{pair name: its reasons} flagged by a current check of `folder`; stale or missing verdicts count as none."""
    return {name: "; ".join(e.get("reasons", [])) for name, e in current_entries(folder).items() if e.get("flagged")}


def _refresh_times(folder: Path, entries) -> bool:
    """Entries that matched by content under new modification times (a copied folder) get the new times, so the
    next reader compares times instead of hashing every file again."""
    moved = False
    for e in entries:
        for k in ("degraded", "clean"):
            mtime = (folder / e[k]).stat().st_mtime_ns
            if e["fingerprint"][k].get("mtime_ns") != mtime:
                e["fingerprint"][k]["mtime_ns"], moved = mtime, True
    return moved


def ensure_checked(folder, log=print) -> dict:
    """Measure the pairs without a current verdict (none when the folder was checked since it last changed), keep
    the others, and return `flagged_pairs`, logging them."""
    folder = _pair_folder(folder)
    report = validate_pairs(folder)
    current = current_entries(folder)
    max_median = _recorded(folder).get("thresholds", {}).get("max_median_px", MAX_MEDIAN_PX)
    todo = [(d, c) for d, c in report.pairs
            if d.relative_to(folder / "degraded").with_suffix("").as_posix() not in current]
    moved = _refresh_times(folder, current.values())
    if todo or moved:
        if todo:
            log(f"check-pairs: measuring {len(todo)} pairs of {folder} without a current check")
        new = [check_pair(folder, d, c, max_median) for d, c in todo]
        names = {d.relative_to(folder / "degraded").with_suffix("").as_posix() for d, _ in report.pairs}
        _write(folder, sorted([e for e in current.values() if e["name"] in names] + new, key=lambda e: e["name"]),
               max_median)
    flagged = flagged_pairs(folder)
    if flagged:
        log(f"check-pairs: {len(flagged)} flagged pairs are skipped: " + "; ".join(f"{n} ({r})"
                                                                                for n, r in flagged.items()))
    return flagged


def _num(v, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def _cell(entry: dict, key: str, fmt) -> str:
    now = fmt(entry.get(key))
    return f"{fmt(entry['before'].get(key))} -> {now}" if "before" in entry else now


def format_table(result: dict) -> str:
    """One line per pair (before -> after when aligned), then the flagged pairs with their reasons."""
    shift = (lambda s: "-" if s is None else f"{s[0]:+.2f},{s[1]:+.2f}")
    header = ("pair", "median px", "p95 px", "shift px (dx,dy)", "valid", "exposure R/G/B", "sharpness r/p",
              "verdict")
    rows = [header]
    for e in result["pairs"]:
        if "median_px" not in e and "textured_share" not in e:  # unreadable
            rows.append((e["name"], "-", "-", "-", "-", "-", "-", "FLAGGED"))
            continue
        rows.append((e["name"], _cell(e, "median_px", _num), _cell(e, "p95_px", _num), _cell(e, "shift_px", shift),
                     _cell(e, "valid_share", lambda v: _num(v, ".0%")),
                     "/".join(_num(r) for r in e["exposure_ratio"]),
                     f"{e['sharpness_render']:.0f}/{e['sharpness_photo']:.0f}",
                     ("FLAGGED" if e["flagged"] else "ok") + (f" ({e['align']['method'] or 'not aligned'})"
                                                             if "align" in e else "")))
    widths = [max(len(r[k]) for r in rows) for k in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for e in result["pairs"]:
        for text in e["reasons"]:
            lines.append(f"{e['name']}: {text}")
        for text in e.get("notes", []):
            lines.append(f"{e['name']}: note: {text}")
    flagged = result["flagged"]
    lines.append(f"{len(flagged)} of {len(result['pairs'])} pairs flagged (median threshold {result['threshold_px']:g}"
                 f" px); checked pairs recorded in {Path(result['folder']) / CHECK_FILE}" if result["pairs"] else
                 "no complete pairs to measure")
    return "\n".join(lines)
