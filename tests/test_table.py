"""--outputs parquet on the local engine, input lists and globs, and the engines' command-line checks."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import image_files as files
from tests.helpers import LABELS, error_lines, run, tiny
from vit_explain.io.inputs import find_run_inputs, input_key
from vit_explain.io.table import COLUMNS, DATASET, ParquetSink, repair, rows_table, survey, write_part

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

NAME = "_attention_rollout_0.900_max"
ROOT = Path(__file__).parent.parent


def folder_of(tmp_path, count, name="in"):
    folder = tmp_path / name
    folder.mkdir()
    for i in range(count):
        files.write_rgb(folder / f"img{i}.png", size=(40 + i, 30 + 2 * i), seed=i)
    return folder


def rows_of(out) -> list[dict]:
    return sorted(pq.read_table(out / DATASET).to_pylist(), key=lambda r: r["input"])


def test_the_table_has_the_schema_and_the_masks_of_the_local_run(tiny_model_dir, tmp_path, capsys):
    folder, out = folder_of(tmp_path, 3), tmp_path / "out"
    (folder / "broken.png").write_bytes(b"not an image")
    code, _, err = run(capsys, "--image_path", folder, "--outputs", "parquet,mask", "--output-dir", out,
                       "--category_index", 2, *tiny(tiny_model_dir))
    assert code == 1 and error_lines(err)[-1] == "3 explained, 1 failed"
    table = pq.read_table(out / DATASET)
    assert table.schema.names == list(COLUMNS)
    assert str(table.schema.field("mask").type) == "list<element: halffloat>"
    rows = rows_of(out)
    assert [Path(r["input"]).name for r in rows] == ["broken.png", "img0.png", "img1.png", "img2.png"]
    broken, *good = rows
    assert "broken.png is named like an image but is not one PIL can read" in broken["error"]
    assert broken["mask"] is None and broken["method"] == "grad-rollout"
    for i, r in enumerate(good):
        assert r["error"] is None and (r["width"], r["height"]) == (40 + i, 30 + 2 * i)
        assert (r["target"], r["target_name"]) == (2, LABELS[2]) and r["predicted_name"] in LABELS
        assert 0 < r["probability"] <= 1 and json.loads(r["parameters"])["category_index"] == 2
        assert r["model"] == f"local-dir:{tiny_model_dir}" and r["input"] == str((folder / f"img{i}.png").resolve())
        npy = np.load(out / f"img{i}_grad_rollout_2_0.900_max.npy")
        mask = np.asarray(r["mask"], dtype=np.float32).reshape(r["grid_h"], r["grid_w"])
        np.testing.assert_allclose(mask, npy, atol=1e-3)  # float16
    # plain pandas reads it, and the manifest describes the run instead of listing images
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_parquet(out / DATASET)
    assert len(frame) == 4 and np.stack(frame["mask"].dropna()).shape == (3, 16)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"] == [] and manifest["table"]["rows"] == 4 and manifest["table"]["failed"] == 1
    assert [f["input"] for f in manifest["failures"]] == [str((folder / "broken.png").resolve())]
    (entry,) = manifest["runs"]
    assert entry["counts"] == {"explained": 3, "failed": 1, "skipped": 0} and entry["engine"] == "local"
    assert entry["command_line"][:2] == ["vit-explain", "--image_path"] and manifest["pyarrow"] == pa.__version__


def test_a_rerun_writes_only_the_missing_rows(tiny_model_dir, tmp_path, capsys):
    folder, out = folder_of(tmp_path, 3), tmp_path / "out"
    args = ["--image_path", folder, "--outputs", "parquet", "--output-dir", out, *tiny(tiny_model_dir)]
    assert run(capsys, *args)[0] == 0
    first = {r["input"]: r["run"] for r in rows_of(out)}
    files.write_rgb(folder / "img9.png", seed=9)
    code, _, err = run(capsys, *args)
    assert code == 0 and "1 explained, 0 failed (3 skipped" in err
    rows = rows_of(out)
    assert len(rows) == 4 and all(first[r["input"]] == r["run"] for r in rows if r["input"] in first)
    code, _, err = run(capsys, *args)
    assert code == 0 and "0 explained, 0 failed (4 skipped" in err and len(rows_of(out)) == 4
    # another method into the same table adds its own rows; --overwrite redoes and keeps one row per request
    assert run(capsys, *args, "--method", "raw-attention")[0] == 0
    assert run(capsys, *args, "--overwrite")[0] == 0
    rows = rows_of(out)
    assert len(rows) == 8 and sorted(r["method"] for r in rows) == ["raw-attention"] * 4 + ["rollout"] * 4
    assert json.loads((out / "manifest.json").read_text())["table"]["rows"] == 8
    assert [len(run_["counts"]) for run_ in json.loads((out / "manifest.json").read_text())["runs"]] == [3] * 5


def test_overlays_stay_available_with_the_table(tiny_model_dir, tmp_path, capsys):
    folder, out = folder_of(tmp_path, 2), tmp_path / "out"
    code, _, err = run(capsys, "--image_path", folder, "--outputs", "overlay-jpg,parquet", "--output-dir", out,
                       *tiny(tiny_model_dir))
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.jpg")) == [f"img{i}{NAME}.jpg" for i in range(2)]
    assert len(rows_of(out)) == 2


def test_a_killed_runs_journal_becomes_rows_and_torn_parts_go(tmp_path):
    class Options:
        output_dir, rows_per_file, run_id, rank = tmp_path, 100, "20260101T000000-abcdef", 1
    sink = ParquetSink(Options)
    entry = {"input": "/x/a.png", "method": "rollout", "parameters": {}, "model": {"name": "m", "weights": "w"},
             "request": "r1", "run": Options.run_id}
    sink.fail(entry, "first")
    sink.fail({**entry, "input": "/x/b.png", "request": "r2"}, "second")
    dataset = tmp_path / DATASET
    assert not list(dataset.glob("part-*")) and len(list(dataset.glob(".journal-*"))) == 1  # then killed
    (dataset / "part-torn.parquet").write_bytes(b"PAR1 half a file")
    assert repair(dataset) == (2, 1)
    (part,) = dataset.glob("part-*.parquet")
    assert part.name == "part-20260101T000000-abcdef-r001-00000-recovered.parquet"
    assert [r["error"] for r in pq.read_table(part).to_pylist()] == ["first", "second"]
    assert not list(dataset.glob(".journal-*"))


def test_survey_keeps_one_row_per_request(tmp_path):
    dataset = tmp_path / DATASET
    base = {"model": "m", "model_weights": "w", "method": "rollout", "parameters": "{}"}
    write_part(dataset / "part-1.parquet", rows_table([
        {**base, "input": "a", "request": "ra", "run": "1", "error": "boom"},
        {**base, "input": "b", "request": "rb", "run": "1", "error": "boom"}]))
    write_part(dataset / "part-2.parquet", rows_table([
        {**base, "input": "a", "request": "ra", "run": "2", "grid_h": 1, "grid_w": 1,
         "mask": np.ones(1, np.float16)},
        {**base, "input": "b", "request": "rb", "run": "2", "error": "boom again"}]))
    state = survey(dataset)
    assert (state["rows"], state["explained"], state["failed"]) == (2, 1, 1)
    assert state["failures"] == [{"input": "b", "error": "boom again"}]
    assert not (dataset / "part-1.parquet").exists()  # both its rows lost: the file goes
    assert len(pq.read_table(dataset)) == 2


def journaled_rows(dataset) -> int:
    """Rows a running run's journals hold so far (whole lines)."""
    return sum(journal.read_text().count("\n") for journal in dataset.glob(".journal-*.jsonl"))


def test_after_kill_9_a_rerun_loses_only_the_images_in_flight(tiny_model_dir, tmp_path, capsys):
    from tests.test_trustworthy_runs import start_slow_run, wait_for
    folder, out = folder_of(tmp_path, 12), tmp_path / "out"
    args = ["--image_path", folder, "--outputs", "parquet", "--output-dir", out, "--batch-size", 2,
            *tiny(tiny_model_dir)]
    process = start_slow_run(args, f"parquet-kill9-{id(tmp_path)}")
    wait_for(lambda: journaled_rows(out / DATASET) >= 4)
    process.kill()
    process.communicate(timeout=30)
    assert not list((out / DATASET).glob("part-*"))  # the rows were still buffered: only the journal has them
    code, _, err = run(capsys, *args)
    assert code == 0, err
    skipped = int(err.split("(")[1].split(" skipped")[0])
    assert skipped >= 4 and f"{12 - skipped} explained, 0 failed" in err
    rows = rows_of(out)
    assert len(rows) == 12 and len({r["input"] for r in rows}) == 12 and all(r["error"] is None for r in rows)
    assert not list((out / DATASET).glob(".journal-*"))


# --- inputs -------------------------------------------------------------------------------------

def test_a_list_file_names_inputs_relative_to_itself(tiny_model_dir, tmp_path, capsys):
    folder = folder_of(tmp_path, 3)
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# three inputs\nin/img0.png\n\n{folder / 'img2.png'}\nin/missing.png\n")
    inputs = find_run_inputs(listing)
    assert inputs.kind == "list" and [p.name for p in inputs.images] == ["img0.png", "img2.png", "missing.png"]
    out = tmp_path / "out"
    code, _, err = run(capsys, "--image_path", listing, "--outputs", "parquet", "--output-dir", out,
                       *tiny(tiny_model_dir))
    assert code == 1 and error_lines(err)[-1] == "2 explained, 1 failed"
    assert "no such file or folder" in rows_of(out)[-1]["error"]


def test_a_glob_names_every_file_it_matches(tmp_path):
    folder = folder_of(tmp_path, 3)
    (folder / "deep").mkdir()
    files.write_rgb(folder / "deep" / "img7.jpg")
    assert [p.name for p in find_run_inputs(f"{folder}/**/*.png").images] == ["img0.png", "img1.png", "img2.png"]
    assert [p.name for p in find_run_inputs(f"{folder}/**/*").images] == ["img7.jpg", "img0.png", "img1.png",
                                                                         "img2.png"]
    assert find_run_inputs(f"{folder}/**/*").root == folder.resolve()
    with pytest.raises(ValueError, match="no files match"):
        find_run_inputs(f"{folder}/*.webp")


def test_a_file_uri_is_a_local_path(tmp_path):
    folder = folder_of(tmp_path, 2)
    inputs = find_run_inputs(folder.resolve().as_uri())
    assert inputs.kind == "folder" and [p.name for p in inputs.images] == ["img0.png", "img1.png"]


def test_uris_are_kept_as_given_and_refused_by_the_local_engine(tiny_model_dir, tmp_path, capsys):
    listing = tmp_path / "inputs.lst"
    listing.write_text("s3://bucket/a.jpg\n")
    inputs = find_run_inputs(listing)
    assert inputs.uris == ["s3://bucket/a.jpg"] and input_key("s3://bucket/a.jpg") == "s3://bucket/a.jpg"
    code, _, err = run(capsys, "--image_path", listing, "--outputs", "parquet", "--output-dir", tmp_path / "out",
                       *tiny(tiny_model_dir))
    assert code == 1 and "URIs are read by --engine ray only" in err


# --- the command line ---------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--engine", "ray", "--outputs", "overlay"], "--outputs: --engine ray writes the Parquet table: add parquet"),
    (["--actors", "2"], "--actors: applies to --engine ray only"),
    (["--cpus-per-actor", "0.5", "--engine", "torchrun"], "--cpus-per-actor: applies to --engine ray only"),
    (["--rows-per-file", "10"], "--rows-per-file: applies to --outputs parquet only"),
    (["--engine", "torchrun"], "--engine torchrun runs under torchrun: torchrun --nproc-per-node N -m vit_explain"),
    (["--engine", "spark"], "'spark' is not one of 'local', 'ray', 'torchrun'"),
])
def test_engine_options_are_checked(args, message, tmp_path, capsys, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--output-dir", tmp_path / "out",
                       *args)
    (line,) = error_lines(err)
    assert code == 2 and message in line, line


@pytest.mark.parametrize("args,package,extra", [(["--engine", "ray"], "ray", "ray"),
                                                (["--outputs", "parquet"], "pyarrow", "parquet")])
def test_a_missing_extra_is_one_line_naming_it(args, package, extra, tmp_path, capsys, monkeypatch):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else find_spec(name, *a))
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--output-dir", tmp_path / "out",
                       *args)
    (line,) = error_lines(err)
    assert code == 2 and line.endswith(f"needs the {package} package: pip install 'vit-explain[{extra}]'")


def test_python_dash_m_is_the_command():
    result = subprocess.run([sys.executable, "-m", "vit_explain", "--version"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0 and "vit-explain" in result.stdout
