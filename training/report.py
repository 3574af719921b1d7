"""RUN/report.html: one static page a user opens in a browser (no server, no TensorBoard): loss curves, held-out
metrics, the comparison grid and the config, with every image embedded as base64 PNG so the file can be mailed.
A fine-tune (`--init`) is compared with the restorer it started from as well as with its input, on the same pairs."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from engine.atomic import write_bytes_atomic

from .train import read_loss_log, schedule_text


def _png_data(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def side_labels(sides, pairs_mode: bool = False) -> dict:
    """What each evaluated side is called: a fine-tune's restorer is "fine-tuned", next to its "init"; with --pairs
    the input is a render and the target a photo."""
    names = {"degraded": "render (input)" if pairs_mode else "degraded", "init": "init restorer",
             "restored": "fine-tuned" if "init" in sides else "restored", "clean": "photo" if pairs_mode else "clean"}
    return {side: names[side] for side in sides}


def loss_plot(records: list[dict], start: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, prefix, title in ((axes[0], "train/", "training loss (per step)"),
                              (axes[1], "test/", f"held-out loss ({start} at step 0)")):
        for part in ("loss", "l1", "lpips", "gram"):
            points = [(r["step"], r[prefix + part]) for r in records if prefix + part in r]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if prefix == "test/" else None, markersize=3, label=part)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def metrics_table(metrics: dict, labels: dict) -> str:
    rows = []
    for side in metrics.get("sides", ("degraded", "restored")):
        m = metrics[side]
        rows.append(f"<tr><th>{labels[side]}</th><td>{m['lpips']:.4f}</td><td>{m['psnr']:.2f}</td>"
                    f"<td>{m['ssim']:.4f}</td></tr>")
    changes = [("change", "improvement")] + ([("change over the init", "over_init")] if "over_init" in metrics else [])
    for title, key in changes:
        d = metrics[key]
        rows.append(f"<tr><th>{title}</th><td>{d['lpips']:+.4f}</td><td>{d['psnr']:+.2f}</td><td>{d['ssim']:+.4f}</td>"
                    f"</tr>")
    return ("<table><tr><th></th><th>LPIPS (lower is better)</th><th>PSNR-Y dB</th><th>SSIM-Y</th></tr>"
            + "".join(rows) + "</table>")


def write_report(run: Path) -> Path:
    records = read_loss_log(run / "losses.jsonl")
    metrics = json.loads((run / "eval.json").read_text())
    config = json.loads((run / "config.json").read_text())
    fit_record = json.loads((run / "fit.json").read_text()) if (run / "fit.json").is_file() else {}
    grid = (run / "eval_grid.png").read_bytes()
    names = metrics.get("grid_rows", [])
    columns = metrics.get("grid_columns", ["degraded", "restored", "clean"])
    labels = side_labels(columns, fit_record.get("mode") == "pairs")
    warmup = config.get("warmup_steps", config.get("warmup"))
    start = "the init" if config.get("init") else "untrained"
    lineage = [f"<p>Fine-tuned from <code>{html.escape(str(config['init']))}</code> (fingerprint "
               f"<code>{html.escape(str(config.get('init_fingerprint')))}</code>): its recipe, with a new LoRA "
               f"trained on top.</p>"] if config.get("init") else []
    if config.get("synthetic_pairs"):
        lineage.append(f"<p>Synthetic pairs from <code>{html.escape(config['synthetic_pairs'])}</code> made "
                       f"{config['synthetic_share']:.0%} of the training samples.</p>")
    body = [f"<h1>Splat Restore training run {html.escape(run.name)}</h1>", *lineage,
            f"<p>{html.escape(metrics['split'])} split: {metrics['count']} held-out pairs, restored through the engine "
            f"with <code>{html.escape(metrics['weights'])}</code>"
            + (f" and the init <code>{html.escape(metrics['init_weights'])}</code>" if "init_weights" in metrics
               else "") + ".</p>",
            f"<p>Schedule: {html.escape(schedule_text(config['lr'], warmup, config['steps']))}.</p>",
            "<h2>Loss curves</h2>", f'<img alt="loss curves" src="{_png_data(loss_plot(records, start))}">',
            "<h2>Held-out metrics</h2>", metrics_table(metrics, labels),
            f"<p class=note>{html.escape(metrics['convention'])}. LPIPS weights: "
            f"{html.escape(str(metrics.get('lpips_source')))}.</p>",
            f"<h2>{html.escape(' | '.join(labels[c] for c in columns)).capitalize()}</h2>",
            "<p>Rows, top to bottom: " + ", ".join(f"<code>{html.escape(n)}</code>" for n in names) + "</p>",
            f'<img alt="comparison grid: {html.escape(", ".join(names))}" src="{_png_data(grid)}">',
            "<h2>Config</h2>", f"<pre>{html.escape(json.dumps(config, indent=1))}</pre>"]
    page = ("<!doctype html><html><head><meta charset=utf-8><title>Splat Restore run</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
            ".note{color:#555;font-size:90%}</style></head><body>" + "\n".join(body) + "</body></html>")
    path = run / "report.html"
    write_bytes_atomic(path, page.encode())
    return path
