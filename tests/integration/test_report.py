"""report.html: written by `train` at the end of a run and by `classicnets report`; self-contained (every picture a
data: URI, nothing fetched), its numbers those of the run folder, rendered by a real browser without an error; a
report that fails never costs the run."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

import classicnets.inference.report
from classicnets.cli import main
from classicnets.inference.report_html import POLICY

SECTIONS = [
    "Command", "Curves", "Confusion matrix", "Misclassified validation images", "First-layer kernels",
    "Speed per epoch", "Data", "Config",
]  # fmt: skip
CHROMIUM_INSTALL = "apt-get install -y chromium"


@pytest.fixture(scope="module")
def run(tmp_path_factory, digit_kit, quick_fit):
    """Two epochs of LeNet-5 on 300 real digits (30 held out): a few misclassified validation images."""
    data = digit_kit.idx(tmp_path_factory.mktemp("digits"), per_class=30)
    return quick_fit(data, tmp_path_factory.mktemp("run") / "run").run_dir


class Page(HTMLParser):
    """Tags, attributes, section headings, table rows and <pre> texts of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.headings: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.pres: list[str] = []
        self._text: list[str] | None = None
        self._row: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("h2", "td", "th", "pre"):
            self._text = []
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []

    def handle_endtag(self, tag):
        text = "".join(self._text or [])
        if tag == "h2":
            self.headings.append(text)
        elif tag in ("td", "th") and self._row is not None:
            self._row.append(text)
        elif tag == "pre":
            self.pres.append(text)
        elif tag == "tr":
            self.tables[-1].append(self._row or [])
        if tag in ("h2", "td", "th", "pre"):
            self._text = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def pngs(page: Page) -> list[Image.Image]:
    images = []
    for tag, attrs in page.tags:
        if tag == "img":
            prefix = "data:image/png;base64,"
            assert attrs["src"].startswith(prefix)
            images.append(Image.open(io.BytesIO(base64.b64decode(attrs["src"][len(prefix) :], validate=True))))
    return images


def test_train_writes_a_self_contained_report_with_the_runs_numbers(run):
    text = (run / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert page.headings == SECTIONS
    # self-contained: no script, no stylesheet link, no frame, nothing addressed outside the page
    assert not {tag for tag, _ in page.tags} & {"script", "link", "iframe", "object", "embed"}
    addresses = [v for _, attrs in page.tags for k, v in attrs.items() if k in ("src", "href", "srcset", "action")]
    assert addresses and all(v.startswith("data:image/png;base64,") for v in addresses)
    assert ("meta", {"http-equiv": "Content-Security-Policy", "content": POLICY}) in page.tags
    images = pngs(page)  # loss, accuracy, confusion matrix, misclassified with Grad-CAM, kernels
    assert len(images) == 5 and all(im.format == "PNG" and im.width > 100 for im in images)
    assert images[0].tobytes() == Image.open(run / "loss.png").tobytes()

    summary, *tables = page.tables
    confusion = json.loads((run / "confusion.json").read_text())
    errors = sum(c for t, row in enumerate(confusion["counts"]) for p, c in enumerate(row) if t != p)
    assert errors > 0  # two epochs on 270 digits: some of the 30 held out are wrong
    confused, misclassified, speed, data = tables
    off = sorted(
        ((-c, t, p) for t, row in enumerate(confusion["counts"]) for p, c in enumerate(row) if t != p and c),
    )[:10]
    assert [r[:3] for r in confused[1:]] == [[str(t), str(p), str(-c)] for c, t, p in off]
    # the same best.pt on the same 30 validation images: exactly the errors training counted (first 12 shown)
    assert len(misclassified) - 1 == min(errors, 12) and all(r[1] != r[2] for r in misclassified[1:])
    assert all(re.fullmatch(r"train-images-idx3-ubyte\.gz#\d+", r[0]) for r in misclassified[1:])
    metrics = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r[:3] for r in speed[1:]] == [
        [r["epoch"], f"{float(r['seconds']):.1f}", f"{float(r['images_per_s']):.0f}"] for r in metrics
    ]
    assert data[-1] == ["all", "270", "30"] and len(data) == 1 + 10 + 1
    best = max(metrics, key=lambda r: (float(r["val_top1"]), -float(r["val_loss"])))
    assert dict(summary[1:])["best epoch"].startswith(f"{best['epoch']}: validation top-1 ")
    assert dict(summary[1:])["best epoch"].split()[3] == f"{100 * float(best['val_top1']):.2f}%,"
    command, config = page.pres
    assert command == (run / "command.txt").read_text().strip() and len(command.splitlines()) == 1
    assert config == (run / "config.yaml").read_text()


def test_a_failing_report_costs_nothing_and_the_command_writes_it_again(digit_kit, tmp_path, monkeypatch, caplog,
                                                                        capsys, quick_fit):  # fmt: skip
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(classicnets.inference.report, "write_report", broken)
    data = digit_kit.idx(tmp_path / "digits", per_class=10)
    result = quick_fit(data, tmp_path / "run", epochs=1)
    assert (result.run_dir / "best.pt").is_file() and not (result.run_dir / "report.html").exists()
    assert "report.html could not be written (disk on fire); try: classicnets report" in caplog.text
    monkeypatch.undo()

    # The data moved away: the report still comes, without the parts that need the data, and says why.
    shutil.rmtree(data)
    out = tmp_path / "elsewhere.html"
    assert main(["report", str(result.run_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out}"
    page = Page(out.read_text())
    assert page.headings == SECTIONS and len(pngs(page)) == 4  # no misclassified picture
    assert "Left out the data table and the misclassified examples" in out.read_text()
    assert main(["report", str(tmp_path)]) == 2  # not a run folder
    assert "not a run folder (no config.yaml)" in capsys.readouterr().err


def chromium_check(report: Path, tmp_path: Path) -> tuple[dict, str]:
    """Open a copy of `report` in headless Chromium with a script that records, once the page has loaded, every
    image's size and every error event; returns (what the script recorded, Chromium's log)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip(f"chromium is absent; install it to run this test: {CHROMIUM_INSTALL}")
    probe = (
        "<script>var errors = [];"
        "window.addEventListener('error', function (e) { errors.push(String(e.message || e.target.tagName)); }, true);"
        "window.addEventListener('load', function () { document.body.setAttribute('data-check', JSON.stringify({"
        "images: Array.from(document.images).map(function (i) {"
        " return [i.complete, i.naturalWidth, i.naturalHeight]; }),"
        "errors: errors})); });</script>"
    )
    text = report.read_text(encoding="utf-8")
    # The probe is the only script: the report's own policy forbids scripts, so the copy allows inline ones.
    text = text.replace(POLICY, POLICY + "; script-src 'unsafe-inline'", 1).replace("</head>", probe + "</head>", 1)
    page = tmp_path / "probed.html"
    page.write_text(text, encoding="utf-8")
    # No network (the background-networking flags keep Chromium from trying to reach its services), a fresh profile.
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--v=0", "--dump-dom"]  # fmt: skip
    done = subprocess.run([binary, *flags, page.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'data-check="([^"]*)"', done.stdout)
    assert done.returncode == 0 and found, done.stderr[-2000:]
    return json.loads(html.unescape(found.group(1))), done.stderr


def test_chromium_renders_every_image_of_the_report_without_an_error(run, tmp_path):
    checked, log = chromium_check(run / "report.html", tmp_path)
    expected = [[True, im.width, im.height] for im in pngs(Page((run / "report.html").read_text()))]
    assert len(expected) == 5 and checked == {"images": expected, "errors": []}
    assert [line for line in log.splitlines() if ":CONSOLE" in line] == []  # nothing refused or logged


def test_the_chromium_check_sees_a_broken_image_and_a_blocked_request(run, tmp_path):
    """The check above can fail: a damaged picture and an image from the network are both caught."""
    text = (run / "report.html").read_text(encoding="utf-8")
    start = text.index("data:image/png;base64,") + len("data:image/png;base64,")
    damaged = text[:start] + "AAAA" + text[start + 4 :]
    damaged = damaged.replace("</body>", '<img src="http://192.0.2.1/x.png" alt="remote"></body>')
    bad = tmp_path / "bad.html"
    bad.write_text(damaged, encoding="utf-8")
    checked, log = chromium_check(bad, tmp_path)
    assert checked["images"][0] == [True, 0, 0] and checked["images"][-1] == [True, 0, 0]
    assert checked["errors"] == ["IMG", "IMG"]
    assert any(":CONSOLE" in line and "Content Security Policy" in line for line in log.splitlines())
