"""Folder runs a careless or unlucky user can make: bombs, killed workers and runs, concurrent
runs, other models, other methods, names that collide or escape. Nothing already written is
lost, nothing is mislabelled, nothing lands outside the output folder."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from timm.models import save_for_hf

from tests import image_files as files
from tests.helpers import LABELS, error_lines, peaky, run, tiny
from vit_explain.io.dataset import ImageFiles
from vit_explain.io.images import image_size

NAME = "_attention_rollout_0.900_max"
ROOT = Path(__file__).parent.parent


def folder_of(tmp_path, count, name="in"):
    folder = tmp_path / name
    folder.mkdir()
    for seed in range(count):
        files.write_rgb(folder / f"img{seed}.png", seed=seed)
    return folder


def manifest_of(out):
    """The manifest, parsed strictly: NaN or Infinity would not be JSON."""
    def refuse(constant):
        raise ValueError(f"{constant} in manifest.json")
    return json.loads((out / "manifest.json").read_text(), parse_constant=refuse)


def entries_of(out):
    return manifest_of(out)["images"]


# --- memory --------------------------------------------------------------------------------------

def test_bombs_are_refused_from_their_header_in_bounded_memory(tmp_path):
    """Tiny files that would decode to gigabytes: one line each, and the process stays small."""
    bombs = {
        "gray.png": (30000, 30000, 8, 0),        # 875 KB of zeros would be 6 GB on the way to RGB
        "deep.png": (20000, 20000, 16, 0),       # 16-bit: a 3 GB float array in 0.1
        "wide.png": (150000, 1, 8, 2),           # 1 x 150000: the model's resize made it huge
    }
    for name, (w, h, depth, color) in bombs.items():
        files.write_png_header(tmp_path / name, w, h, depth, color)
    # VmHWM, the peak of this process's own memory (ru_maxrss would count the forked pytest too)
    code = ("import json, sys\n"
            "from vit_explain.io.images import load_image, ImageError\n"
            "lines = []\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n"
            "        load_image(path)\n"
            "    except ImageError as error:\n"
            "        lines.append(str(error))\n"
            "peak = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "print(json.dumps([lines, int(peak.split()[1])]))\n")
    result = subprocess.run([sys.executable, "-c", code, *[str(tmp_path / n) for n in bombs]],
                            capture_output=True, text=True, cwd=ROOT, check=True)
    lines, peak_kb = json.loads(result.stdout)
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    assert "gray.png is too large to decode: 30000 x 30000 pixels (L)" in lines[0] and "GiB budget" in lines[0]
    assert "deep.png is too large to decode: 20000 x 20000 pixels (I;16" in lines[1]
    assert "wide.png is 150000 x 1 pixels: an aspect ratio beyond 100:1" in lines[2]
    assert peak_kb < 400_000  # the interpreter, numpy and PIL: far from any decode


def test_a_bomb_in_a_folder_is_one_line_and_the_rest_is_explained(tiny_model_dir, tmp_path, capsys):
    folder = folder_of(tmp_path, 3)
    files.write_png_header(folder / "bomb.png", 30000, 30000, 8, 0)
    code, _, err = run(capsys, "--image_path", folder, "--output-dir", tmp_path / "out", *tiny(tiny_model_dir))
    lines = error_lines(err)
    assert code == 1 and lines[-1] == "3 explained, 1 failed"
    assert len(lines) == 2 and "bomb.png is too large to decode" in lines[0]


def test_a_killed_decoding_worker_fails_its_own_image_only(tiny_model_dir, tmp_path, capsys, monkeypatch):
    folder = folder_of(tmp_path, 9)
    files.write_rgb(folder / "img4_dies.png", seed=4)
    getitem = ImageFiles.__getitem__

    def killed_on_one_file(self, index):
        if self.paths[index].name == "img4_dies.png":
            os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
        return getitem(self, index)
    monkeypatch.setattr(ImageFiles, "__getitem__", killed_on_one_file)
    out = tmp_path / "out"
    code, _, err = run(capsys, "--image_path", folder, "--output-dir", out, "--workers", 2, "--batch-size", 2,
                       *tiny(tiny_model_dir))
    lines = error_lines(err)
    assert code == 1 and lines[-1] == "9 explained, 1 failed", err
    assert len(lines) == 2 and "img4_dies.png: its decoding process was killed" in lines[0]
    assert len(list(out.glob(f"*{NAME}.png"))) == 9
    statuses = {Path(e["input"]).name: e["status"] for e in entries_of(out)}
    assert statuses.pop("img4_dies.png") == "failed" and set(statuses.values()) == {"explained"}


# --- killed runs, concurrent runs ----------------------------------------------------------------

SLOW_RUN = """
import sys, time
from vit_explain.methods.base import AttentionExplainer
explain = AttentionExplainer.explain
def slow(self, *args, **kwargs):
    time.sleep(0.3)
    return explain(self, *args, **kwargs)
AttentionExplainer.explain = slow
from vit_explain.cli.main import main
main(sys.argv[1:])
"""


def start_slow_run(args, marker):
    env = dict(os.environ, VIT_EXPLAIN_TEST_MARKER=marker)
    return subprocess.Popen([sys.executable, "-c", SLOW_RUN, *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout=60.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def processes_with(marker):
    """Processes whose environment carries marker (the run and its decoding workers)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_sigterm_ends_a_run_like_ctrl_c(tiny_model_dir, tmp_path):
    folder, out = folder_of(tmp_path, 40), tmp_path / "out"
    marker = f"sigterm-{os.getpid()}-{time.time()}"
    process = start_slow_run(["--image_path", folder, "--output-dir", out, "--batch-size", 2, "--workers", 2,
                              *tiny(tiny_model_dir)], marker)
    wait_for(lambda: len(list(out.glob(f"*{NAME}.png"))) >= 4)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert error_lines(err)[-1].startswith("vit-explain: terminated (SIGTERM):"), err
    overlays = {p.name for p in out.glob(f"*{NAME}.png")}
    listed = {Path(e["outputs"]["overlay"]).name for e in entries_of(out)}
    assert overlays == listed and 4 <= len(listed) < 40, err  # every file on disk is in the manifest
    wait_for(lambda: not processes_with(marker), timeout=30)  # no decoding worker left behind
    assert not list(out.rglob("*.part")) and not (out / ".manifest.journal").exists()


def test_after_kill_9_a_rerun_keeps_what_was_finished_and_does_the_rest(tiny_model_dir, tmp_path, capsys):
    folder, out = folder_of(tmp_path, 30), tmp_path / "out"
    args = ["--image_path", folder, "--output-dir", out, "--batch-size", 2, *tiny(tiny_model_dir)]
    process = start_slow_run(args, f"kill9-{os.getpid()}")
    wait_for(lambda: len(list(out.glob(f"*{NAME}.npy"))) >= 4)
    process.kill()
    process.communicate(timeout=30)
    assert not (out / "manifest.json").exists()  # the run never got to save it: the journal has it
    (out / ".img0.png.abcd1234.part").write_bytes(b"half")  # what a killed 0.1 run left behind
    code, _, err = run(capsys, *args)
    assert code == 0, err
    explained, skipped = (int(n) for n in
                          err.split(" explained")[0].split()[-1:] + err.split("(")[1].split(" skipped")[:1])
    assert explained + skipped == 30 and skipped >= 4
    entries = entries_of(out)
    assert len(entries) == 30 and {e["status"] for e in entries} == {"explained"}
    assert not list(out.rglob("*.part")) and not (out / ".manifest.journal").exists()


def test_a_second_run_into_the_same_folder_is_refused(tiny_model_dir, tmp_path, capsys):
    folder, out = folder_of(tmp_path, 20), tmp_path / "out"
    process = start_slow_run(["--image_path", folder, "--output-dir", out, "--batch-size", 2,
                              *tiny(tiny_model_dir)], f"second-{os.getpid()}")
    try:
        wait_for(lambda: (out / ".manifest.journal").exists())
        code, _, err = run(capsys, "--image_path", folder, "--output-dir", out, *tiny(tiny_model_dir))
        (line,) = error_lines(err)
        assert code == 5 and f"another vit-explain run is writing to {out}" in line
    finally:
        process.kill()
        process.communicate(timeout=30)


# --- what counts as finished ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory):
    """The same architecture and class names as tiny_model_dir, other weights."""
    folder = tmp_path_factory.mktemp("other-vit")
    args = {"num_classes": 3, "img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3}
    torch.manual_seed(1)
    model = peaky(timm.create_model("vit_tiny_patch16_224", pretrained=False, **args))
    save_for_hf(model, folder, model_config={"label_names": LABELS}, model_args=args)
    return folder


def test_a_rerun_with_another_model_redoes_everything(tiny_model_dir, other_model_dir, tmp_path, capsys):
    folder, out = folder_of(tmp_path, 3), tmp_path / "out"
    assert run(capsys, "--image_path", folder, "--output-dir", out, *tiny(tiny_model_dir))[0] == 0
    first = {e["input"]: e["model"]["weights"] for e in entries_of(out)}
    code, _, err = run(capsys, "--image_path", folder, "--output-dir", out, *tiny(other_model_dir))
    assert code == 0 and error_lines(err) == ["3 explained, 0 failed"]
    entries = entries_of(out)
    assert len(entries) == 3 and all(e["model"]["weights"] != first[e["input"]] for e in entries)
    assert all(e["model"]["name"] == f"local-dir:{other_model_dir}" for e in entries)
    code, _, err = run(capsys, "--image_path", folder, "--output-dir", out, *tiny(other_model_dir))
    assert "0 explained, 0 failed (3 skipped" in err


def test_truncated_or_empty_outputs_are_redone(tiny_model_dir, tmp_path, capsys):
    folder, out = folder_of(tmp_path, 3), tmp_path / "out"
    args = ["--image_path", folder, "--output-dir", out, *tiny(tiny_model_dir)]
    assert run(capsys, *args)[0] == 0
    overlay = out / f"img1{NAME}.png"
    overlay.write_bytes(overlay.read_bytes()[:100])  # a crash of some other tool half-way
    (out / f"img2{NAME}.npy").write_bytes(b"")
    code, _, err = run(capsys, *args)
    assert code == 0 and "2 explained, 0 failed (1 skipped" in err
    assert len(overlay.read_bytes()) > 100


def test_a_class_agnostic_map_is_not_labelled_with_a_class(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--method", "rollout",
                       "--category_index", 1, "--output-dir", out, *tiny(tiny_model_dir))
    assert code == 0, err
    (entry,) = entries_of(out)
    assert entry["target"] == "class-agnostic" and entry["explained_class"] is None
    assert "category_index" not in entry["parameters"]


def test_a_second_method_keeps_the_first_methods_entries(tiny_model_dir, tmp_path, capsys):
    folder, out = folder_of(tmp_path, 2), tmp_path / "out"
    for method in ("rollout", "chefer"):
        assert run(capsys, "--image_path", folder, "--method", method, "--output-dir", out,
                   *tiny(tiny_model_dir))[0] == 0
    entries = entries_of(out)
    assert sorted(e["method"] for e in entries) == ["chefer", "chefer", "rollout", "rollout"]
    assert all(Path(path).exists() for e in entries for path in e["outputs"].values())


def test_one_folder_by_relative_and_absolute_path_is_one_set_of_entries(tiny_model_dir, tmp_path, capsys,
                                                                         monkeypatch):
    folder_of(tmp_path, 2)
    monkeypatch.chdir(tmp_path)
    for path in ("in", tmp_path / "in"):
        assert run(capsys, "--image_path", path, "--output-dir", tmp_path / "out", *tiny(tiny_model_dir))[0] == 0
    entries = entries_of(tmp_path / "out")
    assert sorted(e["input"] for e in entries) == [str(tmp_path / "in" / f"img{i}.png") for i in range(2)]


def test_a_model_with_nan_weights_fails_its_images_and_the_manifest_stays_json(tmp_path, capsys):
    folder = tmp_path / "nan-vit"
    args = {"num_classes": 3, "img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 48, "num_heads": 3}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args)
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    save_for_hf(model, folder, model_config={"label_names": LABELS}, model_args=args)
    out = tmp_path / "out"
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--output-dir", out,
                       *tiny(folder))
    lines = error_lines(err)
    assert code == 1 and "the model's output is not finite" in lines[0]
    (entry,) = entries_of(out)  # parses strictly
    assert entry["status"] == "failed"


# --- where outputs go ----------------------------------------------------------------------------

def test_names_that_would_escape_or_collide_get_their_own_outputs(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("..png", "a.png", "a.jpg", "a_png.png", "x" * 219 + ".png"):
        files.write_rgb(folder / name)
    out = tmp_path / "sub" / "out"
    code, _, err = run(capsys, "--image_path", folder, "--output-dir", out, *tiny(tiny_model_dir))
    assert code == 0 and error_lines(err) == ["4 explained, 0 failed"]  # a folder's hidden ..png is skipped
    code, _, err = run(capsys, "--image_path", folder / "..png", "--output-dir", out, *tiny(tiny_model_dir))
    assert code == 0 and error_lines(err) == ["1 explained, 0 failed"]  # named on its own, it is explained
    entries = entries_of(out)
    overlays = [Path(e["outputs"]["overlay"]) for e in entries]
    assert len(set(overlays)) == 5 and all(p.parent == out and p.is_file() for p in overlays)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out"]  # nothing beside it
    assert not list(out.rglob("*.part"))


def test_inputs_inside_the_output_folder_are_refused(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    nested = folder_of(out, 1, name="inputs")  # an input folder inside the output folder
    image = files.write_rgb(out / "manifest.json")  # an image named like the manifest
    for path in (nested, image):
        code, _, err = run(capsys, "--image_path", path, "--output-dir", out, *tiny(tiny_model_dir))
        (line,) = error_lines(err)
        assert code == 5 and "lies inside the output folder" in line
    assert image_size(image) == (64, 48)  # untouched


def test_a_link_planted_in_the_output_folder_is_not_written_through(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    files.write_rgb(folder / "sub" / "a.png")
    files.write_rgb(folder / "b.png")
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    out.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    code, _, err = run(capsys, "--image_path", folder, "--output-dir", out, *tiny(tiny_model_dir))
    lines = error_lines(err)
    assert code == 1 and lines[-1] == "1 explained, 1 failed"
    assert "a.png: cannot write outputs" in lines[0] and "symbolic link" in lines[0]
    assert not list(elsewhere.iterdir())
