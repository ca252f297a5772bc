"""torchvision ViTs: the nn.MultiheadAttention recorder and the adapter.

The strongest check: a timm ViT carrying the same weights computes the same function, so every
method must give the same maps on both families."""
import math

import pytest
import torch
from torch import nn

from tests.helpers import assert_state_equal, model_state
from vit_explain.methods.adapters import TimmAdapter, TorchvisionViTAdapter, adapter_for
from vit_explain.methods.table import METHODS
from vit_explain.recording import MultiheadAttentionRecorder

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def timm_twin(tv):
    """A timm ViT with the torchvision ViT's weights (same architecture: pre-norm blocks, class
    token, learned position embedding over [class, patches], final norm, head on the class token)."""
    import timm
    layers = list(tv.encoder.layers)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              depth=len(layers), embed_dim=tv.hidden_dim, num_heads=layers[0].self_attention.num_heads,
                              mlp_ratio=tv.mlp_dim / tv.hidden_dim, num_classes=tv.num_classes).eval()
    pairs = [(model.patch_embed.proj, tv.conv_proj), (model.norm, tv.encoder.ln), (model.head, tv.heads.head)]
    for block, layer in zip(model.blocks, layers):
        pairs += [(block.norm1, layer.ln_1), (block.norm2, layer.ln_2), (block.attn.proj, layer.self_attention.out_proj),
                  (block.mlp.fc1, layer.mlp[0]), (block.mlp.fc2, layer.mlp[3])]
    with torch.no_grad():
        for ours, theirs in pairs:
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
        for block, layer in zip(model.blocks, layers):
            block.attn.qkv.weight.copy_(layer.self_attention.in_proj_weight)
            block.attn.qkv.bias.copy_(layer.self_attention.in_proj_bias)
        model.cls_token.copy_(tv.class_token)
        model.pos_embed.copy_(tv.encoder.pos_embedding)
    return model


@pytest.fixture(scope="module")
def tv():
    return TorchvisionViTAdapter.example()


def test_a_torchvision_vit_is_its_own_family(tv):
    assert type(adapter_for(tv)) is TorchvisionViTAdapter
    assert adapter_for(tv).default_gradcam_layer() == "encoder.layers.encoder_layer_1.ln_1"


def test_the_timm_twin_computes_the_same_function(tv):
    twin = timm_twin(tv)
    assert type(adapter_for(twin)) is TimmAdapter
    torch.testing.assert_close(twin(X), tv(X), atol=1e-5, rtol=0)


# CP-LRP's rules need the queries and keys as module outputs to detach; nn.MultiheadAttention
# computes them inside one function call
NOT_ON_TORCHVISION = {"cp-lrp"}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_gives_the_timm_twins_maps(tv, name):
    spec, twin = METHODS[name], timm_twin(tv)
    options = type("O", (), {"head_fusion": "max", "discard_ratio": 0.5, "compat": None, "layer": -1,
                             "target_layer": None, "start_layer": 0})()
    if name in NOT_ON_TORCHVISION:
        with pytest.raises(ValueError, match="VisionTransformer"):
            spec.build(tv, options)
        return
    ours, theirs = spec.build(tv, options), spec.build(twin, options)  # grad-cam: each family's last ln_1/norm1
    category = [1, 3] if spec.class_specific else None
    torch.testing.assert_close(ours.explain(X, category).masks, theirs.explain(X, category).masks,
                               atol=2e-5, rtol=0)  # measured: <= 6e-6


def test_the_input_must_be_the_models_image_size(tv):
    explainer = METHODS["rollout"].build(tv, type("O", (), {"head_fusion": "max", "discard_ratio": 0.9,
                                                            "compat": None})())
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\).*image_size"):
        explainer.explain(torch.randn(1, 3, 64, 64))


class Toy(nn.Module):
    """Tokens -> nn.MultiheadAttention -> mean -> 4 scores; batch_first as asked."""

    def __init__(self, batch_first: bool):
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.head = nn.Linear(8, 4)

    def forward(self, tokens):
        x = tokens if self.batch_first else tokens.transpose(0, 1)
        out, _ = self.attn(x, x, x, need_weights=False)
        out = out if self.batch_first else out.transpose(0, 1)
        return self.head(out.mean(dim=1))


def toys():
    torch.manual_seed(0)
    first = Toy(True).eval()
    second = Toy(False).eval()
    second.load_state_dict(first.state_dict())
    with torch.no_grad():
        first.attn.in_proj_weight.mul_(3)
        second.attn.in_proj_weight.copy_(first.attn.in_proj_weight)
    return first, second


def literal(toy, tokens, targets):
    """softmax(q k^T / sqrt(d)) with A a leaf, then out_proj(A @ V): A and dL/dA written out."""
    e, h = toy.attn.embed_dim, toy.attn.num_heads
    q, k, v = torch.nn.functional.linear(tokens, toy.attn.in_proj_weight, toy.attn.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.reshape(*t.shape[:2], h, e // h).transpose(1, 2)  # noqa: E731
    a = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(e // h)).softmax(-1).detach().requires_grad_(True)
    out = toy.attn.out_proj((a @ split(v)).transpose(1, 2).reshape(tokens.shape))
    logits = toy.head(out.mean(dim=1))
    (grad,) = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), a)
    return a.detach(), grad


@pytest.mark.parametrize("batch_first", [True, False])
def test_the_recorder_gives_the_attention_and_its_gradient(batch_first):
    toy = toys()[0 if batch_first else 1]
    tokens, targets = torch.randn(3, 5, 8), torch.tensor([0, 2, 3])
    with MultiheadAttentionRecorder(toy, gradients=True) as rec:
        logits = rec.forward(tokens)
        (grad,) = rec.attention_gradients(logits, targets)
        (attention,) = rec.attentions
    expected_attention, expected_grad = literal(toy, tokens, targets)
    torch.testing.assert_close(logits, toy(tokens), atol=1e-6, rtol=0)
    torch.testing.assert_close(attention, expected_attention, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=0)
    assert grad.abs().max() > 0


def test_the_caller_gets_the_weights_it_asked_for():
    toy = toys()[0]
    tokens = torch.randn(2, 5, 8)
    seen = []
    toy.attn.register_forward_hook(lambda m, i, o: seen.append(o[1]))  # the caller's own hook, registered first
    with MultiheadAttentionRecorder(toy, gradients=True) as rec:
        rec.forward(tokens)
        out = toy.attn(tokens, tokens, tokens)  # need_weights and averaging by default
    assert seen[0] is None  # Toy asked for none
    torch.testing.assert_close(out[1], rec.attentions[0].mean(dim=1).detach())
    assert len(toy.attn._forward_hooks) == 1 and not toy.attn._forward_pre_hooks


def test_the_model_comes_back_also_when_the_forward_raises(tv):
    tv.train()
    before = model_state(tv)

    def fail(*_):
        raise RuntimeError("boom")
    handle = tv.heads.register_forward_hook(fail)
    after_hook = model_state(tv)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with MultiheadAttentionRecorder(tv, gradients=True) as rec:
                rec.forward(X)
        assert_state_equal(after_hook, model_state(tv))
        assert all(not m._forward_pre_hooks_with_kwargs and not m._forward_hooks_with_kwargs for m in tv.modules())
    finally:
        handle.remove()
        tv.eval()
    before["training"] = [False] * len(before["training"])
    assert_state_equal(before, model_state(tv))


def test_appended_keys_are_refused():
    model = nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(ValueError, match="bias_k"):
        MultiheadAttentionRecorder(model)
