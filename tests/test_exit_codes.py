"""Every user-caused condition ends in its documented exit code (usage 2, model 3, input 4, output 5)
and one line on stderr, whatever a file name holds; 70 is left for bugs."""
import collections
import errno
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests import image_files as files
from tests.helpers import error_lines, run, tiny
from vit_explain.io.hub import MAX_CLASSES
from vit_explain.io.messages import one_line, shown


def one_error(err: str) -> str:
    """The one line on stderr that is not the run's summary; fails if there are more."""
    lines = [line for line in error_lines(err) if not line.endswith(" failed") and "images scored" not in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("vit-explain: ")
    return lines[0]


class Evil:
    """A pickled object that would run code when unpickled."""
    def __reduce__(self):
        return (print, ("this ran while loading the weights",))


def config_of(folder):
    return json.loads((folder / "config.json").read_text())


def set_config(folder, **changes):
    config = config_of(folder)
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def weights(folder):
    (path,) = [p for p in folder.iterdir() if p.name != "config.json"]
    return path


# (how to break a copy of a saved timm folder, what the one line says)
BROKEN_FOLDERS = {
    "invalid JSON": (lambda d: (d / "config.json").write_text("{not json"), "config.json is not valid JSON"),
    "JSON not an object": (lambda d: (d / "config.json").write_text("[1, 2]"), "is not a timm model config"),
    "no architecture": (lambda d: set_config(d, architecture=None), "names no architecture"),
    "unknown architecture": (lambda d: set_config(d, architecture="no_such_net"),
                             "names architecture 'no_such_net', which timm"),
    "a billion classes": (lambda d: set_config(d, num_classes=10**9), "claims 1,000,000,000 classes"),
    "classes not a number": (lambda d: set_config(d, num_classes="many"), "gives 'many' classes"),
    "no weights": (lambda d: weights(d).unlink(), "has no weights file"),
    "corrupt weights": (lambda d: weights(d).write_bytes(b"garbage" * 20), "cannot read the weights in"),
    "truncated weights": (lambda d: weights(d).write_bytes(weights(d).read_bytes()[:3000]),
                          "cannot read the weights in"),
    "empty weights": (lambda d: weights(d).write_bytes(b""), "cannot read the weights in"),
    "pickled objects": (lambda d: torch.save({"evil": Evil()}, weights(d)),
                        "holds pickled Python objects besides tensors, which vit-explain does not load"),
    "weights of another model": (
        lambda d: torch.save({"sd": {}, "counts": collections.Counter()}, weights(d)),
        "do not fit the architecture its config.json names: Error(s) in loading state_dict"),
}


@pytest.mark.parametrize("case", list(BROKEN_FOLDERS))
def test_a_broken_saved_folder_is_a_model_error(case, tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    breaks, message = BROKEN_FOLDERS[case]
    breaks(folder)
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--output-dir", tmp_path / "out",
                       *tiny(folder))
    assert code == 3 and message in one_error(err), err
    assert "this ran" not in err


def test_a_model_larger_than_memory_is_refused_before_it_is_built(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """The size is found on the meta device (no memory); the real build never starts."""
    monkeypatch.setattr("vit_explain.io.hub.physical_memory", lambda: 1024)
    built = []
    create_model = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: built.append(torch.empty(0).device)
                        or create_model(*a, **k))
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--output-dir", tmp_path / "out",
                       *tiny(tiny_model_dir))
    assert code == 3 and "GiB for its weights, more than this machine's 0 GiB of memory" in one_error(err)
    assert built == [torch.device("meta")]


def test_a_checkpoint_head_claiming_a_billion_classes_is_refused_unbuilt(tmp_path, capsys, monkeypatch):
    """A 22 MB file whose head tensor is a stride-0 view claims 10^9 classes: a head for them
    would take 768 GB. It is refused from the tensor's shape, before any model is built."""
    state = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3).state_dict()
    state["head.weight"] = torch.zeros(1, 192).expand(10**9, 192)
    state["head.bias"] = torch.zeros(1).expand(10**9)
    torch.save(state, tmp_path / "huge-head.pth")
    calls = []
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: calls.append(k))
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--model", "vit_tiny_patch16_224",
                       "--checkpoint", tmp_path / "huge-head.pth", "--output-dir", tmp_path / "out", "-q")
    assert code == 3 and f"claims 1,000,000,000 classes, more than the {MAX_CLASSES:,}" in one_error(err)
    assert calls == []


@pytest.mark.parametrize("content,message", [
    (lambda path: torch.save({"evil": Evil()}, path), "holds pickled Python objects"),
    (lambda path: path.write_bytes(b"\x00" * 50), "cannot read the weights in"),
    (lambda path: torch.save([torch.zeros(2)], path), "cannot read the weights in"),
    (lambda path: torch.save({"head.weight": torch.zeros(2, 3)}, path), "does not fit vit_tiny_patch16_224"),
])
def test_a_bad_checkpoint_is_a_model_error(tmp_path, capsys, content, message):
    content(tmp_path / "weights.pth")
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--model", "vit_tiny_patch16_224",
                       "--checkpoint", tmp_path / "weights.pth", "--output-dir", tmp_path / "out", "-q")
    assert code == 3 and message in one_error(err)
    assert "this ran" not in err


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    folder = tmp_path_factory.mktemp("hf-vit")
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=1,
                                    num_attention_heads=3, intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    return folder


def set_hf_config(folder, **changes):
    config = config_of(folder)
    config.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        config.pop(key)
    (folder / "config.json").write_text(json.dumps(config))


BROKEN_HF_FOLDERS = {
    "invalid JSON": (lambda d: (d / "config.json").write_text("{bad"), "config.json is not valid JSON"),
    "a billion classes": (lambda d: set_hf_config(d, num_labels=10**9, id2label=None, label2id=None),
                          "claims 1,000,000,000 classes"),
    "corrupt weights": (lambda d: (d / "model.safetensors").write_bytes(b"garbage" * 20), "cannot read the weights in"),
    "pickled objects": (lambda d: (d / "model.safetensors").unlink() or torch.save({"evil": Evil()},
                                                                                    d / "pytorch_model.bin"),
                        "holds pickled Python objects"),
    "weights of another size": (lambda d: set_hf_config(d, hidden_size=60), "do not fit the architecture"),
    "unknown model type": (lambda d: set_hf_config(d, model_type="no-such-type"), "cannot load"),
    "no classifier weights": (lambda d: save_file({k: v for k, v in load_file(d / "model.safetensors").items()
                                                   if not k.startswith("classifier.")}, d / "model.safetensors"),
                              "lack 2 of the model's tensors (classifier.bias, classifier.weight)"),
}


@pytest.mark.parametrize("case", list(BROKEN_HF_FOLDERS))
def test_a_broken_transformers_folder_is_a_model_error(case, hf_model_dir, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(hf_model_dir, folder)
    breaks, message = BROKEN_HF_FOLDERS[case]
    breaks(folder)
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--output-dir", tmp_path / "out",
                       "--model", f"hf:{folder}", "-q")
    assert code == 3 and message in one_error(err), err
    assert "this ran" not in err


EVALUATE = ["evaluate", "--steps", "2"]


@pytest.mark.parametrize("command,option,value", [
    ([], "--discard_ratio", "nan"), ([], "--discard_ratio", "inf"), ([], "--discard_ratio", "-nan"),
    ([], "--alpha", "nan"), (EVALUATE, "--discard_ratio", "nan"), (EVALUATE, "--discard_ratio", "-inf"),
])
def test_a_non_finite_number_is_a_usage_error(command, option, value, tiny_model_dir, tmp_path, capsys):
    code, _, err = run(capsys, *command, "--image_path", files.write_rgb(tmp_path / "a.png"),
                       "--output-dir", tmp_path / "out", option, value, *tiny(tiny_model_dir))
    assert code == 2 and option in one_error(err) and ("not a finite number" in err or "not in the range" in err)


@pytest.mark.parametrize("command,option", [
    ([], "--image_path"), ([], "--output-dir"), ([], "--checkpoint"),
    (["evaluate"], "--image_path"), (["evaluate"], "--masks"),
])
def test_an_empty_path_is_a_usage_error_not_the_current_folder(command, option, tiny_model_dir, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    files.write_rgb(tmp_path / "here.png")
    args = {"--image_path": "here.png", "--output-dir": "out", option: ""}
    code, _, err = run(capsys, *command, *[a for pair in args.items() for a in pair], *tiny(tiny_model_dir))
    assert code == 2 and "is empty" in one_error(err) and option in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "here_attention_rollout_0.900_max.png").exists()


NASTY_NAMES = ["new\nline.png", "tab\tand\rreturn.png", "escape\x1b[31mred.png", "line\u2028separator.png"]


@pytest.mark.parametrize("name", NASTY_NAMES)
def test_every_error_is_one_line_whatever_the_file_name(name, tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    files.write_text_as_jpg(folder / name)       # named like an image, is not one
    files.write_rgb(folder / "fine.png")
    code, _, err = run(capsys, "--image_path", folder, "--output-dir", tmp_path / "out", *tiny(tiny_model_dir))
    assert code == 1 and one_error(err) == (f"vit-explain: {shown(folder / name)} is named like an image "
                                            "but is not one PIL can read")
    # a single file, and a path that does not exist
    for path, code_wanted in ((folder / name, 4), (tmp_path / name / "missing.png", 4)):
        code, _, err = run(capsys, "--image_path", path, "--output-dir", tmp_path / "out", *tiny(tiny_model_dir))
        line = one_error(err)
        assert code == code_wanted and repr(str(path))[1:-1] in line
        assert all(c.isprintable() for c in line)


def test_shown_and_one_line():
    assert shown("plain name.png") == "plain name.png"
    assert shown("a\nb.png") == "'a\\nb.png'"
    assert shown(b"bytes\xff.png".decode("utf-8", "surrogateescape")) == "'bytes\\udcff.png'"
    assert one_line("first\nsecond\x1b") == "first\\nsecond\\x1b"


def test_internal_errors_too_are_one_line(tmp_path, capsys, monkeypatch):
    def crash(self, options):
        raise RuntimeError("first line\nsecond line")
    monkeypatch.setattr("vit_explain.cli.runner.Run.__init__", crash)
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--output-dir", tmp_path / "out")
    assert code == 70 and one_error(err) == ("vit-explain: internal error: RuntimeError: first line "
                                             "(rerun with --debug)")


@pytest.mark.parametrize("error,code,message", [
    (OSError(errno.ENOSPC, "No space left on device", "out/x\ny.png"), 5,
     "cannot write 'out/x\\ny.png': No space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), 5, "cannot write: Disk quota exceeded"),
    (OSError(errno.EROFS, "Read-only file system", "out/a.png"), 5, "cannot write out/a.png: Read-only file system"),
    (OSError(errno.ENOENT, "No such file or directory"), 70, "internal error: FileNotFoundError"),
])
def test_errors_no_command_caught_keep_their_code(error, code, message, tmp_path, capsys, monkeypatch):
    """The package's own errors and the OS errors only a write gives keep their documented code
    wherever they come from (here: anywhere in a run)."""
    def fail(self, options):
        raise error
    monkeypatch.setattr("vit_explain.cli.runner.Run.__init__", fail)
    got, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--output-dir", tmp_path / "out")
    assert got == code and message in one_error(err)


@pytest.mark.parametrize("module,name,code", [
    ("vit_explain.io.outputs", "OutputError", 5), ("vit_explain.io.images", "ImageError", 4),
    ("vit_explain.io.hub", "ModelLoadError", 3), ("vit_explain.recording", "LayerError", 2),
])
def test_the_packages_errors_keep_their_code_wherever_raised(module, name, code, tmp_path, capsys, monkeypatch):
    import importlib
    kind = getattr(importlib.import_module(module), name)

    def fail(self, options):
        raise kind("what went wrong")
    monkeypatch.setattr("vit_explain.cli.runner.Run.__init__", fail)
    got, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--output-dir", tmp_path / "out")
    assert got == code and one_error(err) == "vit-explain: what went wrong"


def test_a_manifest_that_is_a_folder_is_an_output_error(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "out" / "manifest.json").mkdir(parents=True)
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--output-dir", tmp_path / "out",
                       *tiny(tiny_model_dir))
    assert code == 5 and "manifest.json is a folder" in one_error(err)


def strict_json(text: str):
    """json.loads without NaN / Infinity, which are not JSON (other readers refuse them)."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def nan_model_dir(tiny_model_dir, tmp_path):
    """A copy of the tiny saved model whose head weights are NaN: every score it gives is NaN."""
    folder = tmp_path / "nan-model"
    shutil.copytree(tiny_model_dir, folder)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    config = config_of(tiny_model_dir)
    timm.models.save_for_hf(model, folder, model_config={"label_names": config["label_names"]},
                            model_args=config["model_args"])
    return folder


# --- evaluate ---------------------------------------------------------------------------------

def evaluate_folder(tmp_path, masks: dict):
    """Three 40x40 images s0..s2 and the given masks (name -> writer of the mask file)."""
    images, mask_dir = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    mask_dir.mkdir()
    for seed in range(3):
        files.write_rgb(images / f"s{seed}.png", size=(40, 40), seed=seed)
    for name, write in masks.items():
        write(mask_dir / name)
    return images, mask_dir


def good_mask(path, size=(40, 40)):
    Image.fromarray(np.pad(np.full((size[1] // 2, size[0] // 2), 255, np.uint8),
                           ((0, size[1] - size[1] // 2), (0, size[0] - size[0] // 2)))).save(path)


@pytest.mark.parametrize("bad_mask,message", [
    (lambda path: path.write_text("not an image"), "its mask {mask} cannot be read"),
    (lambda path: path.write_bytes(path.read_bytes()[:60]) if good_mask(path) is None else None,
     "its mask {mask} cannot be read"),
    (lambda path: good_mask(path, size=(20, 30)), "its mask {mask} is 20 x 30 pixels, the image 40 x 40"),
])
def test_a_bad_mask_fails_its_image_and_the_rest_are_scored(bad_mask, message, tiny_model_dir, tmp_path, capsys):
    images, masks = evaluate_folder(tmp_path, {"s0.png": good_mask, "s1.png": bad_mask, "s2.png": good_mask})
    out = tmp_path / "out"
    code, _, err = run(capsys, "evaluate", "--image_path", images, "--masks", masks, "--output-dir", out,
                       "--methods", "rollout", "--steps", 2, *tiny(tiny_model_dir))
    line = one_error(err)
    assert code == 1 and line.startswith(f"vit-explain: {images / 's1.png'}: ")
    assert message.format(mask=masks / "s1.png") in line
    rows = strict_json((out / "evaluation.json").read_text())["images"]
    assert {row["image"] for row in rows} == {str(images / "s0.png"), str(images / "s2.png")}
    assert all("pointing_hit" in row for row in rows)


def test_evaluate_fails_images_whose_scores_are_not_finite(tiny_model_dir, tmp_path, capsys):
    """A model with NaN weights: each image fails with one line, and evaluation.json holds numbers
    only (NaN is not JSON)."""
    out = tmp_path / "out"
    code, _, err = run(capsys, "evaluate", "--image_path", files.write_rgb(tmp_path / "a.png"), "--output-dir", out,
                       "--steps", 2, "--methods", "rollout", *tiny(nan_model_dir(tiny_model_dir, tmp_path)))
    assert code == 1 and "the model's scores are not finite" in one_error(err)
    assert strict_json((out / "evaluation.json").read_text())["images"] == []


def test_evaluate_steps_are_bounded(tiny_model_dir, tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", "--image_path", files.write_rgb(tmp_path / "a.png"), "--steps", 100000,
                       "--output-dir", tmp_path / "out", *tiny(tiny_model_dir))
    assert code == 2 and "'--steps': 100000 is not in the range 1<=x<=1000" in one_error(err)


def test_evaluate_results_that_cannot_be_written_are_an_output_error(tiny_model_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "out" / "evaluation.json").mkdir(parents=True)
    args = ["evaluate", "--image_path", files.write_rgb(tmp_path / "a.png"), "--methods", "rollout", "--steps", 2,
            *tiny(tiny_model_dir)]
    code, _, err = run(capsys, *args, "--output-dir", tmp_path / "out")
    assert code == 5 and "evaluation.json is a folder" in one_error(err)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr("vit_explain.io.outputs.atomic_write", full)
    code, _, err = run(capsys, *args, "--output-dir", tmp_path / "out2")
    assert code == 5 and "evaluation.json: No space left on device" in one_error(err)


# --- a full disk, for real: a small tmpfs where this test may mount one --------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (needs root and a kernel that lets us mount); skipped where we cannot."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a tmpfs here (not root, or no mount permission)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30)


def fill(folder, leave: int = 0):
    """Fill the file system of folder, leaving about `leave` bytes."""
    usage = shutil.disk_usage(folder)
    (folder / "filler").write_bytes(b"\0" * max(0, usage.free - leave))


def test_evaluate_on_a_full_disk_is_an_output_error(small_disk, tiny_model_dir, tmp_path, capsys):
    out = small_disk / "out"
    out.mkdir()
    fill(small_disk, leave=1024)
    code, _, err = run(capsys, "evaluate", "--image_path", files.write_rgb(tmp_path / "a.png"), "--output-dir", out,
                       "--methods", "rollout", "--steps", 2, *tiny(tiny_model_dir))
    assert code == 5 and "No space left on device" in one_error(err)


def test_explain_on_a_full_disk_stops_with_an_output_error(small_disk, tiny_model_dir, tmp_path, capsys):
    """Room for the manifest, none for the overlays: the first image that cannot be written ends
    the run (no point trying the rest) with exit 5 and the reason."""
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(4):
        files.write_rgb(images / f"{seed}.png", size=(200, 200), seed=seed)
    out = small_disk / "out"
    out.mkdir()
    fill(small_disk, leave=16 * 1024)
    code, _, err = run(capsys, "--image_path", images, "--output-dir", out, *tiny(tiny_model_dir))
    lines = error_lines(err)
    assert code == 5 and "No space left on device" in lines[-1]
    assert sum("cannot write" in line for line in lines) <= 2, lines


def test_the_entry_point_prints_one_line_for_a_bad_name():
    """The command's own entry point (not only main() in-process) gives one line for a bad name."""
    result = subprocess.run([sys.executable, "-m", "vit_explain.cli.main", "--image_path", "no\nsuch.png",
                             "--output-dir", "unused"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 4 and result.stderr == "vit-explain: no such file or folder: 'no\\nsuch.png'\n"
