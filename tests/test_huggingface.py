"""Hugging Face transformers ViT (the optional `hf` extra) on a tiny randomly initialised model."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

from tests import image_files as files  # noqa: E402
from tests.helpers import (assert_state_equal, error_lines, literal_rollout, model_state,  # noqa: E402
                           plain_gradcam, run)
from vit_explain import (VITAttentionGradRollout, VITAttentionRollout, VITGradCAM,  # noqa: E402
                         VITGradWeightedAttention, VITRawAttention)
from vit_explain.methods.adapters import HuggingFaceViTAdapter, adapter_for  # noqa: E402
from vit_explain.recording import HuggingFaceAttentionRecorder  # noqa: E402

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(17))
GRID = (4, 4)


def tiny_config(**kwargs):
    return transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
                                  num_attention_heads=3, intermediate_size=96, num_labels=3, **kwargs)


@pytest.fixture(scope="module")
def hf_vit():
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(tiny_config()).eval()
    with torch.no_grad():  # sharper attention and logits of a trained model's magnitude
        for name, param in model.named_parameters():
            if name.endswith(("query.weight", "key.weight", "q_proj.weight", "k_proj.weight")):
                param.mul_(4)
        model.classifier.weight.mul_(30)
    return model


def hf_state(model):
    """model_state plus what transformers may change: configs, attention implementation, hook flags."""
    return {**model_state(model),
            "config": model.config.to_dict(),
            "attn": [getattr(m.config, "_attn_implementation", None) for m in model.modules() if hasattr(m, "config")],
            "flags": [sorted(k for k in vars(m) if k.startswith("_output_capturing")) for m in model.modules()]}


def eager_outputs(model, x):
    """The model's own attentions, on a copy switched to eager attention (leaves `model` alone)."""
    ref = copy.deepcopy(model)
    ref.config._attn_implementation = "eager"
    return ref(pixel_values=x, output_attentions=True)


def test_transformers_is_imported_only_by_the_model():
    code = ("import sys, timm; from vit_explain import VITAttentionRollout; "
            "VITAttentionRollout(timm.create_model('vit_tiny_patch16_224', depth=1)); "
            "assert 'transformers' not in sys.modules, 'transformers was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_adapter_choice(hf_vit):
    adapter = adapter_for(hf_vit)
    assert isinstance(adapter, HuggingFaceViTAdapter)
    assert adapter.layout((32, 32), 17).grid == GRID and adapter.layout((32, 32), 17).num_prefix == 1
    assert VITRawAttention(hf_vit).attention_block_count() == 2
    with pytest.raises(ValueError, match="attention_layer_name does not apply to Hugging Face models"):
        VITAttentionRollout(hf_vit, attention_layer_name="attention")
    with pytest.raises(ValueError, match="the Hugging Face model ViTModel is not supported"):
        VITAttentionRollout(transformers.ViTModel(tiny_config()))


EXPLAINERS = {
    "rollout": lambda m: VITAttentionRollout(m, head_fusion="max", discard_ratio=0.5),
    "grad-rollout": lambda m: VITAttentionGradRollout(m, discard_ratio=0.5),
    "chefer": lambda m: VITGradWeightedAttention(m),
    "raw": lambda m: VITRawAttention(m),
}


@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_explainers_batch_equals_singles_and_model_untouched(hf_vit, name):
    explainer = EXPLAINERS[name](hf_vit)
    categories = [0, 1, 2]
    before = hf_state(hf_vit)
    assert before["attn"][0] != "eager"  # the model's default (sdpa): the recorder switches and restores it
    explanation = explainer.explain(X, categories)
    batch = explanation.masks.numpy()
    assert batch.shape == (3, *GRID) and np.isfinite(batch).all()
    np.testing.assert_allclose(batch.max(axis=(1, 2)), 1.0, atol=1e-6)
    with torch.inference_mode():
        singles = np.stack([explainer(X[i:i + 1], categories[i]) for i in range(3)])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    assert_state_equal(before, hf_state(hf_vit))
    with torch.no_grad():
        torch.testing.assert_close(explanation.logits, hf_vit(pixel_values=X).logits, atol=1e-5, rtol=0)


def test_rollout_equals_the_math_on_the_models_own_attentions(hf_vit):
    attentions = eager_outputs(hf_vit, X[:2]).attentions
    masks = VITAttentionRollout(hf_vit, head_fusion="max", discard_ratio=0.5)(X[:2])
    for sample in range(2):
        row = literal_rollout(torch.stack([a[sample].detach() for a in attentions]), "max", 0.5)[0, 1:].view(GRID)
        np.testing.assert_allclose(masks[sample], (row / row.max()).numpy(), atol=1e-5)


def test_chefer_equals_its_definition_on_the_models_own_gradients(hf_vit):
    outputs = eager_outputs(hf_vit, X[:1])
    grads = torch.autograd.grad(outputs.logits[0, 2], outputs.attentions)
    relevance = torch.eye(17, dtype=torch.float64)
    for a, g in zip(outputs.attentions, grads):
        relevance = relevance + (a[0] * g[0]).clamp(min=0).mean(0).double() @ relevance
    expected = relevance[0, 1:].view(GRID)
    mask = VITGradWeightedAttention(hf_vit)(X[:1], 2)
    np.testing.assert_allclose(mask, (expected / expected.max()).detach().numpy(), atol=1e-5)
    assert np.abs(mask - VITGradWeightedAttention(hf_vit)(X[:1], 0)).max() > 1e-3  # class-specific


def test_gradients_are_keyed_by_layer(hf_vit):
    with HuggingFaceAttentionRecorder(hf_vit, gradients=True) as rec:
        logits = rec.forward(X[:2])
        expected = [torch.autograd.grad(logits[0, 1] + logits[1, 2], rec.attentions[k], retain_graph=True)[0]
                    for k in (0, 1)]
        grads = rec.attention_gradients(logits, [1, 2])
    assert [tuple(a.shape) for a in rec.attentions] == [(2, 3, 17, 17)] * 2
    for k in (0, 1):
        torch.testing.assert_close(grads[k], expected[k])
    assert grads[0].abs().sum() != grads[1].abs().sum()


def test_input_of_another_size(hf_vit):
    before = hf_state(hf_vit)
    with pytest.raises(ValueError, match=r"expected an input tensor of shape \(B, 3, 32, 32\), got \(1, 3, 40, 48\)"):
        VITAttentionRollout(hf_vit)(torch.randn(1, 3, 40, 48))
    assert_state_equal(before, hf_state(hf_vit))
    explainer = VITAttentionGradRollout(hf_vit)
    explainer.adapter = HuggingFaceViTAdapter(hf_vit, interpolate_pos_encoding=True)
    x = torch.randn(2, 3, 40, 48)
    explanation = explainer.explain(x, 1)
    assert explanation.masks.shape == (2, 5, 6)
    with torch.no_grad():
        expected = hf_vit(pixel_values=x, interpolate_pos_encoding=True).logits
    torch.testing.assert_close(explanation.logits, expected, atol=1e-5, rtol=0)
    assert_state_equal(before, hf_state(hf_vit))


def test_state_is_restored_when_the_forward_raises(hf_vit):
    model = copy.deepcopy(hf_vit).train()
    model.classifier.requires_grad_(False)

    def explode(*args):
        raise RuntimeError("boom in forward")
    layer = [m for m in model.modules() if type(m).__name__ == "ViTLayer"][-1]
    handle = layer.register_forward_hook(explode)
    before = hf_state(model)
    with pytest.raises(RuntimeError, match="boom in forward"):
        VITAttentionGradRollout(model)(X[:1])
    assert_state_equal(before, hf_state(model))
    handle.remove()


def test_grad_cam_equals_a_plain_computation_and_leaves_the_model_alone(hf_vit):
    before = hf_state(hf_vit)
    explainer = VITGradCAM(hf_vit)
    assert explainer.target_layer.endswith("1.layernorm_before")  # the last layer's; the path varies by version
    masks = explainer(X, [0, 1, 2])
    expected = plain_gradcam(hf_vit, explainer.target_layer, X, [0, 1, 2], 1, GRID)
    np.testing.assert_allclose(masks, expected, atol=1e-5)
    np.testing.assert_allclose(masks[1], explainer(X[1:2], 1), atol=1e-6)  # a batch equals its singles
    assert_state_equal(before, hf_state(hf_vit))
    with pytest.raises(ValueError, match="expected"):
        explainer(torch.randn(1, 3, 40, 40))


def saved_hf_vit(folder, processor=True):
    """A tiny ViT with named classes, saved the way users save theirs (with its image processor)."""
    torch.manual_seed(0)
    config = tiny_config(id2label={0: "cat", 1: "dog", 2: "fox"}, label2id={"cat": 0, "dog": 1, "fox": 2})
    model = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("query.weight", "key.weight")):
                param.mul_(4)
    model.save_pretrained(folder)
    if processor:
        transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def test_command_line_takes_a_saved_transformers_model(tmp_path, capsys):
    model = saved_hf_vit(tmp_path / "hf")
    capsys.readouterr()  # transformers' progress bar while saving
    image = files.write_rgb(tmp_path / "in.png", size=(90, 60))
    out = tmp_path / "out"
    code, _, err = run(capsys, "--image_path", image, "--output-dir", out, "--model", f"hf:{tmp_path / 'hf'}",
                       "--discard_ratio", 0, "--quiet")
    assert code == 0 and error_lines(err) == ["1 explained, 0 failed"]
    (entry,) = json.loads((out / "manifest.json").read_text())["images"]
    x = transformers.ViTImageProcessor.from_pretrained(tmp_path / "hf")(Image.open(image), return_tensors="pt")
    with torch.no_grad():
        probabilities = model(**x).logits.softmax(-1)[0]
    assert {c["label"]: c["probability"] for c in entry["topk"]} == pytest.approx(
        {name: float(probabilities[i]) for i, name in enumerate(["cat", "dog", "fox"])}, abs=1e-3)
    expected = VITAttentionRollout(model, head_fusion="max", discard_ratio=0.0)(x["pixel_values"])
    np.testing.assert_allclose(np.load(out / "in_attention_rollout_0.000_max.npy"), expected, atol=2e-3)


def test_command_line_transformers_model_errors(tmp_path, capsys, monkeypatch):
    saved_hf_vit(tmp_path / "bare", processor=False)  # no image processor saved: ViT's defaults
    capsys.readouterr()
    image = files.write_rgb(tmp_path / "in.png")
    code, _, err = run(capsys, "--image_path", image, "--output-dir", tmp_path / "out",
                       "--model", f"hf:{tmp_path / 'bare'}", "--quiet")
    assert code == 0
    code, _, err = run(capsys, "--image_path", image, "--output-dir", tmp_path / "out",
                       "--model", f"hf:{tmp_path / 'bare'}", "--checkpoint", image, "--quiet")
    assert code == 3 and error_lines(err) == [f"vit-explain: --hub and --checkpoint apply to timm models, "
                                              f"not to hf:{tmp_path / 'bare'}"]
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("vit_explain.io.transformers_models.reachable", lambda *args, **kwargs: False)
    code, _, err = run(capsys, "--image_path", image, "--output-dir", tmp_path / "out",
                       "--model", "hf:google/vit-base-patch16-224", "--quiet")
    (line,) = error_lines(err)
    assert code == 3 and "no network" in line and "--model hf:FOLDER" in line
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the hf extra were not installed
    code, _, err = run(capsys, "--image_path", image, "--output-dir", tmp_path / "out",
                       "--model", f"hf:{tmp_path / 'bare'}", "--quiet")
    assert code == 3 and error_lines(err) == [f"vit-explain: --model hf:{tmp_path / 'bare'} needs the "
                                              "transformers package: pip install 'vit-explain[hf]'"]
