"""The vit-explain command as a user meets it: files written, lines printed, exit codes."""
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch

from tests import image_files as files
from tests.helpers import LABELS, error_lines, run, tiny
from vit_explain.io.images import image_size

def test_folder_of_every_kind_of_image(tiny_model_dir, tmp_path, capsys):
    good = files.write_all_good(tmp_path / "in" / "good")
    bad = files.write_all_bad(tmp_path / "in" / "bad")
    out = tmp_path / "out"
    code, _, err = run(capsys, "--image_path", tmp_path / "in", "--output-dir", out, "--batch-size", 4,
                       "--workers", 2, *tiny(tiny_model_dir))
    assert code == 1
    lines = error_lines(err)
    assert lines[-1] == f"{len(good)} explained, {len(bad)} failed"
    assert "Traceback" not in err and len(lines) == len(bad) + 1
    for path in bad.values():
        assert sum(str(path) in line for line in lines) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {entry["input"]: entry for entry in manifest["images"]}
    assert {p: e["status"] for p, e in entries.items()} == {
        **{str(p): "explained" for p in good.values()}, **{str(p): "failed" for p in bad.values()}}
    for path in good.values():
        overlay_file, mask_file = (out / "good" / Path(entries[str(path)]["outputs"][k]).name
                                   for k in ("overlay", "mask"))
        overlay = cv2.imread(str(overlay_file))
        assert overlay is not None and overlay.shape[1::-1] == image_size(path)
        mask = np.load(mask_file)
        # flat images (one pixel, bilevel) may leave nothing above the discard: an all-zero map
        assert mask.shape == (4, 4) and np.isfinite(mask).all() and mask.max() in (0.0, pytest.approx(1.0))
    assert np.load(out / "good" / "rgb_attention_rollout_0.900_max.npy").max() == pytest.approx(1.0)
    # gray16.png and gray16.pgm share a stem: their names keep the extension apart
    assert (out / "good" / "gray16_png_attention_rollout_0.900_max.png").exists()
    assert (out / "good" / "gray16_pgm_attention_rollout_0.900_max.png").exists()
    assert {"vit_explain", "torch", "timm"} <= manifest.keys()
    assert not list(out.rglob("*.part")) and not list((tmp_path / "in").rglob("*_attention_rollout_*"))


def test_names_manifest_and_class_specific_outputs(tiny_model_dir, tmp_path, capsys):
    image = files.write_rgb(tmp_path / "dog.png", size=(90, 60))
    out = tmp_path / "out"
    code, _, err = run(capsys, "--image_path", image, "--output-dir", out, "--category_index", 2,
                       "--head_fusion", "mean", "--discard_ratio", 0.5, *tiny(tiny_model_dir))
    assert code == 0 and error_lines(err) == ["1 explained, 0 failed"]
    assert sorted(p.name for p in out.iterdir()) == [
        "dog_grad_rollout_2_0.500_mean.npy", "dog_grad_rollout_2_0.500_mean.png", "manifest.json"]
    (entry,) = json.loads((out / "manifest.json").read_text())["images"]
    assert entry["method"] == "grad-rollout" and entry["explained_class"] == {"index": 2, "label": "fox"}
    assert entry["parameters"]["discard_ratio"] == 0.5 and entry["parameters"]["head_fusion"] == "mean"
    probabilities = [c["probability"] for c in entry["topk"]]
    assert [c["label"] for c in entry["topk"]] and set(c["label"] for c in entry["topk"]) == set(LABELS)
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1, abs=1e-4)


def test_rerun_skips_finished_images_unless_overwrite(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(3):
        files.write_rgb(folder / f"img{seed}.png", seed=seed)
    out = tmp_path / "out"
    args = ["--image_path", folder, "--output-dir", out, *tiny(tiny_model_dir)]
    assert run(capsys, *args)[0] == 0
    written = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    code, _, err = run(capsys, *args)
    assert code == 0 and "0 explained, 0 failed (3 skipped" in err
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png")} == written
    assert len(json.loads((out / "manifest.json").read_text())["images"]) == 3
    code, _, err = run(capsys, *args, "--overwrite")
    assert code == 0 and "3 explained, 0 failed" in err


def test_huge_and_tiny_images_work(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    files.write_huge_jpeg(folder / "huge.jpg")
    files.write_one_pixel(folder / "dot.png")
    out = tmp_path / "out"
    code, _, err = run(capsys, "--image_path", folder, "--output-dir", out, *tiny(tiny_model_dir))
    assert code == 0, err
    huge = cv2.imread(str(out / "huge_attention_rollout_0.900_max.png"))
    assert huge.shape[0] * huge.shape[1] <= 25_000_000 and huge.shape[0] == huge.shape[1]
    assert cv2.imread(str(out / "dot_attention_rollout_0.900_max.png")).shape == (1, 1, 3)


@pytest.mark.parametrize("make_args,code,message", [
    (lambda t: ["--image_path", t / "missing.jpg"], 4, "no such file or folder"),
    (lambda t: ["--image_path", (t / "empty").mkdir() or t / "empty"], 4, "is empty"),
    (lambda t: ["--image_path", files.write_text_as_jpg(t) and t], 4, "no images found in folder"),
    (lambda t: ["--image_path", files.write_text_as_jpg(t)], 4, "is not an image PIL can read"),
    (lambda t: ["--image_path", files.write_zero_byte(t)], 4, "is empty (0 bytes)"),
    (lambda t: ["--image_path", files.write_rgb(t), "--discard_ratio", 1], 2, "--discard_ratio"),
    (lambda t: ["--image_path", files.write_rgb(t), "--alpha", 2], 2, "--alpha"),
    (lambda t: ["--image_path", files.write_rgb(t), "--head_fusion", "median"], 2, "'median' is not one of"),
    (lambda t: ["--image_path", files.write_rgb(t), "--colormap", "rainbowish"], 2, "unknown colormap 'rainbowish'"),
    (lambda t: ["--image_path", files.write_rgb(t), "--batch-size", 0], 2, "--batch-size"),
    (lambda t: ["--image_path", files.write_rgb(t), "--category_index", 3], 2, "has 3 classes (0..2)"),
    (lambda t: ["--image_path", files.write_rgb(t), "--output-dir", files.write_rgb(t / "f.png") / "out"],
     5, "cannot write to the output folder"),
    (lambda t: ["--image_path", t, "--output-dir", t / "out", files.write_rgb(t) and "-q"], 5, "inside the input folder"),
    (lambda t: ["--image_path", files.write_rgb(t), "--no-such-flag"], 2, "No such option '--no-such-flag'"),
])
def test_bad_input_is_one_line_and_a_documented_code(tiny_model_dir, tmp_path, capsys, make_args, code, message):
    got, _, err = run(capsys, "--output-dir", tmp_path / "default-out", *make_args(tmp_path), *tiny(tiny_model_dir))
    assert got == code
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("vit-explain: ") and message in lines[0]


def test_unknown_model_suggests_close_names(tmp_path, capsys):
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path), "--model", "deit_tiny_patch16_244",
                       "--output-dir", tmp_path / "out")
    assert code == 3 and error_lines(err) == [
        "vit-explain: unknown model 'deit_tiny_patch16_244'. Did you mean deit_tiny_patch16_224, "
        "vit_tiny_patch16_224, vit_tiny_patch16_384?"]


def test_pretrained_weights_offline_fail_fast_with_advice(tmp_path, capsys, monkeypatch):
    """No network: the hub client runs in offline mode (an immediate answer from the cache, not its
    ~46 s of retries) and the user gets one sentence with the ways out."""
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("vit_explain.io.timm_models.reachable", lambda *args, **kwargs: False)
    offline_before, offline_during_download = constants.HF_HUB_OFFLINE, []
    create_model = timm.create_model

    def spy(*args, **kwargs):
        offline_during_download.append(constants.HF_HUB_OFFLINE)
        return create_model(*args, **kwargs)
    monkeypatch.setattr(timm, "create_model", spy)
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path), "--output-dir", tmp_path / "out")
    assert offline_during_download == [True] and constants.HF_HUB_OFFLINE == offline_before
    (line,) = error_lines(err)
    assert code == 3 and "'deit_tiny_patch16_224'" in line and "--model local-dir:" in line and "--checkpoint" in line


def test_checkpoint_gives_weights_and_class_count(tmp_path, capsys):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5)
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    out = tmp_path / "out"
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--model", "vit_tiny_patch16_224",
                       "--checkpoint", tmp_path / "weights.pth", "--output-dir", out, "-q")
    assert code == 0, err
    (entry,) = json.loads((out / "manifest.json").read_text())["images"]
    with torch.no_grad():
        assert entry["topk"][0]["index"] == 0 or len(entry["topk"]) == 5
    assert len(entry["topk"]) == 5


HUBCONF = '''
from models import tiny_hub_vit
dependencies = ["timm"]
'''
HUB_MODELS = '''
import timm
from timm.models import register_model

@register_model
def deit_tiny_patch16_224(pretrained=False):  # shadows timm's name without **kwargs, as DeiT's repo does
    raise RuntimeError("the hub repo's function was called")

def tiny_hub_vit(pretrained=False):
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=3)
'''


def test_hub_repo_leaves_timm_registry_and_modules_intact(tmp_path, capsys, monkeypatch):
    repo = tmp_path / "hubrepo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(HUBCONF)
    (repo / "models.py").write_text(HUB_MODELS)
    user_models = type(sys)("models")
    monkeypatch.setitem(sys.modules, "models", user_models)
    out = tmp_path / "out"
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--hub", repo,
                       "--model", "tiny_hub_vit", "--output-dir", out, "-q")
    assert code == 0, err
    assert (out / "a_attention_rollout_0.900_max.png").exists()
    assert sys.modules["models"] is user_models
    assert timm.create_model("deit_tiny_patch16_224", pretrained=False).num_classes == 1000


def test_compat_overlay_equals_the_original(oracle):
    from vit_explain.io.overlay import compat_overlay
    mask = cv2.resize(oracle["attention_rollout_0.900_max"], (224, 224))
    np.testing.assert_allclose(mask, oracle["overlay_mask_224"], atol=1e-6)
    result = compat_overlay(oracle["overlay_img_bgr_uint8"], oracle["overlay_mask_224"])
    assert np.array_equal(result, oracle["overlay_bgr_uint8"])


def test_overlay_leaves_what_the_model_did_not_see(tmp_path):
    from vit_explain.io.overlay import overlay
    image = np.full((40, 60, 3), 100, np.uint8)
    result = overlay(image, np.ones((2, 2), np.float32), (10, 0, 50, 40), "jet", 0.5)
    assert (result[:, :10] == 100).all() and (result[:, 50:] == 100).all()
    assert (result[:, 10:50] != 100).any()


def test_help_shows_defaults_and_exit_codes(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for text in ["[default: 0.9", "[default: max]", "[default: deit_tiny_patch16_224]", "Exit codes:"]:
        assert text in out
    assert run(capsys, "--version")[1].startswith("vit-explain, version ")


@pytest.mark.parametrize("method,names", [
    ("chefer", ["a_chefer_1.npy", "a_chefer_1.png"]),
    ("raw-attention", ["a_raw_attention_last.npy", "a_raw_attention_last.png", "a_raw_attention_last_heads.png"]),
])
def test_more_methods_write_their_outputs(tiny_model_dir, tmp_path, capsys, method, names):
    out = tmp_path / "out"
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--method", method,
                       "--category_index", 1, "--output-dir", out, *tiny(tiny_model_dir))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["manifest.json"])
    if method == "raw-attention":  # three heads tiled 2 x 2
        heads = cv2.imread(str(out / "a_raw_attention_last_heads.png"))
        assert heads.shape[0] > 48 and heads.shape[1] > 64 * 2


def test_compat_applies_to_rollout_methods_only(tiny_model_dir, tmp_path, capsys):
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path), "--method", "chefer",
                       "--compat", "vit-explain", *tiny(tiny_model_dir))
    assert code == 2 and "--compat" in error_lines(err)[0]


def test_grad_cam_and_a_layer_the_model_lacks(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    image = files.write_rgb(tmp_path / "a.png")
    code, _, err = run(capsys, "--image_path", image, "--method", "grad-cam", "--target-layer", "blocks.0.norm1",
                       "--category_index", 2, "--output-dir", out, *tiny(tiny_model_dir))
    assert code == 0, err
    assert np.load(out / "a_grad_cam_2_blocks_0_norm1.npy").shape == (4, 4)
    code, _, err = run(capsys, "--image_path", image, "--method", "grad-cam", "--target-layer", "blocks.9.norm1",
                       "--output-dir", out, *tiny(tiny_model_dir))
    assert code == 2 and "no module named 'blocks.9.norm1'" in error_lines(err)[0]


def test_raw_attention_writes_its_head_grid_from_one_pass_per_batch(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from vit_explain.methods.base import AttentionExplainer
    record, calls = AttentionExplainer.record, []

    def counted(self, *args, **kwargs):
        calls.append(1)
        return record(self, *args, **kwargs)
    monkeypatch.setattr(AttentionExplainer, "record", counted)
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(3):
        files.write_rgb(folder / f"img{seed}.png", seed=seed)
    code, _, err = run(capsys, "--image_path", folder, "--method", "raw-attention", "--batch-size", 2,
                       "--output-dir", tmp_path / "out", *tiny(tiny_model_dir))
    assert code == 0, err
    assert len(calls) == 2  # two batches, one forward each: the mask and the heads come together
    assert len(list((tmp_path / "out").glob("*_heads.png"))) == 3


def test_checkpoint_with_a_saved_folder_is_refused_not_ignored(tiny_model_dir, tmp_path, capsys):
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--checkpoint",
                       tmp_path / "weights.pth", "--output-dir", tmp_path / "out", *tiny(tiny_model_dir))
    (line,) = error_lines(err)
    assert code == 3 and "--hub and --checkpoint apply to timm models, not to local-dir:" in line
    assert not (tmp_path / "out" / "manifest.json").exists()
