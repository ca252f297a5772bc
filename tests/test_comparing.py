"""Figures from the command: several methods in one run (each method's files as its own run writes
them, and a comparison sheet per image), --sheet's pages, --per-layer's strips and animations,
CP-LRP's signed outputs, the usage errors, re-runs, and the report picking the sheets up."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests import image_files as files
from tests.helpers import error_lines, run, tiny
from vit_explain.io import figures
from vit_explain.io.figure_sinks import FolderSheetSink

METHODS = ("rollout", "chefer", "gradsam", "cp-lrp")  # chefer and gradsam share one forward and backward
SIZES = {"a.png": (90, 60), "b.png": (48, 64)}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for seed, (name, size) in enumerate(SIZES.items(), 1):
        files.write_rgb(folder / name, size=size, seed=seed)
    return folder


def command(capsys, model_dir, images, out, *more):
    from vit_explain.cli.main import main  # noqa: F401 - the in-process command of helpers.run
    return run(capsys, "--image_path", images, "--output-dir", out, *tiny(model_dir), *more)


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "manifest.json"}


def entries(out: Path) -> list[dict]:
    return json.loads((out / "manifest.json").read_text())["images"]


def rgb(path) -> np.ndarray:
    return cv2.imread(str(path))[:, :, ::-1]


def where(figure: np.ndarray, part: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of an exact copy of part inside figure, or None."""
    scores = cv2.matchTemplate(figure.astype(np.float32), part.astype(np.float32), cv2.TM_SQDIFF)
    _, _, (x, y), _ = cv2.minMaxLoc(scores)
    h, w = part.shape[:2]
    return (x, y) if np.array_equal(figure[y:y + h, x:x + w], part) else None


@pytest.fixture(scope="module")
def compared(tiny_model_dir, images, tmp_path_factory):
    """One run of three methods over two images, and each method's own run."""
    from vit_explain.cli.main import main
    root = tmp_path_factory.mktemp("compared")

    def explain(out, *more):
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in ["--image_path", images, "--output-dir", out, *tiny(tiny_model_dir), *more]])
        assert exit_info.value.code == 0
        return out
    together = explain(root / "together", "--method", ",".join(METHODS))
    alone = {method: explain(root / method, "--method", method) for method in METHODS}
    return together, alone


def test_several_methods_write_what_each_methods_own_run_writes_and_a_sheet_per_image(compared, images):
    together, alone = compared
    written = files_in(together)
    for method, out in alone.items():
        own = files_in(out)
        assert own and all(written.get(name) == data for name, data in own.items()), method  # same names, same bytes
    sheets = {name for name in written if name.endswith("_comparison.png")}
    assert sheets == {"a_comparison.png", "b_comparison.png"}
    assert set(written) == set().union(*(files_in(out) for out in alone.values())) | sheets
    for name, (width, height) in SIZES.items():
        sheet = rgb(together / name.replace(".png", "_comparison.png"))
        # one column for the input and one per method (tiles at the image's size: all are < 256 pixels)
        column = max(width, 150)
        assert sheet.shape[1] == 2 * figures.PAD + (1 + len(METHODS)) * column + len(METHODS) * figures.GAP
        assert sheet.shape[0] > height + 100  # title, headers, colour bars
        stem = Path(name).stem
        parts = [np.asarray(Image.open(images / name).convert("RGB")),  # the input, then each method's map:
                 rgb(together / f"{stem}_attention_rollout_0.900_max.png"),  # the overlays as written
                 rgb(next(together.glob(f"{stem}_chefer_*.png"))),
                 rgb(next(together.glob(f"{stem}_cp_lrp_*_relevance.png")))]  # cp-lrp: its signed relevance
        spots = [where(sheet, part) for part in parts]
        assert None not in spots and [x for x, _ in spots] == sorted(x for x, _ in spots)
    by_method = {}
    for entry in entries(together):
        by_method.setdefault(entry["method"], []).append(entry)
        assert entry["outputs"]["sheet"].endswith("_comparison.png")
        assert entry["output_bytes"]["sheet"] == Path(entry["outputs"]["sheet"]).stat().st_size
    assert sorted(by_method) == sorted(METHODS) and all(len(v) == 2 for v in by_method.values())
    # cp-lrp's signed outputs come by default, in the run of several methods too
    assert {"relevance", "relevance-overlay"} <= set(by_method["cp-lrp"][0]["outputs"])


def test_a_rerun_skips_what_is_done_per_method_and_redoes_what_is_not(compared, tiny_model_dir, images, tmp_path,
                                                                      capsys):
    out = Path(shutil.copytree(compared[0], tmp_path / "out"))
    for entry_file in [out / "manifest.json"]:  # the copy's entries name the copy's files
        entry_file.write_text(entry_file.read_text().replace(str(compared[0]), str(out)))
    before = files_in(out)
    code, _, err = command(capsys, tiny_model_dir, images, out, "--method", ",".join(METHODS))
    assert code == 0 and "0 explained, 0 failed (2 skipped" in err
    # one method's overlay of one image is gone: that method is redone for that image only
    sheet = out / "a_comparison.png"
    stamp = sheet.stat().st_mtime_ns
    chefer = next(out.glob("a_chefer_*.png"))
    chefer.unlink()
    code, _, err = command(capsys, tiny_model_dir, images, out, "--method", ",".join(METHODS))
    assert code == 0 and "1 explained, 0 failed (1 skipped" in err
    assert chefer.read_bytes() == before[chefer.name] and sheet.stat().st_mtime_ns == stamp
    assert all(e["outputs"].get("sheet") == str(sheet) for e in entries(out) if Path(e["input"]).name == "a.png")
    # the sheet is gone: every method of that image is redone (the sheet needs all their maps)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("b_*")}
    (out / "b_comparison.png").unlink()
    code, _, err = command(capsys, tiny_model_dir, images, out, "--method", ",".join(METHODS))
    assert code == 0 and "1 explained, 0 failed (1 skipped" in err
    now = files_in(out)  # the same files; the new sheet differs in the times in its headers only
    assert now.keys() == before.keys() and all(now[k] == before[k] for k in now if not k.endswith("_comparison.png"))
    assert rgb(out / "b_comparison.png").shape == rgb(compared[0] / "b_comparison.png").shape
    assert all(p.stat().st_mtime_ns != stamps[p.name] for p in out.glob("b_*") if p.name in stamps)


def test_folder_sheets_are_paged(compared, tiny_model_dir, images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(FolderSheetSink, "ROWS_PER_PAGE", 1)
    monkeypatch.setattr(FolderSheetSink, "METHODS_PER_PAGE", 2)
    out = tmp_path / "out"
    code, _, err = command(capsys, tiny_model_dir, images, out, "--method", "rollout,chefer,cp-lrp", "--sheet",
                           "--outputs", "mask")
    assert code == 0, err
    pages = sorted(out.glob("sheet_*.png"))
    assert [p.name for p in pages] == [f"sheet_00{k}.png" for k in range(1, 5)]  # 2 images x (2 + 1 methods)
    widths = [rgb(p).shape[1] for p in pages]
    assert widths[0] == widths[2] > widths[1] == widths[3]  # two method columns, then one
    run_entry = json.loads((out / "manifest.json").read_text())["runs"][-1]
    assert run_entry["sheets"] == [str(p) for p in pages] and "sheet" not in run_entry["outputs"]
    assert not list(out.glob("*_comparison.png"))  # --outputs names what is written


def test_per_layer_writes_a_strip_and_an_animation_with_a_frame_per_block(tiny_model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = command(capsys, tiny_model_dir, images / "a.png", out, "--method", "rollout,raw-attention,chefer",
                           "--per-layer", "strip,gif")
    assert code == 0, err
    blocks = 2  # conftest's tiny model
    for stem in ("a_attention_rollout_0.900_max", "a_raw_attention_last"):
        strip = rgb(out / f"{stem}_layers.png")
        assert strip.shape[1] > blocks * 32
        with Image.open(out / f"{stem}_layers.gif") as animation:
            assert animation.n_frames == blocks
    assert rgb(out / "a_raw_attention_last_heads_blocks.png") is not None  # raw attention's heads x blocks
    assert not list(out.glob("a_chefer_*_layers*")) and not list(out.glob("a_attention_rollout*heads*"))
    # the mask does not depend on asking for the blocks
    plain = tmp_path / "plain"
    command(capsys, tiny_model_dir, images / "a.png", plain)
    assert (plain / "a_attention_rollout_0.900_max.npy").read_bytes() == \
        (out / "a_attention_rollout_0.900_max.npy").read_bytes()


def test_cp_lrp_writes_its_signed_relevance_and_its_diverging_overlay(tiny_model_dir, images, tmp_path, capsys):
    from vit_explain.io.dataset import decode_item
    from vit_explain.io.models import load_model
    from vit_explain.io.preprocess import Preprocessor
    from vit_explain.methods.lrp import VITCPLRP
    out = tmp_path / "out"
    code, _, err = command(capsys, tiny_model_dir, images / "a.png", out, "--method", "cp-lrp")
    assert code == 0, err
    (entry,) = entries(out)
    assert set(entry["outputs"]) == {"overlay", "mask", "relevance", "relevance-overlay"}
    saved = np.load(entry["outputs"]["relevance"])
    model = load_model(f"local-dir:{tiny_model_dir}", None, None, "cpu")
    x = decode_item(images / "a.png", Preprocessor(model))["tensor"][None]
    np.testing.assert_array_equal(saved, VITCPLRP(model).explain(x).pixel_relevance[0].numpy())
    overlay = rgb(entry["outputs"]["relevance-overlay"])
    assert overlay.shape[:2] == (60, 90)


@pytest.mark.parametrize("args, named", [
    (["--method", "rollout,nope"], "nope"),
    (["--method", ","], "(none)"),
    (["--method", "chefer", "--per-layer"], "per-block"),
    (["--method", "rollout", "--per-layer", "bmp"], "bmp"),
    (["--method", "rollout,chefer", "--outputs", "relevance"], "relevance"),
    (["--method", "rollout,chefer", "--engine", "ray"], "one method"),
])
def test_bad_method_lists_and_outputs_are_one_line_and_exit_2(args, named, tiny_model_dir, images, tmp_path, capsys):
    code, _, err = command(capsys, tiny_model_dir, images, tmp_path / "out", *args)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and named in lines[0], err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_the_report_shows_each_comparison_sheet_once_and_the_folder_sheets(compared, tiny_model_dir, images, tmp_path,
                                                                          capsys):
    out = tmp_path / "out"
    code, _, err = command(capsys, tiny_model_dir, images, out, "--method", "rollout,chefer", "--sheet")
    assert code == 0, err
    code, _, err = run(capsys, "report", out)
    assert code == 0, err
    page = (out / "report.html").read_text()
    assert page.count("<p>comparison sheet</p>") == len(SIZES)
    assert "id='sheets'" in page and "<p>sheet sheet_001.png</p>" in page


def test_the_method_table_names_the_figures_each_explainer_can_draw(tiny_model_dir):
    """optional_outputs / extra_outputs (torch-free, for the command line) agree with what the
    explainers say they have (the sinks' `applies`)."""
    from vit_explain.cli.options import Options
    from vit_explain.io.figure_sinks import HeadsByBlocksSink, LayerStripSink
    from vit_explain.io.models import load_model
    from vit_explain.io.signed_sinks import RelevanceSink
    from vit_explain.methods.table import METHODS as TABLE
    model = load_model(f"local-dir:{tiny_model_dir}", None, None, "cpu")
    for name, spec in TABLE.items():
        explainer = spec.build(model, Options())
        outputs = spec.extra_outputs + spec.optional_outputs
        assert ("layers" in outputs) == LayerStripSink.applies(explainer), name
        assert ("heads-blocks" in outputs) == HeadsByBlocksSink.applies(explainer), name
        assert ("relevance" in spec.extra_outputs) == RelevanceSink.applies(explainer), name
