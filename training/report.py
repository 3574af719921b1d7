"""RUN/report.html: one static page a user opens in a browser (no server, no TensorBoard): loss curves, held-out
metrics, the comparison grid and the config, with every image embedded as base64 PNG so the file can be mailed."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from engine.atomic import write_bytes_atomic

from .train import read_loss_log


def _png_data(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def loss_plot(records: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, prefix, title in ((axes[0], "train/", "training loss (per step)"),
                              (axes[1], "test/", "held-out loss (untrained at step 0)")):
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


def metrics_table(metrics: dict) -> str:
    rows = []
    for side in ("degraded", "restored"):
        m = metrics[side]
        rows.append(f"<tr><th>{side}</th><td>{m['lpips']:.4f}</td><td>{m['psnr']:.2f}</td><td>{m['ssim']:.4f}</td>"
                    f"</tr>")
    d = metrics["improvement"]
    rows.append(f"<tr><th>change</th><td>{d['lpips']:+.4f}</td><td>{d['psnr']:+.2f}</td><td>{d['ssim']:+.4f}</td></tr>")
    return ("<table><tr><th></th><th>LPIPS (lower is better)</th><th>PSNR-Y dB</th><th>SSIM-Y</th></tr>"
            + "".join(rows) + "</table>")


def write_report(run: Path) -> Path:
    records = read_loss_log(run / "losses.jsonl")
    metrics = json.loads((run / "eval.json").read_text())
    config = json.loads((run / "config.json").read_text())
    grid = (run / "eval_grid.png").read_bytes()
    names = metrics.get("grid_rows", [])
    body = [f"<h1>Splat Restore training run {html.escape(run.name)}</h1>",
            f"<p>{html.escape(metrics['split'])} split: {metrics['count']} held-out pairs, restored through the engine "
            f"with <code>{html.escape(metrics['weights'])}</code>.</p>",
            "<h2>Loss curves</h2>", f'<img alt="loss curves" src="{_png_data(loss_plot(records))}">',
            "<h2>Held-out metrics</h2>", metrics_table(metrics),
            f"<p class=note>{html.escape(metrics['convention'])}. LPIPS weights: "
            f"{html.escape(str(metrics.get('lpips_source')))}.</p>",
            "<h2>Degraded | restored | clean</h2>",
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
