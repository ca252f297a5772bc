"""No silent zero maps: a gradient method whose gradients are all zero for a sample (the score
does not depend on the attention, or the attention was patched so that no gradient reaches the
recorded weights) raises a ValueError saying why, and hands the model back as it came."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import assert_state_equal, model_state
from vit_explain.cli.options import Options
from vit_explain.methods.adapters import TimmAdapter
from vit_explain.methods.base import AttentionExplainer, check_gradients_flow
from vit_explain.methods.table import METHODS

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
GRADIENT_METHODS = [name for name, spec in METHODS.items()
                    if issubclass(spec.load(), AttentionExplainer) and spec.load().needs_gradients]
# every method that explains a class reads the score's gradient (or relevance) somewhere
CLASS_METHODS = [name for name, spec in METHODS.items() if spec.class_specific]


def fused_output(attn, tokens, attn_mask=None, is_causal=False):
    """A patched timm attention: it still shows its softmax to attn_drop (where the recorder looks),
    but its output comes from a fused kernel, so the recorded weights are not on the output's path."""
    batch, count, width = tokens.shape
    q, k, v = attn.qkv(tokens).reshape(batch, count, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    attn.attn_drop(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
    mixed = F.scaled_dot_product_attention(q, k, v)
    return attn.proj(attn.norm(mixed.transpose(1, 2).reshape(batch, count, width)))


def test_the_gradient_methods_are_found():
    assert {"grad-rollout", "chefer", "gradsam", "agcam", "tokentm", "daam"} <= set(GRADIENT_METHODS)


def test_the_class_methods_are_found():
    assert {"grad-rollout", "chefer", "grad-cam", "gradsam", "legrad", "agcam", "tokentm", "daam", "cola",
            "cp-lrp"} <= set(CLASS_METHODS)


@pytest.mark.parametrize("name", CLASS_METHODS)
def test_a_score_that_ignores_the_tokens_is_refused(name):
    model = TimmAdapter.example()
    with torch.no_grad():
        model.head.weight.zero_()  # the logits are the head's bias, whatever the image
    explainer = METHODS[name].build(model, Options())
    before = model_state(model)
    with pytest.raises(ValueError, match=r"no (gradient|relevance) of the explained score reaches "
                                         r"(the attention|the input|layer \S+) of VisionTransformer.*samples \[?0, 1"):
        explainer.explain(X, [1, 2])
    assert_state_equal(before, model_state(model))


def test_grad_cam_names_its_layer():
    model = TimmAdapter.example()
    with torch.no_grad():
        model.head.weight.zero_()
    with pytest.raises(ValueError, match=r"reaches layer blocks\.1\.norm1 of VisionTransformer .*that layer's"):
        METHODS["grad-cam"].build(model, Options()).explain(X, 1)


@pytest.mark.parametrize("name", [name for name in GRADIENT_METHODS if name != "daam"])
def test_attention_patched_off_the_outputs_path_is_refused(name, monkeypatch):
    # (DAAM weighs the heads' outputs by their own gradient, which the patch leaves in place)
    model = TimmAdapter.example()
    for block in model.blocks:
        monkeypatch.setattr(block.attn, "forward", lambda tokens, attn=block.attn, **kw: fused_output(attn, tokens))
    explainer = METHODS[name].build(model, Options())
    with pytest.raises(ValueError, match="patched by another library"):
        explainer.explain(X, 1)


def test_the_message_names_only_the_samples_without_a_gradient():
    gradients = [torch.zeros(3, 2, 4, 4), torch.zeros(3, 2, 4, 4)]
    gradients[1][1, 0, 2, 3] = 1e-30
    with pytest.raises(ValueError, match=r"\(samples 0, 2 of the batch\)"):
        check_gradients_flow(nn.Identity(), gradients)
    gradients[0][0, 1] = float("nan")  # not zero: a NaN is another problem
    with pytest.raises(ValueError, match=r"\(sample 2 of the batch\)"):
        check_gradients_flow(nn.Identity(), gradients)
    gradients[0][2, 0, 0, 0] = -1.0
    check_gradients_flow(nn.Identity(), gradients)
