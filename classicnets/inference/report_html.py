"""report.html from a RunContents (what report.py gathers from a run folder): plain HTML5, its style inline and
every picture a data: URI.

The page loads nothing: its Content-Security-Policy allows images from data: URIs and the inline style only, so a
browser opening it from disk makes no request at all (and would refuse one). Every text taken from the run is
escaped.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Collection
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

# Rows of the per-class data table (ImageNet's 1,000 would bury the rest of the page).
MAX_CLASS_ROWS = 100
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0; } td, th { padding: .25em .7em; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f6f6f6; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: 13px; }
img { max-width: 100%; height: auto; } .pair img { max-width: 49%; } .muted { color: #777; }
.note { background: #fff4e5; padding: .5em .8em; border-left: 4px solid #f0a030; }
"""


@dataclass
class RunContents:
    """Everything report.html shows, gathered from a run folder (report_html.render_report draws it)."""

    run_dir: Path
    config_yaml: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)  # command.txt: the command of each start and resume
    metrics: list[dict[str, float]] = field(default_factory=list)  # metrics.csv rows
    split: dict[str, Any] = field(default_factory=dict)
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # "train"/"val" -> class -> images
    confusion: dict[str, Any] | None = None  # confusion.json: epoch, classes, counts (the best epoch's)
    most_confused: list[Any] = field(default_factory=list)  # metrics.ConfusedPair
    misclassified: list[Any] = field(default_factory=list)  # evaluation.Misclassified
    scanned: int = 0  # validation images searched for misclassified ones
    pictures: dict[str, bytes] = field(default_factory=dict)  # name -> PNG
    notes: list[str] = field(default_factory=list)  # the parts left out, and why

    @property
    def best(self) -> dict[str, float] | None:
        """The metrics row of the best epoch (higher validation top-1, then lower loss), as training chose it."""
        if not self.metrics:
            return None
        return max(self.metrics, key=lambda r: (r["val_top1"], -r["val_loss"]))


def render_report(c: RunContents) -> str:
    model = (c.config.get("model") or {}).get("name") or "model"
    parts = [
        _summary(c, model),
        _section("Command", _commands(c)),
        _section("Curves", _images(c, ("loss", "Loss per epoch"), ("accuracy", "Accuracy per epoch"), pair=True)),
        _section("Confusion matrix", _images(c, ("confusion_matrix", "Validation confusion matrix")) + _confused(c)),
        _section("Misclassified validation images", _misclassified(c)),
        _section("First-layer kernels", _images(c, ("filters", "The first convolution's kernels"))),
        _section("Speed per epoch", _speed(c)),
        _section("Data", _data(c)),
        _section("Config", f"<pre>{escape(c.config_yaml)}</pre>"),
    ]
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in c.notes)
    title = f"{c.run_dir.name}: {model}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)} (classicnets report)</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n{notes}\n" + "\n".join(parts) + "\n</body>\n</html>\n"
    )


def _section(title: str, body: str) -> str:
    anchor = title.lower().replace(" ", "-")
    return f'<section id="{escape(anchor)}">\n<h2>{escape(title)}</h2>\n{body}\n</section>'


def _table(header: list[str], rows: list[list[Any]], numeric: Collection[int] = ()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{escape(str(v))}</td>' for i, v in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{escape(alt)}">'


def _images(c: RunContents, *wanted: tuple[str, str], pair: bool = False) -> str:
    shown = [_img(c.pictures[name], alt) for name, alt in wanted if name in c.pictures]
    if not shown:
        return '<p class="muted">No picture in the run folder.</p>'
    return f'<div class="{"pair" if pair else ""}">{"".join(shown)}</div>'


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _summary(c: RunContents, model: str) -> str:
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    rows = [["run folder", str(c.run_dir)], ["model", model], ["classes", str(len(c.classes))]]
    best = c.best
    if best is not None:
        seconds = sum(r["seconds"] for r in c.metrics)
        rows += [
            ["epochs trained", str(len(c.metrics))],
            ["best epoch", f"{int(best['epoch'])}: validation top-1 {_pct(best['val_top1'])}, "
                           f"top-5 {_pct(best['val_top5'])}, loss {best['val_loss']:.4f}"],
            ["training time", f"{seconds:.1f} s ({seconds / 60:.1f} min)"],
        ]  # fmt: skip
    else:
        rows.append(["epochs trained", "none finished yet"])
    return _table(["", ""], rows) + f'<p class="muted">Written {escape(when)} by classicnets.</p>'


def _commands(c: RunContents) -> str:
    if not c.commands:
        return '<p class="muted">Not recorded (command.txt is missing: the run predates it).</p>'
    return "<pre>" + escape("\n".join(c.commands)) + "</pre>"


def _confused(c: RunContents) -> str:
    if c.confusion is None:
        return '<p class="muted">No confusion.json in the run folder: most-confused pairs unknown.</p>'
    epoch = c.confusion.get("epoch")
    if not c.most_confused:
        return f"<p>Epoch {epoch}: every validation image is classified correctly.</p>"
    rows = [[p.true, p.predicted, p.count, f"{100 * p.fraction:.1f}%"] for p in c.most_confused]
    caption = f"<p>Most confused pairs at epoch {epoch} (true → predicted):</p>"
    return caption + _table(["true", "predicted", "images", "share of the true class"], rows, {2, 3})


def _misclassified(c: RunContents) -> str:
    if not c.scanned:
        return '<p class="muted">Not available (see the note at the top).</p>'
    if not c.misclassified:
        return f"<p>None among the {c.scanned:,} validation images searched.</p>"
    intro = (
        f"<p>The first {len(c.misclassified)} misclassified among {c.scanned:,} validation images, each with the "
        "Grad-CAM map (Selvaraju et al. 2017) of the class the model chose: red marks where it saw that class.</p>"
    )
    rows = [[m.file, m.true, m.predicted, f"{m.probability:.3f}"] for m in c.misclassified]
    picture = _images(c, ("misclassified", "Misclassified images with Grad-CAM"))
    return intro + picture + _table(["image", "true", "predicted", "probability"], rows, {3})


def _speed(c: RunContents) -> str:
    if not c.metrics:
        return '<p class="muted">No epoch finished yet.</p>'
    rows = [
        [int(r["epoch"]), f"{r['seconds']:.1f}", f"{r['images_per_s']:.0f}", f"{r['lr']:.3g}",
         f"{r['train_loss']:.4f}", _pct(r["val_top1"])]
        for r in c.metrics
    ]  # fmt: skip
    header = ["epoch", "seconds", "training images/s", "learning rate", "train loss", "validation top-1"]
    return _table(header, rows, {0, 1, 2, 3, 4, 5})


def _data(c: RunContents) -> str:
    split = c.split
    if split.get("method") == "stratified":
        text = (
            f"{split.get('source')}, split per class with seed {split.get('seed')}: "
            f"{split.get('val_fraction', 0):.0%} held out for validation."
        )
    elif split:
        text = f"training images {split.get('train')}, validation images {split.get('val')}."
    else:
        text = "No split.json in the run folder."
    out = f"<p>{escape(text)}</p>"
    if c.class_counts:
        train, val = c.class_counts["train"], c.class_counts["val"]
        names = list(train)
        rows = [[name, train[name], val.get(name, 0)] for name in names[:MAX_CLASS_ROWS]]
        rows.append(["all", sum(train.values()), sum(val.values())])
        out += _table(["class", "training images", "validation images"], rows, {1, 2})
        if len(names) > MAX_CLASS_ROWS:
            out += f'<p class="muted">The first {MAX_CLASS_ROWS} of {len(names)} classes.</p>'
    return out
