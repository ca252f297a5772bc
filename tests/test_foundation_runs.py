"""Command runs with prompt targets: re-runs skip what is done (keyed by the target too), and a
model without classes explained without a target reports no class. Tiny random-init models."""
import json

import pytest
import torch

from tests import image_files as files
from tests.helpers import run, tiny
from tests.test_foundation import X, clip_dir, hf_dinov2  # noqa: F401 (clip_dir: the fixture)
from vit_explain import VITAttentionRollout, VITRawAttention
from vit_explain.methods.adapters import HuggingFaceEmbeddingAdapter
from vit_explain.methods.targets import Prompt

pytest.importorskip("transformers")


def entries(out):
    return json.loads((out / "manifest.json").read_text())["images"]


@pytest.mark.parametrize("method", ["grad-rollout", "rollout"])
def test_a_rerun_with_the_same_prompts_skips_and_other_prompts_redo(method, clip_dir, tmp_path, capsys):  # noqa: F811
    image, out = files.write_rgb(tmp_path / "a.png"), tmp_path / "out"
    prompts = ["--prompt", "a photo of a dog", "--prompt", "a red car"]
    command = ["--image_path", image, "--method", method, "--output-dir", out, *tiny(clip_dir)]
    code, _, err = run(capsys, *command, *prompts)
    assert code == 0, err
    first = entries(out)
    code, _, err = run(capsys, *command, *prompts)
    assert code == 0 and "0 explained, 0 failed (1 skipped" in err, err
    assert entries(out) == first  # nothing redone, nothing added
    code, _, err = run(capsys, *command, "--prompt", "a tree")  # another target: not done yet
    assert code == 0 and "skipped" not in err, err
    params = [e["parameters"]["prompt"] for e in entries(out)]
    if method == "grad-rollout":  # one request per prompt: the prompt explained
        assert sorted(params) == ["a photo of a dog", "a red car", "a tree"]
    else:  # one map per image, whichever prompt scores best: keyed by all of them
        assert sorted(params) == [["a photo of a dog", "a red car"], ["a tree"]]


def test_rollout_of_a_model_without_classes_reports_no_class(clip_dir, tmp_path, capsys):  # noqa: F811
    image, out = files.write_rgb(tmp_path / "a.png"), tmp_path / "out"
    code, _, err = run(capsys, "--image_path", image, "--method", "rollout", "--output-dir", out, *tiny(clip_dir))
    assert code == 0, err
    (entry,) = entries(out)
    assert entry["predicted"] is None and entry["topk"] == [] and entry["explained_class"] is None
    assert entry["target"] == "class-agnostic"


def test_the_api_reports_no_class_for_an_embedding_and_the_column_for_a_target():
    model = HuggingFaceEmbeddingAdapter.example()
    for explainer in (VITAttentionRollout(model), VITRawAttention(model)):
        explanation = explainer.explain(X)
        assert explanation.targets is None and explanation.logits.shape == (len(X), 24)  # the embedding
        assert explanation.figure().ndim == 3  # drawn without a class
        prompted = explainer.explain(X, target=Prompt("a dog", "a red car"))
        assert prompted.targets.tolist() == prompted.logits.argmax(-1).tolist()
        assert prompted.logits.shape == (len(X), 2)
    assert VITAttentionRollout(hf_dinov2()).explain(X).targets is None
    assert torch.isfinite(VITAttentionRollout(hf_dinov2()).explain(X).masks).all()
