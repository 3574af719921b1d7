"""Synthetic training pairs on real bundled faces: regions where they belong, damage where avatars fail, repeatable."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.cli import main
from training.degrade import DEFAULT_STRENGTHS, degrade
from training.face_regions import REGIONS, MediapipeParser, ParserUnavailable, SegformerParser, make_parser
from training.prepare import face_crop

pytest.importorskip("mediapipe")


@pytest.fixture(scope="module")
def faces():
    from engine.faces.bundled import bundled_faces

    return bundled_faces()


@pytest.fixture(scope="module")
def parser():
    return MediapipeParser()


@pytest.fixture(scope="module")
def crops(faces, parser):
    """Each face cropped and parsed the way `degrade` does it."""
    out = {}
    for name, img in faces.items():
        crop = face_crop(img, parser.locate(img), 512)
        out[name] = (crop, parser(crop))
    return out


def _centroid(mask):
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean()


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_regions_land_where_they_should(crops, name):
    _, regions = crops[name]
    assert regions.found
    x, y, w, h = regions.box
    centres = {r: _centroid(regions.masks[r]) for r in ("eyes", "nose", "mouth")}
    assert centres["eyes"][1] < centres["nose"][1] < centres["mouth"][1]
    for cx, cy in centres.values():
        assert x <= cx <= x + w and y <= cy <= y + h
    assert _centroid(regions.masks["hair"])[1] < centres["eyes"][1]  # hair sits above the eyes
    stacked = np.stack([regions.masks[r] for r in REGIONS]).sum(0)
    assert stacked.max() == 1  # regions are disjoint


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_damage_is_strongest_in_the_mouth_and_weakest_on_skin(crops, name):
    crop, regions = crops[name]
    applied, changed = {r: 0.0 for r in REGIONS}, {r: 0.0 for r in REGIONS}
    for seed in range(4):  # the variation masks are random by design: compare averages, not one draw
        degraded, weight, _ = degrade(crop, regions.masks, seed=seed, face_size=max(regions.box[2:]))
        for r in REGIONS:
            applied[r] += weight[regions.masks[r]].mean() / 4
            changed[r] += np.abs(degraded.astype(int) - crop)[regions.masks[r]].mean() / 4
    assert max(applied, key=applied.get) == "mouth" and min(applied, key=applied.get) == "skin"
    assert changed["mouth"] > 2 * changed["skin"]
    assert applied["mouth"] <= DEFAULT_STRENGTHS["mouth"] + 1e-6


def test_damage_is_patchy_not_uniform(crops):
    crop, regions = crops["astronaut"]
    _, weight, _ = degrade(crop, regions.masks, seed=5, face_size=max(regions.box[2:]))
    hair = weight[regions.masks["hair"]]
    assert hair.std() > 0.05 and hair.max() - hair.min() > 0.25


def test_same_seed_same_pair_and_parameters_recorded(crops):
    crop, regions = crops["grace_hopper"]
    a, wa, pa = degrade(crop, regions.masks, seed=11)
    b, wb, pb = degrade(crop, regions.masks, seed=11)
    c, _, _ = degrade(crop, regions.masks, seed=12)
    assert np.array_equal(a, b) and np.array_equal(wa, wb) and pa == pb
    assert not np.array_equal(a, c)
    assert json.loads(json.dumps(pa))["seed"] == 11 and "blur" in pa and "clump_length" in pa


def test_no_face_is_reported_not_hidden(parser):
    noise = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
    assert parser.locate(noise) is None and not parser(noise).found


@pytest.fixture(scope="module")
def pair_run(faces, tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    src = root / "clean"
    src.mkdir()
    cv2.imwrite(str(src / "astronaut.png"), cv2.cvtColor(faces["astronaut"], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(src / "grace.jpg"), cv2.cvtColor(faces["grace_hopper"], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(src / "gray_grace.png"), cv2.cvtColor(faces["grace_hopper"], cv2.COLOR_RGB2GRAY))
    cv2.imwrite(str(src / "wall.png"), np.full((200, 300, 3), 128, np.uint8))
    cv2.imwrite(str(src / "tiny.png"), np.zeros((20, 20, 3), np.uint8))
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = root / "out"
    code = main(["degrade", str(src), "-o", str(out), "--size", "256", "--test-count", "1", "--seed", "7"])
    return src, out, code


def test_degrade_command_writes_pairs_manifest_and_contact_sheet(pair_run):
    _, out, code = pair_run
    assert code == 1  # some inputs failed, and the command says so
    names = sorted(p.name for p in (out / "clean").iterdir())
    assert names == ["astronaut.png", "grace.png", "gray_grace.png", "wall.png"]
    for folder in ("degraded", "mask"):
        assert sorted(p.name for p in (out / folder).iterdir()) == names
    assert cv2.imread(str(out / "degraded" / "grace.png")).shape == (256, 256, 3)
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 6 and sum(r["split"] == "test" for r in records) == 1
    ok = [r for r in records if r["status"] == "ok"]
    assert {r["name"] for r in ok} == {"astronaut.png", "grace.jpg", "gray_grace.png"}
    assert all(r["params"]["seed"] and r["parser"] == "mediapipe" for r in ok)
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape[1] == 3 * 256 and sheet.shape[0] == 4 * 256


def test_faces_not_found_and_bad_files_are_listed(pair_run):
    _, out, _ = pair_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["no_face"] == ["wall.png"]
    assert set(summary["failed"]) == {"tiny.png", "corrupt.png"}
    assert "too small" in summary["failed"]["tiny.png"] and "corrupt.png" in summary["failed"]["corrupt.png"]


def test_workers_do_not_change_the_pairs(pair_run, tmp_path):
    src, out, _ = pair_run
    main(["degrade", str(src), "-o", str(tmp_path / "w2"), "--size", "256", "--test-count", "1", "--seed", "7",
          "--workers", "2", "--no-face", "skip"])
    for name in ("astronaut.png", "grace.png"):
        assert np.array_equal(cv2.imread(str(out / "degraded" / name)),
                              cv2.imread(str(tmp_path / "w2" / "degraded" / name)))
    assert not (tmp_path / "w2" / "clean" / "wall.png").exists()  # --no-face skip
    summary = json.loads((tmp_path / "w2" / "summary.json").read_text())
    assert summary["no_face"] == ["wall.png"]


def test_missing_folder_is_a_usage_error(tmp_path, capsys):
    assert main(["degrade", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_none_parser_degrades_the_whole_image():
    parser, note = make_parser("none")
    img = np.zeros((64, 64, 3), np.uint8)
    assert parser(img).masks["skin"].all() and "one region" in note


def test_segformer_backend_runs_from_a_local_folder(tmp_path):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from training.face_regions import CELEBAMASK_CLASSES

    cfg = SegformerConfig(num_labels=19, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                          num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16,
                          id2label=dict(enumerate(CELEBAMASK_CLASSES)))
    SegformerForSemanticSegmentation(cfg).save_pretrained(tmp_path / "seg")
    parser, note = make_parser("auto", str(tmp_path / "seg"))
    assert parser.name == "segformer" and "segformer" in note
    regions = parser(np.zeros((100, 80, 3), np.uint8))
    assert set(regions.masks) == set(REGIONS) and regions.masks["skin"].shape == (100, 80)


def test_segformer_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ParserUnavailable, match="huggingface-cli download"):
        SegformerParser(str(tmp_path / "missing"))
    parser, note = make_parser("auto", str(tmp_path / "missing"))
    assert parser.name == "mediapipe" and "no face-parsing Segformer" in note


def test_check_pairs_reports_partners_and_sizes(tmp_path, capsys):
    from training.pairs import validate_pairs

    for sub in ("degraded", "clean"):
        (tmp_path / sub).mkdir()
    img = np.zeros((32, 32, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "degraded" / "a.png"), img)
    cv2.imwrite(str(tmp_path / "clean" / "a.png"), img)
    cv2.imwrite(str(tmp_path / "degraded" / "b.png"), img)
    cv2.imwrite(str(tmp_path / "clean" / "c.png"), img)
    cv2.imwrite(str(tmp_path / "degraded" / "d.png"), img)
    cv2.imwrite(str(tmp_path / "clean" / "d.png"), np.zeros((16, 32, 3), np.uint8))
    report = validate_pairs(tmp_path)
    assert len(report.pairs) == 1 and report.missing_clean == ["b"] and report.missing_degraded == ["c"]
    assert report.size_mismatch == [("d", (32, 32), (32, 16))]
    assert main(["check-pairs", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "b" in out and "size mismatch d" in out
    assert main(["check-pairs", str(tmp_path / "nothing")]) == 2


def test_images_with_the_same_stem_are_refused_naming_both(tmp_path, capsys):
    clean = tmp_path / "clean"
    clean.mkdir()
    for name in ("a.jpg", "a.png", "b.png"):
        cv2.imwrite(str(clean / name), np.zeros((32, 32, 3), np.uint8))
    assert main(["degrade", str(clean), "-o", str(tmp_path / "o"), "--parser", "none"]) == 2
    err = capsys.readouterr().err
    assert "a.jpg" in err and "a.png" in err
    assert not (tmp_path / "o" / "clean").exists()


def _sources(folder: Path, names) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(names))
    for name in names:
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (72, 72, 3), np.uint8))
    return folder


def _degrade(clean: Path, out: Path, *extra) -> int:
    return main(["degrade", str(clean), "-o", str(out), "--parser", "none", "--size", "64", *extra])


def _listing(pairs: Path) -> dict:
    """What a pairs folder holds: each subfolder's files and the names its manifest lists."""
    listing = {sub: sorted(p.name for p in (pairs / sub).iterdir()) for sub in ("clean", "degraded", "mask")}
    listing["manifest"] = sorted(json.loads(line)["file"] for line in (pairs / "manifest.jsonl").open())
    return listing


def test_a_second_degrade_into_a_folder_holding_pairs_is_refused_naming_it_and_overwrite(tmp_path, capsys):
    out = tmp_path / "pairs"
    assert _degrade(_sources(tmp_path / "first", ["a.png", "b.png"]), out) == 0
    before = _listing(out)
    assert _degrade(_sources(tmp_path / "second", ["c.png"]), out) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "already holds 2 pairs" in err and "--overwrite" in err
    assert _listing(out) == before


def test_overwrite_replaces_the_pairs_whole(tmp_path):
    out = tmp_path / "pairs"
    assert _degrade(_sources(tmp_path / "first", ["a.png", "b.png"]), out) == 0
    assert _degrade(_sources(tmp_path / "second", ["c.png"]), out, "--overwrite") == 0
    assert _listing(out) == {"clean": ["c.png"], "degraded": ["c.png"], "mask": ["c.png"], "manifest": ["c.png"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "pairs", "second"]  # nothing left beside it


def test_overwrite_replaces_pairs_that_check_pairs_has_judged(tmp_path):
    """check-pairs leaves its verdicts beside the pairs; they are about the pairs degrade wrote, not a user's file."""
    out = tmp_path / "pairs"
    assert _degrade(_sources(tmp_path / "first", ["a.png"]), out) == 0
    from training.cli import main
    assert main(["check-pairs", str(out), "--json"]) in (0, 1)
    assert (out / "pair_check.json").is_file()
    assert _degrade(_sources(tmp_path / "second", ["c.png"]), out, "--overwrite") == 0
    assert _listing(out)["manifest"] == ["c.png"] and not (out / "pair_check.json").exists()


def test_overwrite_never_deletes_files_degrade_did_not_write(tmp_path, capsys):
    out = tmp_path / "pairs"
    assert _degrade(_sources(tmp_path / "first", ["a.png"]), out) == 0
    (out / "notes.txt").write_text("mine")
    cv2.imwrite(str(out / "clean" / "extra.png"), np.zeros((64, 64, 3), np.uint8))
    assert _degrade(_sources(tmp_path / "second", ["c.png"]), out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "clean/extra.png" in err and str(out) in err
    assert (out / "notes.txt").read_text() == "mine"
    assert _listing(out)["clean"] == ["a.png", "extra.png"] and _listing(out)["manifest"] == ["a.png"]


def test_an_interrupted_overwrite_leaves_the_old_pairs_whole(tmp_path, monkeypatch):
    import training.prepare as prepare_module

    out = tmp_path / "pairs"
    assert _degrade(_sources(tmp_path / "first", ["a.png", "b.png"]), out) == 0
    before = _listing(out)
    real, calls = prepare_module.degrade, []

    def ctrl_c_at_the_second_image(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)
    monkeypatch.setattr(prepare_module, "degrade", ctrl_c_at_the_second_image)
    assert _degrade(_sources(tmp_path / "second", ["c.png", "d.png"]), out, "--overwrite") == 130
    assert len(calls) == 2 and _listing(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "pairs", "second"]


def test_check_pairs_names_the_files_its_manifest_does_not_list(tmp_path, capsys):
    out = tmp_path / "pairs"
    assert _degrade(_sources(tmp_path / "first", ["a.png"]), out) == 0
    for sub in ("clean", "degraded"):
        cv2.imwrite(str(out / sub / "old.png"), np.zeros((64, 64, 3), np.uint8))
    assert main(["check-pairs", str(out)]) == 0
    report = capsys.readouterr().out
    assert "1 complete pairs" in report and "not listed in manifest.jsonl, ignored: clean/old.png, degraded/old.png" \
        in report


def test_identities_go_into_the_manifest_and_images_the_list_misses_are_named(tmp_path, capsys):
    clean = _sources(tmp_path / "clean", ["000001.jpg", "000002.png", "stranger.png"])
    (clean / "nested").mkdir()
    cv2.imwrite(str(clean / "nested" / "000003.png"), np.full((72, 72, 3), 90, np.uint8))  # the list names files
    ids = tmp_path / "identity_CelebA.txt"
    ids.write_text("000001.jpg 2880\n000002.png 2880\n000003.png 17\n999999.jpg 5\n")
    assert _degrade(clean, tmp_path / "pairs", "--identities", str(ids)) == 0
    records = {r["name"]: r for r in map(json.loads, (tmp_path / "pairs" / "manifest.jsonl").open())}
    assert {n: r.get("identity") for n, r in records.items()} == {
        "000001.jpg": "2880", "000002.png": "2880", "nested/000003.png": "17", "stranger.png": None}
    summary = json.loads((tmp_path / "pairs" / "summary.json").read_text())
    assert summary["identities"] == 2 and summary["no_identity"] == ["stranger.png"]
    assert "1 pairs not in" in capsys.readouterr().out and "stranger.png" in summary["no_identity"]
    # training --reference draws from them: the two of identity 2880 show each other; the only photo of 17 and the
    # stranger have nothing to show, and are named
    from training.dataset import NoReferenceWarning, PairDataset

    with pytest.warns(NoReferenceWarning, match=r"leaving out 2 pairs .*nested/000003 .*stranger \(no reference/"):
        data = PairDataset(tmp_path / "pairs", "train", 64, reference=True)
    assert data.names == ["000001", "000002"]
    assert [data.reference_path(i).name for i in range(2)] == ["000002.png", "000001.png"]


def test_an_identity_list_that_names_none_of_the_images_or_is_malformed_is_refused(tmp_path, capsys):
    clean = _sources(tmp_path / "clean", ["a.png", "b.png"])
    ids = tmp_path / "ids.txt"
    ids.write_text("000001.jpg 1\n")
    assert _degrade(clean, tmp_path / "pairs", "--identities", str(ids)) == 2
    assert "names none of the 2 images" in capsys.readouterr().err
    ids.write_text("a.png\n")
    assert _degrade(clean, tmp_path / "pairs", "--identities", str(ids)) == 2
    assert f"identity list {ids} line 1 is 'a.png'" in capsys.readouterr().err
    assert not (tmp_path / "pairs").exists()
