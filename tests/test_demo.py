"""The web page's work without a browser: uploads refused with reasons, restores kept and shared, degrade -> restore
with metrics, sequences with their flicker, the licence gate. The page itself in Chromium: test_demo_browser.py."""
import contextlib
import io
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")

from engine.demo import is_loopback, network_warning  # noqa: E402
from engine.demo.actions import DemoActions, safe_stem  # noqa: E402
from engine.demo.uploads import UploadError, load_image, sequence_frames  # noqa: E402


def png(path, rgb: np.ndarray):
    Image.fromarray(rgb).save(path)
    return path


def noise(h=48, w=80, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pipeline(tiny_weights):
    from engine.faces.restore import FramePipeline
    from engine.runtime import ModelRunner

    restorer = ModelRunner.from_pretrained(tiny_weights, device="cpu", compile="off")
    pipeline = FramePipeline(restorer)
    yield pipeline
    pipeline.close()


@pytest.mark.parametrize("name, data, problem", [
    ("broken.png", None, "broken.png: PNG data is corrupt or truncated"),
    ("notes.png", b"just some text, no pixels", "notes.png: not an image"),
    ("render.exr", b"v/1\x01" + b"\0" * 64, "render.exr: EXR/HDR (scene-linear float) is not supported"),
    ("empty.png", b"", "empty.png: file is empty"),
])
def test_bad_uploads_are_refused_naming_the_file(tmp_path, name, data, problem):
    if data is None:
        data = (png(tmp_path / "ok.png", noise())).read_bytes()[:60]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(UploadError) as e:
        load_image(tmp_path / name)
    assert str(e.value).startswith(problem)
    assert str(tmp_path) not in str(e.value)  # the visitor's file name, not the server's temporary path


def test_a_huge_image_is_refused_from_its_header(tmp_path):
    Image.new("1", (5000, 4000)).save(tmp_path / "huge.png")  # 20 megapixels in a few kB
    with pytest.raises(UploadError, match=r"huge.png: 5000x4000 is too large for this page \(at most 16.8 "
                                          r"megapixels\); restore it with `python -m engine restore`"):
        load_image(tmp_path / "huge.png")


def zip_of(path, members: dict):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def png_bytes(rgb):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def test_sequences_come_from_files_and_zips_in_natural_order_and_nothing_escapes(tmp_path):
    a = zip_of(tmp_path / "shot.zip", {"shot/f_10.png": png_bytes(noise(seed=10)),
                                       "shot/f_2.png": png_bytes(noise(seed=2)),
                                       "../../escape_1.png": png_bytes(noise(seed=1)),
                                       "__MACOSX/shot/._f_2.png": b"resource fork", "shot/.hidden.png": b"x",
                                       "shot/readme.txt": b"not a frame"})
    named = sequence_frames([a])
    # hidden, resource-fork, non-image and ../ members are left out; the rest in natural order
    assert [n for n, _ in named] == ["shot.zip/shot/f_2.png", "shot.zip/shot/f_10.png"]
    assert np.array_equal(np.rint(named[0][1].rgb * 255).astype(np.uint8), noise(seed=2))
    assert not (tmp_path.parent / "escape_1.png").exists() and not list(tmp_path.parent.glob("*/escape_1.png"))
    loose = [png(tmp_path / f"f_{k}.png", noise(seed=k)) for k in (3, 1, 2)]
    assert [n for n, _ in sequence_frames(loose)] == ["f_1.png", "f_2.png", "f_3.png"]


def test_bad_sequences_are_refused_with_the_reason(tmp_path, monkeypatch):
    import engine.demo.uploads as uploads

    one = png(tmp_path / "a_1.png", noise())
    with pytest.raises(UploadError, match="at least 2 frames"):
        sequence_frames([one])
    other = png(tmp_path / "a_2.png", noise(h=40))
    with pytest.raises(UploadError, match=r"a_2.png: 80x40, but a_1.png is 80x48: a sequence's frames must share"):
        sequence_frames([one, other])
    with pytest.raises(UploadError, match=r"bad.zip: not a readable zip"):
        sequence_frames([tmp_path.joinpath("bad.zip").write_bytes(b"PK\x03\x04 nope") and tmp_path / "bad.zip"])
    with pytest.raises(UploadError, match=r"text.zip: the zip holds no images"):
        sequence_frames([zip_of(tmp_path / "text.zip", {"a.txt": b"x"})])
    bomb = zip_of(tmp_path / "bomb.zip", {f"f_{k}.png": png_bytes(noise()) for k in range(3)})
    monkeypatch.setattr(uploads, "MAX_ZIP_BYTES", 1000)  # as a zip bomb's directory would claim, before extracting
    with pytest.raises(UploadError, match=r"bomb.zip: its images unpack to more than"):
        sequence_frames([bomb])
    monkeypatch.setattr(uploads, "MAX_FRAMES", 2)
    with pytest.raises(UploadError, match=r"bomb.zip: 3 frames; this page takes at most 2"):
        sequence_frames([bomb])


def test_restore_keeps_each_result_with_its_provenance_and_never_replaces_a_shared_file(pipeline, tmp_path):
    share = tmp_path / "share"
    actions = DemoActions(pipeline, tmp_path / "work", share)
    paths = [png(tmp_path / "shot 1.png", noise(64, 64)), png(tmp_path / "wide.png", noise(48, 80, seed=1))]
    seen = []
    results = actions.restore(paths, "off", lambda f, text: seen.append((f, text)))
    assert [r.name for r in results] == ["shot 1.png", "wide.png"]
    for r, rgb in zip(results, (noise(64, 64), noise(48, 80, seed=1))):
        out = Image.open(r.path)
        assert out.size == (rgb.shape[1], rgb.shape[0]) and r.after.shape == rgb.shape
        assert out.text["Splat Restore model"] == pipeline.runner.info.source
        assert np.array_equal(r.before, rgb) and not np.array_equal(r.after, rgb)  # the tiny model changes it
    assert results[0].path.name == "shot_1_restored.png"
    assert seen[-1] == (1.0, "done") and seen[0][1] == "restoring shot 1.png"
    again = actions.restore(paths[:1], "off")
    assert sorted(p.name for p in share.iterdir()) == ["shot_1_restored-2.png", "shot_1_restored.png",
                                                      "wide_restored.png"]
    assert again[0].path.parent != results[0].path.parent  # each run its own folder
    assert not list(share.glob(".*"))  # no temporaries left


def test_result_files_stay_bounded_over_100_requests(pipeline, tmp_path):
    """A page left running: each request's files go when the next request of its action starts (Gradio has its own
    copy by then), so the work folder holds the latest restore's and the latest sequence's, however many came."""
    work = tmp_path / "work"
    actions = DemoActions(pipeline, work)
    frames = [png(tmp_path / f"f_{k}.png", noise(32, 32, seed=k)) for k in range(2)]
    latest, held = {}, []  # held: bytes in the work folder after each request
    for k in range(100):
        if k % 20 == 1:  # a sequence now and then: the model calls make the test's time
            r = actions.sequence(frames, "off")
            action, files = "sequence", [r.archive, r.playback]
        else:
            action, files = "restore", [r.path for r in actions.restore(frames[:1], "off")]
        assert all(f.is_file() for f in files)  # this request's results are there to be served
        assert not any(f.exists() for f in latest.get(action, []))  # the last request of this action's are gone
        latest[action] = files
        newest = [f for fs in latest.values() for f in fs]
        assert set(work.rglob("*")) == {f.parent for f in newest} | set(newest)
        held.append(sum(f.stat().st_size for f in work.rglob("*") if f.is_file()))
    assert max(held) <= 1.1 * max(held[:2])  # after 100 requests no more than after the first restore and sequence


@contextlib.contextmanager
def served_page(actions, tmp_path, monkeypatch):
    """The page served on a free loopback port, and a gradio client for it; closed afterwards."""
    import socket

    from gradio_client import Client

    from engine.demo.page import build_page

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    page = build_page(actions, "tiny")
    page.queue(default_concurrency_limit=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False,
                allowed_paths=[str(actions.workdir)])
    try:
        yield Client(f"http://127.0.0.1:{port}/", download_files=False, verbose=False)
    finally:
        page.close()


def test_the_page_serves_a_result_after_the_next_request_removed_its_folder(pipeline, tmp_path, monkeypatch):
    """What the removal relies on: Gradio serves its own copy of a returned file, made before the next request."""
    import httpx
    from gradio_client import handle_file

    actions = DemoActions(pipeline, tmp_path / "work")
    with served_page(actions, tmp_path, monkeypatch) as client:
        shots = [png(tmp_path / f"shot_{k}.png", noise(32, 32, seed=k)) for k in range(2)]
        first, second = (client.predict([handle_file(str(p))], "off", True, api_name="/restore")[2][0]
                         for p in shots)
        assert first["orig_name"] == "shot_0_restored.png" and second["orig_name"] == "shot_1_restored.png"
        served = httpx.get(first["url"])
        assert served.status_code == 200
        with Image.open(io.BytesIO(served.content)) as shown:
            assert shown.size == (32, 32) and shown.text["Splat Restore model"] == pipeline.runner.info.source
        assert [p.name for p in (tmp_path / "work").rglob("*.png")] == ["shot_1_restored.png"]


def test_one_bad_upload_stops_the_run_before_any_model_call(pipeline, tmp_path, monkeypatch):
    actions = DemoActions(pipeline, tmp_path / "work")
    good = png(tmp_path / "good.png", noise())
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(UploadError, match="bad.png"):
        actions.restore([good, tmp_path / "bad.png"])
    assert not list((tmp_path / "work").rglob("*.png"))
    monkeypatch.setattr("engine.demo.uploads.MAX_RUN_PIXELS", 5000)  # two 80x48 images: 7680 pixels decoded
    with pytest.raises(UploadError, match=r"2 images of 0 megapixels in all; this page takes at most 0 at a time"):
        actions.restore([good, png(tmp_path / "other.png", noise())])
    assert not list((tmp_path / "work").rglob("*.png"))
    monkeypatch.setattr("engine.demo.actions.MAX_IMAGES", 1)
    with pytest.raises(UploadError, match="2 images; this page restores at most 1 at a time"):
        actions.restore([good, good])


def test_degrade_then_restore_is_seeded_and_measured_against_the_clean_crop(pipeline, tmp_path):
    from engine.faces.bundled import bundled_faces

    photo = png(tmp_path / "hopper.png", bundled_faces()["grace_hopper"])
    actions = DemoActions(pipeline, tmp_path / "work")
    first = actions.degrade_restore(photo, seed=7)
    side = pipeline.size
    assert first.clean.shape == first.degraded.shape == first.restored.shape == (side, side, 3)
    assert not np.array_equal(first.degraded, first.clean)
    for name in ("degraded", "restored"):
        m = first.metrics[name]
        assert m["lpips"] is not None and m["lpips"] >= 0 and np.isfinite(m["psnr"]) and -1 <= m["ssim"] <= 1
    assert first.metrics["degraded"]["psnr"] < 60  # the degradation did something
    again = actions.degrade_restore(photo, seed=7)
    other = actions.degrade_restore(photo, seed=8)
    assert np.array_equal(again.degraded, first.degraded) and not np.array_equal(other.degraded, first.degraded)
    assert again.metrics == first.metrics


def test_degrade_restore_without_training_says_what_to_install(pipeline, tmp_path, monkeypatch):
    from engine.demo.page import build_page

    for name in [m for m in sys.modules if m == "training" or m.startswith("training.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "training", None)  # as in the engine wheel Blender installs: no training/
    page = build_page(DemoActions(pipeline, tmp_path / "work"), "tiny")
    tab = next(b for b in page.blocks.values() if getattr(b, "label", None) == "Degrade → Restore")
    assert tab.visible is False
    degrade = next(f.fn for f in page.fns.values() if f.name == "degrade")
    shown = degrade(str(png(tmp_path / "face.png", noise(64, 64))), 7, True)
    assert shown[3].startswith("**Error:** Degrade → Restore needs the \\`training\\` package")
    assert "pip install" in shown[3] and all(v is None for v in shown[:3])


def test_a_sequence_is_restored_per_frame_and_fused_with_its_flicker_measured(pipeline, tmp_path):
    from engine.temporal.bench import moving_face

    shot = [png(tmp_path / f"f_{k + 1}.png", np.rint(f * 255).astype(np.uint8))
            for k, f in enumerate(moving_face(frames=5, size=64))]
    actions = DemoActions(pipeline, tmp_path / "work")
    r = actions.sequence(shot[::-1], "off")  # uploaded in any order, restored in name order
    assert r.names == [f"f_{k}.png" for k in range(1, 6)]
    assert {k: len(v) for k, v in r.flicker.items()} == {"input": 4, "per-frame": 4, "temporal": 4}
    assert r.means["temporal"] < r.means["per-frame"]  # the point of the tab
    with zipfile.ZipFile(r.archive) as z:
        names = sorted(z.namelist())
        assert names[:5] == [f"per_frame/{k:04d}_f_{k + 1}.png" for k in range(5)]
        assert names[5:] == [f"temporal/{k:04d}_f_{k + 1}.png" for k in range(5)]
        first = np.array(Image.open(io.BytesIO(z.read(names[0]))))
    assert np.array_equal(first, r.per_frame[0])
    assert np.array_equal(r.per_frame[0], r.temporal[0])  # the first frame has nothing before it
    with Image.open(r.playback) as anim:  # every frame's row, exact: lossless, looping, at the page's rate
        assert anim.format == "WEBP" and anim.n_frames == 5 and anim.info["loop"] == 0
        for k in range(5):
            anim.seek(k)
            shown = np.asarray(anim.convert("RGB"))
            assert anim.info["duration"] == 83
            assert np.array_equal(shown,
                                  np.concatenate([r.inputs[k], r.per_frame[k], r.temporal[k]], axis=1))


def test_previews_are_subsampled_by_whole_steps_to_their_limits():
    from engine.demo.actions import side_by_side

    images = [np.random.default_rng(k).integers(0, 256, (300, 700, 3), dtype=np.uint8) for k in range(3)]
    assert np.array_equal(side_by_side(*images), np.concatenate(images, axis=1)[::2, ::2])  # 2100 wide > 1536
    row = np.concatenate(images, axis=1)
    assert np.array_equal(side_by_side(*images, max_pixels=60_000), row[::4, ::4])  # step 3 would be 100 x 700


def test_the_page_asks_for_the_licence_before_the_first_restore(tmp_path, monkeypatch):
    from tiny_base import make_tiny_difix

    from blender_addon.engine_link.licenses import NVIDIA_DIFIX
    from engine.demo.page import build_page
    from engine.faces.restore import FramePipeline
    from engine.runtime import ModelRunner

    monkeypatch.delenv("SPLAT_RESTORE_ACCEPT_LICENSE", raising=False)
    restorer = ModelRunner.from_pretrained(make_tiny_difix(tmp_path / "difix"), accept_license=True, device="cpu",
                                        compile="off")
    page = build_page(DemoActions(FramePipeline(restorer), tmp_path / "work"), "nvidia/difix", NVIDIA_DIFIX)
    restore = next(f.fn for f in page.fns.values() if f.name == "restore")
    image = str(png(tmp_path / "render.png", noise(64, 64)))
    refused = restore([image], "off", False)
    assert refused[3] == "**Error:** accept the NVIDIA License above before the first restore"
    assert all(v is None for k, v in enumerate(refused) if k != 3)
    assert not list((tmp_path / "work").rglob("*.png"))
    done = restore([image], "off", True)
    assert done[3].startswith("Restored 1 image") and Image.open(done[2][0]).text["Splat Restore license"]


def test_only_loopback_is_quiet_and_names_are_safe():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20") and not is_loopback("studio-box")
    assert "anyone who can reach this machine" in network_warning("0.0.0.0", 7860)
    assert safe_stem("../../x y.png") == "x_y" and safe_stem("..png") == "image" and safe_stem("Kopf é.jpg") == "Kopf_é"


def test_a_taken_port_is_one_error_line_after_the_network_warning(tiny_weights):
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "engine", "demo", "--weights", str(tiny_weights), "--device", "cpu",
                            "--compile", "off", "--host", "0.0.0.0", "--port", str(port)],
                           capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert f"WARNING: the demo listens on 0.0.0.0:{port}" in r.stderr
    assert f"error: cannot listen on 0.0.0.0:{port}" in r.stderr and "Traceback" not in r.stderr


# a reference photo and the example render (issue 24) --------------------------------------------------------------
@pytest.fixture(scope="module")
def ref_pipeline(tmp_path_factory):
    from tiny_base import make_tiny_difix_ref

    from engine.faces.restore import FramePipeline
    from engine.runtime import ModelRunner

    weights = make_tiny_difix_ref(tmp_path_factory.mktemp("difix_ref") / "ref")
    pipeline = FramePipeline(ModelRunner.from_pretrained(weights, accept_license=True, device="cpu", compile="off"),
                             min_face=32)
    yield pipeline
    pipeline.close()


def _component(page, elem_id):
    return next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_a_reference_photo_is_given_beside_each_image_and_shown_with_the_result(ref_pipeline, tmp_path):
    from engine.demo.page import build_page

    actions = DemoActions(ref_pipeline, tmp_path / "work")
    image = png(tmp_path / "render.png", noise(64, 64))
    photos = [png(tmp_path / f"photo{k}.png", noise(90, 70, seed=10 + k)) for k in range(2)]
    first, second = (actions.restore([image], "off", reference=str(p))[0] for p in photos)
    assert not np.array_equal(first.after, second.after)  # the reference reaches the model
    assert np.array_equal(first.reference, noise(90, 70, seed=10))  # whole frames: the photo itself, shown
    assert ref_pipeline.reference is None  # the other tabs restore without it
    with pytest.raises(UploadError, match="need a reference photo of the person and none was given: upload one"):
        actions.restore([image], "off")
    with pytest.raises(UploadError, match="gone.png: file does not exist"):
        actions.restore([image], "off", reference=str(tmp_path / "gone.png"))
    for tab in (lambda: actions.degrade_restore(image), lambda: actions.sequence([image, image])):
        with pytest.raises(UploadError, match="restore in the Restore tab, which takes one"):
            tab()
    page = build_page(actions, "nvidia/difix_ref")
    assert _component(page, "restore-reference").visible and _component(page, "restore-reference-shown").visible
    restore = next(f.fn for f in page.fns.values() if f.name == "restore")
    shown = restore([str(image)], "off", True, str(photos[1]))
    assert shown[3].startswith("Restored 1 image") and "photo1.png" in shown[3]
    assert np.array_equal(shown[5], second.reference) and np.array_equal(shown[0][1], second.after)


def test_plain_weights_offer_no_reference_and_refuse_one(pipeline, tmp_path):
    from engine.demo.page import build_page

    actions = DemoActions(pipeline, tmp_path / "work")
    page = build_page(actions, "tiny")
    assert not _component(page, "restore-reference").visible
    with pytest.raises(UploadError, match="reference photo me.png given, but the loaded weights cannot use one"):
        actions.restore([png(tmp_path / "r.png", noise(64, 64))], "off", reference=str(png(tmp_path / "me.png",
                                                                                          noise())))


def test_a_reference_without_a_face_is_refused_before_faces_are_restored(ref_pipeline, tmp_path):
    pytest.importorskip("mediapipe")
    from engine.faces.bundled import bundled_faces

    actions = DemoActions(ref_pipeline, tmp_path / "work")
    face = bundled_faces()["astronaut"]
    frame = png(tmp_path / "frame.png", np.asarray(Image.fromarray(face).resize((128, 128))))  # > 64: faces
    wall = png(tmp_path / "wall.png", np.full((80, 80, 3), 150, np.uint8))
    with pytest.raises(UploadError, match=r"^reference photo wall.png: no face found in it"):
        actions.restore([frame], "auto", reference=str(wall))
    assert not list((tmp_path / "work").rglob("*.png"))
    done = actions.restore([frame], "auto", reference=str(png(tmp_path / "me.png", face)))[0]
    assert done.reference.shape == (64, 64, 3)  # faces restored: the photo's face crop, as the model saw it


def test_the_example_render_is_one_click_away_in_the_restore_and_degrade_tabs(pipeline, tmp_path, monkeypatch):
    import httpx

    from engine.demo.page import EXAMPLE, build_page, example_files

    assert example_files() == [str(EXAMPLE)] and EXAMPLE.name == "splat_face.png" and EXAMPLE.parent.name == \
        "examples"
    actions = DemoActions(pipeline, tmp_path / "work")
    with served_page(actions, tmp_path, monkeypatch) as client:
        # a click on the example: the Restore tab's renders become [the example], the Degrade tab's photo the example
        into_restore = client.predict(0, api_name="/load_example")
        into_degrade = client.predict(0, api_name="/load_example_1")
        assert into_restore["elem_id"] == "restore-input" and into_degrade["elem_id"] == "degrade-input"
        (loaded,), also = into_restore["value"], into_degrade["value"]
        for f in (loaded, also):
            served = httpx.get(f["url"])
            assert f["orig_name"] == "splat_face.png" and served.content == EXAMPLE.read_bytes()
    monkeypatch.setattr("engine.demo.page.EXAMPLE", tmp_path / "none.png")  # the engine wheel ships no examples/
    bare = build_page(actions, "tiny")
    assert not [b for b in bare.blocks.values() if "example" in (getattr(b, "elem_id", None) or "")]
