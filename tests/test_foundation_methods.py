"""AGCAM, TokenTM, DAAM and CP-LRP on the foundation families (Hugging Face CLIP / SigLIP / DINOv2,
OpenCLIP), CP-LRP's conservation for a prompt, and LeGrad through an attention pool (SigLIP) against
literal computations. Tiny random-init models; nothing is downloaded."""
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_state_equal, model_state
from tests.test_foundation import REF, X, hf_dinov2, hf_siglip, timm_siglip
from vit_explain import VITAGCAM, VITCPLRP, VITDAAM, VITLeGrad, VITTokenTM
from vit_explain.methods.adapters import HuggingFaceEmbeddingAdapter, OpenCLIPAdapter
from vit_explain.methods.targets import Prompt, Reference, resolve

transformers = pytest.importorskip("transformers")
PROMPT = Prompt("a dog", "a cat")
CATEGORIES = [1, 0]

# family -> (build, the targets it takes)
FAMILIES = {
    "hf-clip": (HuggingFaceEmbeddingAdapter.example, (PROMPT, Reference(REF))),
    "hf-siglip": (hf_siglip, (PROMPT, Reference(REF))),
    "hf-dinov2": (hf_dinov2, (Reference(REF),)),
    "open-clip": (OpenCLIPAdapter.example, (PROMPT, Reference(REF))),
}
METHODS = {"agcam": VITAGCAM, "tokentm": VITTokenTM, "daam": VITDAAM, "cp-lrp": VITCPLRP}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    build, targets = FAMILIES[request.param]
    try:
        return build(), targets
    except ImportError as error:
        pytest.skip(str(error))


@pytest.mark.parametrize("method", list(METHODS))
def test_each_target_batch_equals_singles_and_the_model_comes_back(method, family):
    model, targets = family
    explainer = METHODS[method](model)
    model.train()
    before = model_state(model)
    try:
        for target in targets:
            target = resolve(explainer, target)  # the prompts embedded once for the four calls
            batch = explainer.explain(X, CATEGORIES, target=target)
            assert batch.targets.tolist() == CATEGORIES and torch.isfinite(batch.masks).all()
            assert batch.masks.amax(dim=(1, 2)).tolist() == [1.0, 1.0]
            for i in range(len(X)):
                single = explainer.explain(X[i:i + 1], CATEGORIES[i], target=target)
                torch.testing.assert_close(batch.masks[i], single.masks[0], atol=1e-5, rtol=0)
            assert_state_equal(before, model_state(model))
    finally:
        model.eval()


def zero_absorbers(module):
    """Biases, LayerNorm offsets, class and position embeddings set to zero: every constant that
    takes relevance of its own, so that what is left must all reach the pixels."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias") or "class_embedding" in name or "position_embedding" in name:
                parameter.zero_()


def test_cp_lrp_conserves_a_prompt_score_on_a_clip_vision_tower():
    # The score is scale * cos(image embedding, text): the L2 normalisation takes the identity rule
    # (its norm held constant), so without absorbers the input relevance sums to the score itself.
    # (AttnLRP's softmax rule is not conservative, here as on classifiers: CP only.)
    model = HuggingFaceEmbeddingAdapter.example().double()
    zero_absorbers(model.vision_model)
    x = X.double()
    for target in (PROMPT, Reference(REF.double())):
        explanation = VITCPLRP(model).explain(x, CATEGORIES, target=target)
        score = explanation.logits[range(len(x)), CATEGORIES]
        assert score.abs().min() > 1e-3  # a score worth conserving
        torch.testing.assert_close(explanation.pixel_relevance.sum(dim=(1, 2)), score, atol=1e-10, rtol=1e-9)


def test_cp_lrp_conservation_needs_the_normalisation_rule():
    # With the true gradient of the cosine similarity (scale-invariant in the embedding), the
    # relevance at the embedding sums to zero: the rule above is what makes conservation possible.
    embedding = torch.randn(2, 24, dtype=torch.float64, requires_grad=True)
    text = F.normalize(torch.randn(1, 24, dtype=torch.float64), dim=-1)
    score = (F.normalize(embedding, dim=-1) @ text.t()).sum()
    (gradient,) = torch.autograd.grad(score, embedding)
    torch.testing.assert_close((embedding * gradient).sum(), torch.zeros((), dtype=torch.float64), atol=1e-12,
                               rtol=0)
    from vit_explain.math.lrp import l2_normalize_identity
    ruled = (l2_normalize_identity(embedding) @ text.t()).sum()
    (gradient,) = torch.autograd.grad(ruled, embedding)
    torch.testing.assert_close((embedding * gradient).sum(), ruled.detach())


@pytest.mark.parametrize("build", [hf_siglip, OpenCLIPAdapter.example])
def test_cp_lrp_refuses_gamma_where_a_multihead_attention_hides_the_projections(build):
    model = build()
    with pytest.raises(ValueError, match="gamma") as error:
        VITCPLRP(model, gamma=0.25)
    assert type(model).__name__ in str(error.value)


def test_cp_lrp_refuses_a_family_it_does_not_know_naming_it():
    from vit_explain.methods.adapters import CaitAdapter
    model = CaitAdapter.example()
    with pytest.raises(ValueError, match=type(model).__name__):
        VITCPLRP(model)


# --- LeGrad through an attention pool: the gradient with respect to the pool's attention -------

def literal_latent_pool(pool, tokens):
    """timm's AttentionPoolLatent written out: its learned latent query attends over the tokens."""
    batch, count, width = tokens.shape
    heads = pool.num_heads
    d = width // heads
    q = pool.q(pool.latent.expand(batch, -1, -1)).view(batch, 1, heads, d).transpose(1, 2)
    kv = pool.kv(tokens).view(batch, count, 2, heads, d)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    attention = torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, dim=-1)       # (B, H, 1, N)
    out = pool.proj((attention @ v).transpose(1, 2).reshape(batch, 1, width))
    return (out + pool.mlp(pool.norm(out)))[:, 0], attention


def literal_siglip_head(head, tokens):
    """transformers' SigLIP head written out: the probe attends over the tokens (nn.MultiheadAttention's math)."""
    attention_module = head.attention
    batch, count, width = tokens.shape
    heads = attention_module.num_heads
    d = width // heads
    wq, wk, wv = attention_module.in_proj_weight.chunk(3)
    bq, bk, bv = attention_module.in_proj_bias.chunk(3)
    q = F.linear(head.probe.expand(batch, -1, -1), wq, bq).view(batch, 1, heads, d).transpose(1, 2)
    k = F.linear(tokens, wk, bk).view(batch, count, heads, d).transpose(1, 2)
    v = F.linear(tokens, wv, bv).view(batch, count, heads, d).transpose(1, 2)
    attention = torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, dim=-1)
    out = attention_module.out_proj((attention @ v).transpose(1, 2).reshape(batch, 1, width))
    return (out + head.mlp(head.layernorm(out)))[:, 0], attention


def literal_legrad(block_tokens, read, score):
    """For each block's tokens: s = score(pooled), A the pool's attention; ReLU(ds/dA) averaged over
    heads and latents; averaged over blocks; min-max scaled; (B, 4, 4)."""
    maps = []
    for tokens in block_tokens:
        pooled, attention = read(tokens)
        (gradient,) = torch.autograd.grad(score(pooled), attention)
        maps.append(gradient.clamp(min=0).mean(dim=(1, 2)))
    total = torch.stack(maps, dim=1).mean(dim=1)
    low, high = total.amin(dim=1, keepdim=True), total.amax(dim=1, keepdim=True)
    return ((total - low) / (high - low)).view(len(total), 4, 4).detach()


def test_legrad_on_a_timm_siglip_model_differentiates_the_pool_attention():
    model = timm_siglip()
    with torch.no_grad():
        keys = F.normalize(model(REF), dim=-1)
    tokens = model.norm_pre(model._pos_embed(model.patch_embed(X)))
    block_tokens = []
    for block in model.blocks:
        tokens = block(tokens)
        block_tokens.append(tokens)

    def score(pooled):
        scores = F.normalize(model.head(model.fc_norm(pooled)), dim=-1) @ keys.t()
        return scores[range(len(X)), CATEGORIES].sum()
    expected = literal_legrad(block_tokens, lambda t: literal_latent_pool(model.attn_pool, model.norm(t)), score)
    mask = VITLeGrad(model).explain(X, CATEGORIES, target=Reference(REF)).masks
    torch.testing.assert_close(mask, expected, atol=1e-5, rtol=1e-4)
    # not the blocks' self-attention: LeGrad of a class-token-style reading differs
    assert not torch.allclose(mask, VITLeGrad(model, layers=[0]).explain(X, CATEGORIES, target=Reference(REF)).masks)


def test_legrad_on_hf_siglip_differentiates_the_pool_attention():
    model = hf_siglip()
    vision = model.vision_model
    tokens = model.tokenizer(["a dog", "a cat"], padding="max_length", return_tensors="pt")
    with torch.no_grad():
        text = model.get_text_features(input_ids=tokens["input_ids"])
        text = F.normalize(getattr(text, "pooler_output", text), dim=-1)
    hidden = vision.embeddings(X)
    block_tokens = []
    for layer in vision.encoder.layers:
        hidden = layer(hidden, None)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        block_tokens.append(hidden)

    def score(pooled):
        scores = F.normalize(pooled, dim=-1) @ text.t() * model.logit_scale.exp() + model.logit_bias
        return scores[range(len(X)), CATEGORIES].sum()
    expected = literal_legrad(block_tokens, lambda t: literal_siglip_head(vision.head, vision.post_layernorm(t)),
                              score)
    explanation = VITLeGrad(model).explain(X, CATEGORIES, target=PROMPT)
    torch.testing.assert_close(explanation.masks, expected, atol=1e-5, rtol=1e-4)
