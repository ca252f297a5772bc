"""The distributed engines, for real on this machine: a local Ray cluster (2 logical CPUs, one
logical GPU) and torchrun with 2 CPU processes. Each must give the local engine's masks, turn a bad
file into a row with its error, and on a re-run write only the rows that are missing."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import image_files as files
from tests.helpers import error_lines, run, tiny
from vit_explain.io.table import COLUMNS, DATASET

pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).parent.parent
NAME = "_attention_rollout_0.900_max"


@pytest.fixture(scope="module")
def images(tmp_path_factory, tiny_model_dir):
    """Seven images, the local engine's masks of them, a list of the first four plus a broken file
    and a missing one."""
    tmp = tmp_path_factory.mktemp("engines")
    folder = tmp / "images"
    folder.mkdir()
    for i in range(7):
        files.write_rgb(folder / f"img{i}.png", size=(40 + 3 * i, 30 + i), seed=i)
    reference = tmp / "reference"
    subprocess.run([sys.executable, "-m", "vit_explain", "--image_path", str(folder), "--outputs", "mask",
                    "--output-dir", str(reference), *tiny(tiny_model_dir)], check=True, cwd=ROOT)
    masks = {str((folder / f"img{i}.png").resolve()): np.load(reference / f"img{i}{NAME}.npy") for i in range(7)}
    (tmp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing after the signature")
    first = tmp / "first.txt"
    first.write_text("".join(f"images/img{i}.png\n" for i in range(4)) + "broken.png\nimages/missing.png\n")
    return {"folder": folder, "first": first, "masks": masks, "tmp": tmp}


def rows_of(out) -> list[dict]:
    return sorted(pq.read_table(out / DATASET).to_pylist(), key=lambda r: r["input"])


def check_rows(rows, masks, explained):
    """The explained rows are the local engine's masks (within float16), every failure has its error."""
    assert sorted(Path(r["input"]).name for r in rows if r["error"] is None) == sorted(explained)
    for r in rows:
        if r["error"] is None:
            mask = np.asarray(r["mask"], dtype=np.float32).reshape(r["grid_h"], r["grid_w"])
            np.testing.assert_allclose(mask, masks[r["input"]], atol=1e-3)
        else:
            assert r["mask"] is None
            assert "broken.png" in r["error"] or ("missing.png" in r["error"] and "no such file" in r["error"]), \
                r["error"]


def check_schema(out):
    assert pq.read_schema(next((out / DATASET).glob("part-*.parquet"))).names == list(COLUMNS)


# --- Ray ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance for the module: 2 logical CPUs and a logical GPU (a CPU-only machine
    schedules GPU actors on it; they fall back to the CPU). No token file is written anywhere."""
    ray = pytest.importorskip("ray")
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = saved


def test_ray_gives_the_local_masks_and_resumes(ray_cluster, images, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--engine", "ray", "--output-dir", out, "--batch-size", 2, *tiny(tiny_model_dir)]
    # two actors at half a CPU each: with a whole CPU each, nothing is left to read with on 2 cores
    code, _, err = run(capsys, "--image_path", images["first"], "--actors", 2, "--cpus-per-actor", 0.5, *common)
    assert code == 1 and error_lines(err)[-1] == "4 explained, 2 failed", err
    check_schema(out)
    first = rows_of(out)
    assert len(first) == 6
    check_rows(first, images["masks"], [f"img{i}.png" for i in range(4)])
    runs = {r["input"]: r["run"] for r in first if r["error"] is None}
    # the whole folder, on one actor that asks for the GPU: only the three missing images are explained
    code, _, err = run(capsys, "--image_path", images["folder"], "--gpus-per-actor", 1, "--cpus-per-actor", 0.5,
                       *common)
    assert code == 0 and error_lines(err)[-1] == "3 explained, 0 failed (4 skipped: outputs exist; --overwrite " \
                                                 "redoes them)", err
    rows = rows_of(out)
    assert len(rows) == 9  # + the two failures of the first list, kept
    check_rows(rows, images["masks"], [f"img{i}.png" for i in range(7)])
    assert all(runs[r["input"]] == r["run"] for r in rows if r["input"] in runs)  # not rewritten
    # nothing left to do: Ray is not even asked
    code, _, err = run(capsys, "--image_path", images["folder"], *common)
    assert code == 0 and "0 explained, 0 failed (7 skipped" in err and len(rows_of(out)) == 9
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["engine"] for r in manifest["runs"]] == ["ray"] * 3 and manifest["table"]["rows"] == 9
    assert manifest["ray"] == ray_cluster.__version__ and len(manifest["failures"]) == 2


def test_ray_refuses_actors_that_leave_no_cpu_to_read_with(ray_cluster, images, tiny_model_dir, tmp_path, capsys):
    code, _, err = run(capsys, "--image_path", images["folder"], "--engine", "ray", "--actors", 2,
                       "--output-dir", tmp_path / "out", *tiny(tiny_model_dir))
    (line,) = error_lines(err)
    assert code == 2 and "2 actors x --cpus-per-actor 1 take every CPU of the Ray cluster (2)" in line


def test_a_ray_worker_decodes_on_threads_and_keys_uris(images, tiny_model_dir):
    """The actor's own code, without Ray: bytes in, rows out; URIs keep their scheme (Ray strips it)."""
    pa = pytest.importorskip("pyarrow")
    pytest.importorskip("ray")
    from vit_explain.cli.engines.ray import RayWorker
    from vit_explain.cli.options import Options
    options = Options(image_path=images["folder"], method="rollout", model=f"local-dir:{tiny_model_dir}",
                      outputs=("parquet",), cpus_per_actor=2, run_id="run", quiet=True)
    worker = RayWorker(options, None, "s3", {"name": options.model, "weights": "w"})
    assert worker.decoders is not None and worker.decoders._max_workers == 2
    files_ = [images["folder"] / f"img{i}.png" for i in range(3)]
    rows = worker(pa.table({"path": [f"bucket/{f.name}" for f in files_] + ["bucket/empty.png"],
                            "bytes": [f.read_bytes() for f in files_] + [b""]})).to_pylist()
    assert [r["input"] for r in rows] == [f"s3://bucket/{f.name}" for f in files_] + ["s3://bucket/empty.png"]
    for f, r in zip(files_, rows):
        mask = np.asarray(r["mask"], dtype=np.float32).reshape(r["grid_h"], r["grid_w"])
        np.testing.assert_allclose(mask, images["masks"][str(f.resolve())], atol=1e-3)
    assert rows[-1]["error"] == "s3://bucket/empty.png is empty (0 bytes)" and rows[-1]["run"] == "run"


def test_a_uri_prefix_stands_for_the_files_below_it(images):
    pytest.importorskip("ray")
    from vit_explain.cli.engines.ray import expand_uri
    uri = images["folder"].resolve().as_uri()
    assert expand_uri(uri) == [f"{uri}/img{i}.png" for i in range(7)]
    assert expand_uri(f"{uri}/img3.png") == [f"{uri}/img3.png"]


# --- torchrun ----------------------------------------------------------------------------------------

def torchrun(*args):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "vit_explain", "--engine", "torchrun", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_torchrun_shards_gives_the_local_masks_and_resumes(images, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    common = ["--output-dir", out, "--batch-size", 2, "--workers", 0, *tiny(tiny_model_dir)]
    result = torchrun("--image_path", images["first"], *common)
    assert result.returncode == 1 and "4 explained, 2 failed" in result.stderr, result.stderr
    check_schema(out)
    # each rank wrote its own part file: strided over the sorted list, no image twice
    by_rank = {}
    for part in (out / DATASET).glob("part-*.parquet"):
        by_rank[re.search(r"-r(\d{3})-", part.name).group(1)] = sorted(Path(i).name for i in pq.read_table(part)["input"].to_pylist())
    assert by_rank == {"000": ["broken.png", "img1.png", "img3.png"], "001": ["img0.png", "img2.png", "missing.png"]}
    first = rows_of(out)
    assert len(first) == 6
    check_rows(first, images["masks"], [f"img{i}.png" for i in range(4)])
    result = torchrun("--image_path", images["folder"], *common)
    assert result.returncode == 0 and "3 explained, 0 failed (4 skipped" in result.stderr, result.stderr
    rows = rows_of(out)
    assert len(rows) == 9
    check_rows(rows, images["masks"], [f"img{i}.png" for i in range(7)])
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(r["engine"], r["processes"]) for r in manifest["runs"]] == [("torchrun", 2)] * 2
