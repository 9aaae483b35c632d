"""The fine-pruning report: report.json for machines, report.html for a security reviewer.

The HTML file is self-contained (plots embedded as base64 PNG, inline CSS, no
scripts, no external links), so it opens offline and can be attached to a ticket.
Everything in it is also in report.json, together with the settings, SHA-256 of
the vendor and defended models, timings and library versions.
"""
from __future__ import annotations

import base64
import html
import platform
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from fp_onnx import __version__
from fp_onnx.outputs import write_text
from fp_onnx.warp_check import describe_warp_check

TABLE_NAMES = {"none": "None (vendor model)", "pruning": "Pruning", "fine-tuning": "Fine-Tuning",
               "fine-pruning": "Fine-Pruning"}
"""Row names of the paper's Table 1. Neutral on purpose: whether a row is 'defended' is the verdict's call."""


def library_versions() -> dict:
    return {
        "fp_onnx": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
        "numpy": np.__version__,
    }


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _rows(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(path: Path, caption: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _results_table(report: dict) -> str:
    rows = [[TABLE_NAMES[name], _percent(row["clean_accuracy"]), _percent(row["attack_success"])]
            for name, row in report["defense"]["table"].items()]
    return _rows(["defender strategy", f"clean accuracy ({report['defense']['evaluated_on']} data)",
                  "attack success rate"], rows)


def _cost_table(report: dict) -> str:
    before, after = report["cost"]["vendor"], report["cost"]["defended"]
    rows = [[label, f"{before[key]:,}" if isinstance(before[key], int) else f"{before[key]:.3f}",
             f"{after[key]:,}" if isinstance(after[key], int) else f"{after[key]:.3f}",
             f"{after[key] / before[key]:.3f}" if before[key] else "–"]
            for label, key in (("parameters", "parameters"), ("FLOPs per sample", "flops"),
                               ("onnxruntime latency, batch 1 (ms)", "latency_ms"))]
    return _rows(["", "vendor", "fine-pruned", "ratio"], rows)


def _verdict_section(report: dict) -> str:
    verdict = report["verdict"]
    css = "ok" if verdict["status"] == "defended" else "bad"
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in verdict["reasons"])
    measured = verdict["measured"]
    rows = [["clean accuracy (validation data)", f"{measured['clean_accuracy']:.4f}",
             f"vendor {measured['vendor_clean_accuracy']:.4f}, drop at most {verdict['limits']['max_accuracy_drop']:g}"],
            ["clean-accuracy cost, 95 % interval", _interval_text(measured.get("clean_accuracy_drop_interval")),
             f"{measured['validation_samples']} validation samples"],
            ["outputs that are not finite", str(measured["nonfinite_outputs"]), "none"],
            ["attack success", "not measured" if measured["attack_success"] is None else f"{measured['attack_success']:.4f}",
             f"at most {verdict['limits']['max_attack_success']:g}"],
            ["attack success, 95 % interval", _interval_text(measured.get("attack_success_interval")),
             "targeted attacks only"]]
    return (f'<h2>Verdict</h2><p class="{css}"><strong>{html.escape(verdict["summary"])}</strong></p>'
            + (f"<ul>{reasons}</ul>" if len(verdict["reasons"]) > 1 else "")
            + f"<p>Model file: <code>{html.escape(verdict['model'])}</code> (exit code {verdict['exit_code']}).</p>"
            + _rows(["check (on the written file)", "measured", "limit"], rows))


def _interval_text(interval: dict | None) -> str:
    return "not measured" if interval is None else f"{interval['low']:.4f} to {interval['high']:.4f}"


def _finetune_section(finetune: dict) -> str:
    def number(value, fmt):
        return "–" if value is None else format(value, fmt)

    rows = [[h["epoch"], f"{h['lr']:g}", number(h["train_loss"], ".4f"),
             "–" if h["val_accuracy"] is None else _percent(h["val_accuracy"]), h["diverged"] or ""]
            for h in finetune["history"]]
    table = _rows(["epoch", "learning rate", "train loss", "validation accuracy", "divergence"], rows)
    recoveries = "".join(f"<li>epoch {r['epoch']}: {html.escape(r['reason'])}; restored the weights of epoch "
                         f"{r['restored_epoch']}, lr {r['lr_before']:g} → {r['lr_after']:g}</li>"
                         for r in finetune["recoveries"])
    notes = f"<p>Recoveries:</p><ul>{recoveries}</ul>" if recoveries else "<p>No divergence: no recovery needed.</p>"
    if finetune["failure"]:
        notes += f'<p class="bad">Training ended on a problem it could not recover from: {html.escape(finetune["failure"])}</p>'
    scales = finetune["calibration"].get("lr_scales") or {}
    if scales:
        notes += "<p>Learning rate scaled down for tensors whose step was out of proportion: " + ", ".join(
            f"<code>{html.escape(name)}</code> ×{scale:.2g}" for name, scale in scales.items()) + "</p>"
    return table + notes


def _signature_section(report: dict) -> str:
    check = report["defense"]["signature_check"]
    if check["matches_vendor"]:
        return '<p class="ok">The fine-pruned model has the vendor\'s inputs and outputs (names, types, shapes): it drops into the same inference server.</p>'
    items = "".join(f"<li>{html.escape(d)}</li>" for d in check["differences"])
    return f'<p class="bad">The fine-pruned model\'s signature differs from the vendor\'s:</p><ul>{items}</ul>'


CSS = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.35em .7em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}
.ok{color:#176317}.bad{color:#a11}code{background:#f3f3f3;padding:0 .2em}figcaption{font-size:.9em;color:#555}"""


def render_html(report: dict, plots: dict[str, Path]) -> str:
    defense, prune = report["defense"], report["defense"]["prune"]
    point = report["prune_point"]
    method = defense.get("method") or {}
    attempts = "; ".join(f"{a['recipe']} ({a['channels_pruned']} channels pruned): "
                         f"{'below the floor' if a['below_floor'] else 'kept'}"
                         + (f" ({a['kept']})" if a.get("kept") else "")
                         for a in method.get("recover_attempts", []))
    summary = (f"Method <code>{html.escape(str(method.get('name', 'paper')))}</code>: ranked by "
               f"<code>{html.escape(str(prune.get('criterion', 'activation')))}</code>, pruned "
               f"{prune['channels_pruned']} of {prune['channels']} channels of <code>{html.escape(point['label'])}</code> "
               f"({html.escape(prune['stop_rule_text'])}), then recovered with "
               f"<code>{html.escape(str(method.get('recover', 'paper')))}</code> for "
               f"{defense['finetune']['best_epoch']} epoch(s) (validation accuracy "
               f"{_percent(defense['finetune']['best_val_accuracy'])})"
               + (f"; recipes tried: {html.escape(attempts)}" if attempts else "") + ".")
    warp = describe_warp_check(method.get("warp_check"))
    summary += f" {html.escape(warp[0].upper() + warp[1:])}." if warp else ""
    attack = report["settings"].get("attack")
    attack_text = "no triggered data given" if attack is None else html.escape(str(attack))
    sections = [
        "<h1>fp-onnx fine-pruning report</h1>",
        _verdict_section(report),
        f"<p>Vendor model <code>{html.escape(report['vendor']['path'])}</code>, "
        f"SHA-256 <code>{report['vendor']['sha256']}</code>.<br>Output model <code>{html.escape(report['defended']['path'])}</code>, "
        f"SHA-256 <code>{report['defended']['sha256']}</code>.</p>",
        f"<h2>Result</h2><p>{summary}</p><p>Attack: {attack_text}.</p>{_results_table(report)}",
        f"<h2>Deployment check</h2>{_signature_section(report)}{_cost_table(report)}",
        "<h2>Channel activations</h2>" + _image(plots["activations"], "Mean activation per channel of the prune point, "
                                                 "sorted by clean activation (paper Fig. 4)"),
        "<h2>Prune curve</h2>" + _image(plots["prune_curve"], "Clean accuracy and attack success vs fraction of channels "
                                         "pruned; the dotted line marks where the defense stopped (paper Fig. 6)"),
        "<h2>Fine-tuning</h2>" + _finetune_section(defense["finetune"]),
        "<h2>Settings and versions</h2>" + _rows(["setting", "value"], [[k, v] for k, v in report["settings"].items()])
        + _rows(["library", "version"], [[k, v] for k, v in report["versions"].items()]),
    ]
    return f"<!doctype html><html><head><meta charset='utf-8'><title>fp-onnx report</title><style>{CSS}</style></head><body>{''.join(sections)}</body></html>\n"


def write_html(path: Path, report: dict, plots: dict[str, Path]) -> Path:
    return write_text(path, render_html(report, plots))
