"""Chefer's start_layer: the blocks before it are left out of R = I; R += mean_h(clamp(A * dL/dA)) R."""
import json

import pytest
import torch

from tests import image_files as files
from tests.helpers import run, tiny
from vit_explain import VITGradWeightedAttention
from vit_explain.recording import AttentionRecorder

X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(12))


@pytest.mark.parametrize("start_layer", [0, 1, 11])
def test_equals_its_literal_definition(deit_tiny_qkv4, start_layer):
    with AttentionRecorder(deit_tiny_qkv4, gradients=True) as rec:
        logits = rec.forward(X)
        grads = rec.attention_gradients(logits, [243, 5])
    masks = VITGradWeightedAttention(deit_tiny_qkv4, start_layer=start_layer).explain(X, [243, 5]).masks
    for i in range(len(X)):
        relevance = torch.eye(197, dtype=torch.float64)
        for a, g in list(zip(rec.attentions, grads))[start_layer:]:
            relevance = relevance + (a[i].detach() * g[i]).clamp(min=0).mean(0).double() @ relevance
        expected = relevance[0, 1:].view(14, 14)
        torch.testing.assert_close(masks[i], (expected / expected.max()).float(), atol=1e-5, rtol=0)


def test_start_layer_changes_the_map(deit_tiny_qkv4):
    default = VITGradWeightedAttention(deit_tiny_qkv4).explain(X, 243).masks
    torch.testing.assert_close(VITGradWeightedAttention(deit_tiny_qkv4, start_layer=0).explain(X, 243).masks, default)
    assert (VITGradWeightedAttention(deit_tiny_qkv4, start_layer=1).explain(X, 243).masks - default).abs().max() > 1e-4


@pytest.mark.parametrize("bad", [-1, 12, 1.0, True, None, "1"])
def test_bad_start_layers_are_refused(deit_tiny_qkv4, bad):
    with pytest.raises(ValueError, match="start_layer must be a block index from 0 to 11"):
        VITGradWeightedAttention(deit_tiny_qkv4, start_layer=bad)


def test_the_command_takes_start_layer(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--method", "chefer",
                       "--category_index", 1, "--start-layer", 1, "--outputs", "mask", "--output-dir", out,
                       *tiny(tiny_model_dir))
    assert code == 0, err
    (entry,) = json.loads((out / "manifest.json").read_text())["images"]
    assert entry["parameters"]["start_layer"] == 1
    assert (out / "a_chefer_1_start1.npy").exists()
