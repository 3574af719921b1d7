"""`python -m engine demo` on the tiny model, driven in headless Chromium (Debian's `chromium`, through playwright).

Screenshots land in test-artifacts/. Where Chromium or playwright is missing these tests skip, unless
SPLAT_RESTORE_REQUIRE_BROWSER=1 (CI sets it) makes that a failure.
"""
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
pytest.importorskip("gradio")


def chromium() -> str:
    found = next((p for p in (os.environ.get("SPLAT_RESTORE_CHROMIUM"), shutil.which("chromium"),
                              shutil.which("chromium-browser"), shutil.which("google-chrome")) if p), None)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        found = None
    if found is None:
        message = "no Chromium (apt-get install chromium) or no playwright (pip install playwright)"
        if os.environ.get("SPLAT_RESTORE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo(weights, *extra: str):
    """(url, log lines, process) of a demo running in its own process, as a user starts it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "engine", "demo", "--weights", str(weights), "--port", str(port),
                             "--device", "cpu", "--compile", "off", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={k: v for k, v in dict(os.environ, PYTHONUNBUFFERED="1").items()
                                 if k != "SPLAT_RESTORE_ACCEPT_LICENSE"})
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 180
    while not any("Running on local URL" in line for line in lines):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the demo did not start:\n" + "".join(lines))
        time.sleep(0.2)
    return f"http://127.0.0.1:{port}/", lines, proc


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def demo(tiny_weights, tmp_path_factory):
    """(url, log lines, share folder)"""
    share = tmp_path_factory.mktemp("share")
    url, lines, proc = start_demo(tiny_weights, "--share-folder", str(share), "--max-upload-mb", "1")
    yield url, lines, share
    stop(proc)


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])  # CI runs as root
        yield b
        b.close()


@pytest.fixture
def page(browser, demo):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(demo[0])
    yield page
    page.close()


def noise_png(path: Path, h: int, w: int, seed: int = 0) -> Path:
    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_it_listens_on_this_machine_only_by_default(demo):
    assert any(f"Running on local URL:  {demo[0].rstrip('/')}" in line for line in demo[1]), demo[1]
    assert not any("WARNING: the demo listens on" in line for line in demo[1])


def test_an_uploaded_render_comes_back_restored_at_its_size(page, demo, tmp_path):
    render = noise_png(tmp_path / "render.png", 48, 80)
    page.locator("#restore-input input[type=file]").set_input_files(str(render))
    page.locator("#restore-button").click()
    link = page.locator("#restore-downloads a[href]").first
    link.wait_for(timeout=120_000)
    restored = Image.open(io.BytesIO(page.request.get(link.get_attribute("href")).body()))
    assert restored.size == (80, 48)
    assert "Splat Restore model" in restored.text
    page.locator("#restore-slider img").first.wait_for(timeout=30_000)
    assert page.locator("#restore-status").inner_text().startswith("Restored 1 image")
    shown = [Image.open(io.BytesIO(page.request.get(img.get_attribute("src")).body()))
             for img in page.locator("#restore-slider img").all()]
    assert [im.format for im in shown] == ["PNG", "PNG"]  # lossless: the comparison shows the restorer, not a codec
    assert np.array_equal(np.asarray(shown[0].convert("RGB")), np.asarray(Image.open(render).convert("RGB")))
    shot(page, "demo_restore.png")
    assert (demo[2] / "render_restored.png").is_file()  # kept in the share folder too


def test_a_corrupt_upload_gets_a_readable_error_not_a_trace(page, tmp_path):
    broken = tmp_path / "__broken__.png"  # shown as named, not as Markdown bold
    broken.write_bytes(noise_png(tmp_path / "whole.png", 48, 80).read_bytes()[:80])
    page.locator("#restore-input input[type=file]").set_input_files(str(broken))
    page.locator("#restore-button").click()
    status = page.locator("#restore-status")
    status.get_by_text("broken__.png").wait_for(timeout=60_000)
    assert status.inner_text().strip() == "Error: __broken__.png: PNG data is corrupt or truncated"
    shot(page, "demo_error.png")
    assert "Traceback" not in page.content()


def test_an_upload_over_the_size_limit_is_refused_on_the_page(page, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(2 * 1024 * 1024))  # over --max-upload-mb 1
    page.locator("#restore-input input[type=file]").set_input_files(str(big))
    page.get_by_text('exceed the maximum allowed size of 1.0 Mb: "big.png"').first.wait_for(timeout=30_000)
    shot(page, "demo_too_large.png")


def test_degrade_then_restore_shows_metrics(page, tmp_path):
    from engine.faces.bundled import bundled_faces

    photo = tmp_path / "hopper.png"
    Image.fromarray(bundled_faces()["grace_hopper"]).save(photo)
    page.get_by_role("tab", name="Degrade → Restore").click()
    page.locator("#degrade-input input[type=file]").set_input_files(str(photo))
    page.locator("#degrade-button").click()
    metrics = page.locator("#degrade-metrics")
    metrics.get_by_text("PSNR").wait_for(timeout=120_000)
    rows = metrics.inner_text()
    assert "degraded" in rows and "restored" in rows and "n/a" not in rows  # LPIPS present
    shot(page, "demo_degrade.png")


def test_a_zipped_sequence_shows_per_frame_against_temporal_with_flicker(page, tmp_path):
    from engine.temporal.bench import moving_face

    archive = tmp_path / "shot.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for k, f in enumerate(moving_face(frames=5, size=64)):
            buffer = io.BytesIO()
            Image.fromarray(np.rint(f * 255).astype(np.uint8)).save(buffer, "PNG")
            z.writestr(f"shot/f_{k + 1}.png", buffer.getvalue())
    page.get_by_role("tab", name="Sequence").click()
    page.locator("#sequence-input input[type=file]").set_input_files(str(archive))
    page.locator("#sequence-button").click()
    summary = page.locator("#sequence-summary")
    summary.get_by_text("5 frames").wait_for(timeout=120_000)
    assert "temporal / per-frame" in summary.inner_text()
    page.locator("#sequence-download a[href]").first.wait_for(timeout=30_000)
    playback = page.locator("#sequence-playback img").first
    playback.wait_for(timeout=30_000)
    anim = Image.open(io.BytesIO(page.request.get(playback.get_attribute("src")).body()))
    assert anim.format == "WEBP" and anim.n_frames == 5 and anim.size == (3 * 64, 64)
    shot(page, "demo_sequence.png")


def test_difix_weights_show_their_licence_and_restore_only_once_it_is_accepted(browser, tmp_path):
    from tiny_base import make_tiny_difix

    url, lines, proc = start_demo(make_tiny_difix(tmp_path / "difix"))
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        assert "NVIDIA License" in page.locator("#license-text").inner_text()
        page.locator("#restore-input input[type=file]").set_input_files(str(noise_png(tmp_path / "r.png", 64, 64)))
        page.locator("#restore-button").click()
        status = page.locator("#restore-status")
        status.get_by_text("accept the NVIDIA License").wait_for(timeout=60_000)
        assert page.locator("#restore-downloads a[href]").count() == 0
        shot(page, "demo_license.png")
        page.locator("#accept-license input[type=checkbox]").check()
        page.locator("#restore-button").click()
        status.get_by_text("Restored 1 image").wait_for(timeout=120_000)
        link = page.locator("#restore-downloads a[href]").first
        restored = Image.open(io.BytesIO(page.request.get(link.get_attribute("href")).body()))
        assert "NVIDIA License" in restored.text["Splat Restore license"]
        page.close()
    finally:
        stop(proc)
    assert any("the page asks for acceptance before the first restore" in line for line in lines)
