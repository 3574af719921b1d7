"""The Gradio page: three tabs over DemoActions. Gradio is imported here only (the `demo` extra).

Every handler shows a refused upload or a failed restore as one sentence naming the file and the problem in its
tab's status box, never a stack trace (the server's log keeps the trace of unexpected failures).
"""
from __future__ import annotations

import functools
import os
import re
import sys
import traceback
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # studios run this offline: no phoning home

import gradio as gr  # noqa: E402

from .actions import PLAYBACK_FPS, DemoActions, side_by_side  # noqa: E402
from .degradation import TrainingMissing, training_available  # noqa: E402
from .uploads import MAX_FRAMES, MAX_PIXELS, UploadError  # noqa: E402

# what the page shows: Gradio's default, lossy WebP, would add artefacts of its own to a restorer's before/after
LOSSLESS = "png"
FACES = [("Faces (large frames: each face at the model's size)", "auto"), ("Whole frame", "off")]
# system fonts: the default theme's web fonts would be fetched from the internet by every visitor's browser
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "Consolas", "monospace"])

# the playback fills its box: small frames are not shown at their own size in a corner
CSS = "#sequence-playback img {width: 100%; height: 100%; object-fit: contain}"
# the shipped example render (a checkout's examples/; the engine wheel has none, and then no example is offered)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "splat_face.png"


def example_files() -> list[str]:
    """The one-click examples: the files a visitor can try the page with, without an image of their own."""
    return [str(EXAMPLE)] if EXAMPLE.is_file() else []


class Refused(Exception):
    """A request the page turns down (no licence accepted yet); str() is shown."""


def _md(text: str) -> str:
    """Visitors' file names shown literally in Markdown (`__init__.png` is not bold, `<b>` is text)."""
    return re.sub(r"([\\`*_{}\[\]<>#|!~])", r"\\\1", text)


def _guard(outputs: int, status: int):
    """A handler whose refusals and failures come back as one readable line in its status box (output `status`
    of `outputs`), its other outputs cleared so no earlier result stands beside the error; never a stack trace
    (the server's log keeps the trace of unexpected failures)."""
    def wrap(handler):
        @functools.wraps(handler)
        def run(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except (UploadError, Refused, TrainingMissing) as e:
                message = str(e)
            except Exception as e:  # noqa: BLE001 - the page must stay up and say what happened
                traceback.print_exc(file=sys.stderr)
                message = f"restore failed: {type(e).__name__}: {e}"
            cleared = [None] * outputs
            cleared[status] = f"**Error:** {_md(message)}"
            return tuple(cleared)
        return run
    return wrap


def _paths(files) -> list[str]:
    if not files:
        return []
    return [getattr(f, "name", f) for f in (files if isinstance(files, list) else [files])]


def _metrics_table(metrics: dict) -> str:
    def cell(v, spec):
        return "n/a" if v is None else format(v, spec)
    rows = [f"| {name} | {cell(m['lpips'], '.4f')} | {cell(m['psnr'], '.2f')} | {cell(m['ssim'], '.4f')} |"
            for name, m in metrics.items()]
    return "\n".join(["| against the clean image | LPIPS ↓ | PSNR (dB) ↑ | SSIM ↑ |", "|---|---|---|---|", *rows])


def build_page(actions: DemoActions, model: str, license=None) -> gr.Blocks:
    """`license`: engine_link.licenses.License of the loaded weights, or None."""
    def check_license(accepted: bool) -> None:
        if license is not None and not accepted:
            raise Refused(f"accept the {license.name} above before the first restore")

    @_guard(outputs=6, status=3)
    def restore(files, faces, accepted, reference=None, progress=gr.Progress()):
        check_license(accepted)
        reference = (_paths(reference) or [None])[0]
        results = actions.restore(_paths(files), faces, lambda f, d: progress(f, desc=d), reference=reference)
        notes = [_md(f"{r.name}: {r.note}") for r in results if r.note]
        status = f"Restored {len(results)} image{'s' * (len(results) != 1)}." + "".join(f"\n\n{n}" for n in notes)
        if reference:
            status += f"\n\nWith the reference photo {_md(Path(reference).name)}."
        return ((results[0].before, results[0].after), [(r.after, r.name) for r in results],
                [str(r.path) for r in results], status, [(r.before, r.after) for r in results],
                results[0].reference)

    def pick(pairs, evt: gr.SelectData):
        return pairs[evt.index] if pairs and evt.index is not None and evt.index < len(pairs) else gr.skip()

    @_guard(outputs=4, status=3)
    def degrade(file, seed, accepted, progress=gr.Progress()):
        check_license(accepted)
        if not file:
            raise UploadError("no image uploaded: drop a clean face photo or render")
        r = actions.degrade_restore(_paths(file)[0], int(seed or 0),
                                    lambda f, d: progress(f, desc=d))
        text = _metrics_table(r.metrics) + "".join(f"\n\n{n}" for n in r.notes)
        return r.degraded, r.restored, r.clean, text

    @_guard(outputs=5, status=4)
    def sequence(files, faces, accepted, progress=gr.Progress()):
        check_license(accepted)
        import pandas as pd

        r = actions.sequence(_paths(files), faces, lambda f, d: progress(f, desc=d))
        gallery = [(side_by_side(i, p, t), name) for i, p, t, name in zip(r.inputs, r.per_frame, r.temporal, r.names)]
        # error k is frame k + 2 (counting from 1) against frame k + 1
        plot = pd.DataFrame([{"frame": k + 2, "flicker (8-bit levels)": e, "series": series}
                             for series, errors in r.flicker.items() for k, e in enumerate(errors)])
        means = ", ".join(f"{k} {v:.3f}" for k, v in r.means.items())
        ratio = r.means["temporal"] / r.means["per-frame"] if r.means["per-frame"] > 0 else float("nan")
        text = (f"{len(r.names)} frames. Mean warping error against the frame before (8-bit levels): {means}; "
                f"temporal / per-frame = {ratio:.2f}. Each row: input | per-frame | temporal.")
        return str(r.playback), gallery, plot, str(r.archive), text

    # Gradio's copies of uploads and results: checked hourly, dropped after a day, so a page left running for weeks
    # does not fill the disk
    with gr.Blocks(title="Splat Restore", delete_cache=(3600, 86400)) as page:
        gr.Markdown(f"# Splat Restore\nSingle-step diffusion restorer for Gaussian-splatting avatar renders. "
                    f"Model: `{model}`.")
        if license is not None:
            gr.Markdown(f"**These weights are under the [{license.name}]({license.url})**: {license.terms}. "
                        f"Tick the box to accept it before the first restore.", elem_id="license-text")
        accepted = gr.Checkbox(value=license is None, visible=license is not None, elem_id="accept-license",
                               label=f"I accept the {license.name}" if license else "licence")
        with gr.Tab("Restore"):
            with gr.Row():
                with gr.Column():
                    files = gr.File(label="Renders (PNG, JPEG, TIFF, WebP)", file_count="multiple",
                                    elem_id="restore-input")
                    faces = gr.Radio(FACES, value="auto", label="Restore")
                    # only weights that take a reference (Difix-ref, --reference training) are offered the upload
                    reference = gr.File(label="Reference photo of the person" + (
                        " (these weights need one)" if actions.takes_reference else " (optional)"),
                        file_count="single", visible=actions.takes_reference, elem_id="restore-reference")
                    go = gr.Button("Restore", variant="primary", elem_id="restore-button")
                    status = gr.Markdown(elem_id="restore-status")
                    if example_files():
                        gr.Examples([[example_files()]], [files], label="Example render (click to load it)",
                                    elem_id="restore-example")
                with gr.Column():
                    slider = gr.ImageSlider(label="before | after", type="numpy", format=LOSSLESS,
                                            elem_id="restore-slider")
                    gallery = gr.Gallery(label="restored (click to compare)", columns=4, format=LOSSLESS,
                                         elem_id="restore-gallery")
                    downloads = gr.File(label="Download", file_count="multiple", elem_id="restore-downloads")
                    shown_reference = gr.Image(label="reference (as the restorer saw it: its face crop when "
                                                     "faces are restored)", type="numpy", interactive=False,
                                               height=320, format=LOSSLESS, visible=actions.takes_reference,
                                               elem_id="restore-reference-shown")
            pairs = gr.State([])
            go.click(restore, [files, faces, accepted, reference],
                     [slider, gallery, downloads, status, pairs, shown_reference])
            gallery.select(pick, pairs, slider)
        # hidden in an engine without training/ (the wheel Blender installs)
        with gr.Tab("Degrade → Restore", visible=training_available()):
            with gr.Row():
                with gr.Column():
                    clean = gr.File(label="A clean face photo or render", elem_id="degrade-input")
                    seed = gr.Number(value=7, precision=0, label="Degradation seed")
                    go = gr.Button("Degrade and restore", variant="primary", elem_id="degrade-button")
                    metrics = gr.Markdown(elem_id="degrade-metrics")
                    if example_files():
                        gr.Examples([[example_files()[0]]], [clean], label="Example render (click to load it)",
                                    elem_id="degrade-example")
                with gr.Column():
                    with gr.Row():
                        shown = [gr.Image(label=label, type="numpy", interactive=False, height=320,
                                          format=LOSSLESS, elem_id=f"degrade-{key}")
                                 for key, label in (("degraded", "degraded (the training degradation)"),
                                                    ("restored", "restored"), ("clean", "clean"))]
            go.click(degrade, [clean, seed, accepted], [*shown, metrics])
        with gr.Tab("Sequence"):
            with gr.Row():
                with gr.Column():
                    frames = gr.File(label=f"Frames (several images, or one zip; at most {MAX_FRAMES})",
                                     file_count="multiple", elem_id="sequence-input")
                    faces_seq = gr.Radio(FACES, value="auto", label="Restore")
                    go = gr.Button("Restore per frame and temporal", variant="primary", elem_id="sequence-button")
                    summary = gr.Markdown(elem_id="sequence-summary")
                    archive = gr.File(label="Download (per_frame/ and temporal/)", elem_id="sequence-download")
                with gr.Column():
                    plot = gr.LinePlot(x="frame", y="flicker (8-bit levels)", color="series",
                                       title="Flicker: warping error against the frame before")
                    playback = gr.Image(label=f"input | per-frame | temporal, looping at {PLAYBACK_FPS} fps",
                                        type="filepath", interactive=False, height=320, elem_id="sequence-playback")
                    strip = gr.Gallery(label="input | per-frame | temporal", columns=1, object_fit="contain",
                                       format=LOSSLESS, elem_id="sequence-gallery")
            go.click(sequence, [frames, faces_seq, accepted], [playback, strip, plot, archive, summary])
        gr.Markdown(f"Uploads: at most {MAX_PIXELS / 1e6:.1f} megapixels an image. Results stay on this machine.")
    return page
