"""`vit-explain report`: one self-contained HTML page from a run's outputs, checked in a real
headless Chromium (skipped where none is installed; Debian: apt-get install -y chromium)."""
import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from tests import image_files as files
from tests.browser import Browser, chromium_binary
from tests.helpers import error_lines, run, tiny

needs_chromium = pytest.mark.skipif(chromium_binary() is None, reason="no chromium binary (apt-get install chromium)")
ODD_NAME = "x<i>&'y"  # HTML in a file name must come out as text


@pytest.fixture(scope="module")
def run_folder(tiny_model_dir, tmp_path_factory):
    """Two images explained by two methods, and an evaluation, into one folder."""
    from vit_explain.cli.main import main
    root = tmp_path_factory.mktemp("report")
    images, out = root / "images", root / "out"
    images.mkdir()
    files.write_rgb(images / "a.png", size=(90, 60), seed=1)
    files.write_rgb(images / f"{ODD_NAME}.png", size=(48, 64), seed=2)
    commands = [["--image_path", images, "--method", "rollout"],
                ["--image_path", images, "--method", "chefer", "--outputs", "overlay-jpg,mask"],
                ["evaluate", "--image_path", images, "--methods", "rollout,chefer", "--steps", 4]]
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in command + ["--output-dir", out, *tiny(tiny_model_dir)]])
        assert exit_info.value.code == 0
    return out


def embedded(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r"src='data:image/[a-z]+;base64,([A-Za-z0-9+/=]+)'", page)]


def test_the_report_holds_every_image_and_method_and_the_evaluation(run_folder, capsys):
    code, _, err = run(capsys, "report", run_folder)
    assert code == 0 and "report.html" in err
    page = (run_folder / "report.html").read_text()
    assert "Content-Security-Policy" in page and "<script" not in page and "http" not in page.split("<body>")[1]
    pictures = embedded(page)
    # inputs and overlays of 2 images (input, rollout, chefer) and the curves plot
    assert len(pictures) == 2 * 3 + 1 and len(re.findall(r"<img ", page)) == len(pictures)
    sizes = [Image.open(io.BytesIO(p)).size for p in pictures]
    assert (90, 60) in sizes and (48, 64) in sizes
    assert page.count("<b>rollout</b>") == 2 and page.count("<b>chefer</b>") == 2
    assert page.index("<b>rollout</b>") < page.index("<b>chefer</b>")  # the method table's order
    assert "id='auc'" in page and "deletion AUC" in page and "id='curves'" in page
    assert "x&lt;i&gt;&amp;&#x27;y.png" in page and ODD_NAME not in page  # escaped
    assert "explains cat" in page or "explains dog" in page or "explains fox" in page
    assert "class-agnostic; top" in page


def test_missing_outputs_are_placeholders_and_outputs_outside_the_folder_are_not_read(run_folder, tmp_path, capsys):
    out = tmp_path / "copy"
    out.mkdir()
    manifest = json.loads((run_folder / "manifest.json").read_text())
    outside = files.write_rgb(tmp_path / "secret.png", size=(33, 33))
    for entry in manifest["images"]:
        entry["outputs"] = {"overlay": str(outside)} if entry["method"] == "rollout" else {"overlay": "gone.png"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run(capsys, "report", out, "--output", tmp_path / "page.html")
    assert code == 0, err
    page = (tmp_path / "page.html").read_text()
    assert (33, 33) not in [Image.open(io.BytesIO(p)).size for p in embedded(page)]
    assert page.count("no overlay was written") == 4
    assert "Evaluation" not in page


def test_a_folder_without_a_run_is_no_usable_input(tmp_path, capsys):
    code, _, err = run(capsys, "report", tmp_path / "nowhere")
    assert code == 4 and "not a folder" in error_lines(err)[0]
    code, _, err = run(capsys, "report", tmp_path)
    assert code == 4 and "nothing to report" in error_lines(err)[0]
    code, _, err = run(capsys, "report")
    assert code == 2


@needs_chromium
def test_the_report_loads_in_chromium_without_errors_and_every_image_decodes(run_folder, capsys):
    code, _, err = run(capsys, "report", run_folder)
    assert code == 0, err
    with Browser() as browser:
        page = browser.open(run_folder / "report.html", width=1200, height=1600)
    assert page.errors == []
    assert len(page.images) == 7 and all(w > 0 and h > 0 for w, h in page.images)
    assert "vit-explain report" in page.text and "deletion AUC" in page.text
    screenshot = np.asarray(Image.open(io.BytesIO(page.screenshot)).convert("RGB"))
    assert screenshot.shape[:2] == (1600, 1200)
    # not blank: many colours, and far from one flat colour
    assert len(np.unique(screenshot.reshape(-1, 3), axis=0)) > 500 and screenshot.std() > 20


@needs_chromium
def test_the_browser_check_sees_errors_and_broken_images(tmp_path):
    """The check above can fail: a page with a script error, a console error and an image that
    does not decode is reported as such."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><img src='data:image/png;base64,AAAA'>"
                   "<script>console.error('boom'); missing();</script></body></html>")
    with Browser() as browser:
        page = browser.open(bad)
    assert page.images == [(0, 0)]
    assert any("boom" in e for e in page.errors) and any("missing" in e for e in page.errors)
