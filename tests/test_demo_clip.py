"""The shipped CLIP demo (examples/demo-clip, made by examples/make_demo_clip.py): it loads offline
with its processor, names the two objects of each shipped sample, and a literal LeGrad of each
object's caption lands on that object.

The LeGrad here is written from the paper's definition (Bousselham et al., arXiv 2404.03214) with
hooks on transformers' CLIP vision tower, independently of vit_explain: for each vision layer l,
its output tokens are pooled as CLIP pools the last layer (class token -> post_layernorm ->
visual_projection), normalised, and scored against the normalised prompt embedding times the
logit scale: s_l. g_l = d s_l / d A_l, A_l the layer's post-softmax attention (eager attention,
so A_l is on the graph). map_l = ReLU(g_l) averaged over heads and query rows, the class-token
key column dropped; the map is the mean of map_l over the layers.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from examples.clip_samples import EXAMPLES, lands_on, load_samples

transformers = pytest.importorskip("transformers")

FOLDER = EXAMPLES / "demo-clip"
SAMPLES = load_samples()
CONCEPTS = sorted({c for s in SAMPLES for c in s.captions})  # all 12: each is in two samples


@pytest.fixture(scope="module")
def demo():
    model = transformers.CLIPModel.from_pretrained(FOLDER, attn_implementation="eager").eval()
    processor = transformers.AutoProcessor.from_pretrained(FOLDER)
    pixels = processor(images=[Image.open(s.path).convert("RGB") for s in SAMPLES],
                       return_tensors="pt")["pixel_values"]
    return model, processor, pixels


def text_embeddings(model, processor, prompts: list[str]) -> torch.Tensor:
    text = processor(text=prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        embeds = model.get_text_features(**text).pooler_output
    return embeds / embeds.norm(dim=-1, keepdim=True)


def literal_legrad(model, pixels: torch.Tensor, text: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """(B, gh, gw) LeGrad maps, image b explained for the normalised text embedding text[b], and
    the (B, L) scores s_l."""
    vision = model.vision_model
    layers = vision.encoder.layers
    tokens, attentions = [None] * len(layers), [None] * len(layers)
    hooks = []
    for l, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(
            lambda _m, _i, out, l=l: tokens.__setitem__(l, out[0] if isinstance(out, tuple) else out)))
        hooks.append(layer.self_attn.register_forward_hook(
            lambda _m, _i, out, l=l: attentions.__setitem__(l, out[1])))
    try:
        with torch.enable_grad():
            vision(pixel_values=pixels)
            scale = model.logit_scale.exp().detach()
            maps, scores = [], []
            for l in range(len(layers)):
                pooled = model.visual_projection(vision.post_layernorm(tokens[l][:, 0]))
                score = scale * (pooled / pooled.norm(dim=-1, keepdim=True) * text).sum(-1)  # (B,)
                # images are independent in the batch, so the sum's gradient is each image's own
                grad = torch.autograd.grad(score.sum(), attentions[l], retain_graph=True)[0]  # (B, H, N, N)
                maps.append(grad.clamp(min=0).mean(dim=(1, 2))[:, 1:])
                scores.append(score.detach())
    finally:
        for hook in hooks:
            hook.remove()
    heat = torch.stack(maps).mean(0)
    side = int(round(heat.shape[1] ** 0.5))
    return heat.reshape(-1, side, side).detach().numpy(), torch.stack(scores, dim=1)


def landed(model, processor, pixels, k: int) -> list[bool]:
    """For each sample, whether the LeGrad map of its object k's caption lands on object k."""
    text = text_embeddings(model, processor, [s.captions[k] for s in SAMPLES])
    heat, _ = literal_legrad(model, pixels, text)
    return [lands_on(h, s.objects, k) for h, s in zip(heat, SAMPLES)]


def test_twelve_samples_with_two_captioned_masks():
    assert len(SAMPLES) == 12 and len(CONCEPTS) == 12
    for s in SAMPLES:
        assert s.path.exists() and len(s.objects) == 2
        (a, mask_a), (b, mask_b) = s.objects
        assert a != b and mask_a.any() and mask_b.any() and not (mask_a & mask_b).any()
    assert SAMPLES[0].captions == ["red circle", "blue square"]  # the README's command


def test_loads_offline_with_eos_pooling(demo):
    model, processor, pixels = demo
    assert pixels.shape == (12, 3, 64, 64)
    text = processor(text=["red circle", "a blue square"], padding=True, return_tensors="pt")
    eos = model.config.text_config.eos_token_id
    assert eos == processor.tokenizer.eos_token_id and eos != 2  # 2 would switch on the legacy argmax rule
    ids = text["input_ids"]
    assert ids[0, 3] == eos and ids[1, 4] == eos and ids[0, 4] == processor.tokenizer.pad_token_id
    with torch.no_grad():
        out = model.text_model(**text)
    assert torch.equal(out.pooler_output[0], out.last_hidden_state[0, 3])
    assert torch.equal(out.pooler_output[1], out.last_hidden_state[1, 4])
    assert processor.tokenizer.unk_token_id not in ids


def test_names_both_objects_of_every_sample(demo):
    """Zero-shot over the 12 captions: each sample's two best captions are its two objects."""
    model, processor, pixels = demo
    text = text_embeddings(model, processor, CONCEPTS)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels).pooler_output
    scores = image @ text.T
    for s, row in zip(SAMPLES, scores):
        assert sorted(CONCEPTS[i] for i in row.topk(2).indices) == sorted(s.captions), s.path.name


def test_literal_legrad_scores_its_last_layer_as_clip_does(demo):
    """The hooks see what CLIP computes: the last layer's s_l is the model's own image-text logit,
    and the hooked attentions are post-softmax (rows sum to 1)."""
    model, processor, pixels = demo
    captions = [s.captions[0] for s in SAMPLES]
    _, scores = literal_legrad(model, pixels, text_embeddings(model, processor, captions))
    with torch.no_grad():
        out = model(pixel_values=pixels, **processor(text=captions, padding=True, return_tensors="pt"))
    torch.testing.assert_close(scores[:, -1], out.logits_per_image.diagonal(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        attentions = model.vision_model(pixel_values=pixels, output_attentions=True).attentions
    assert len(attentions) == scores.shape[1] == 4
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(12, 4, 65))


@pytest.mark.parametrize("k", [0, 1])
def test_legrad_of_each_caption_lands_on_its_object(demo, k):
    """Counted: of the 12 samples, those whose map for object k's caption has its top patch mostly
    on object k (lands_on: more of object k's pixels than of the other object's). k = 0 and k = 1
    are the two prompt sets; each must land in at least 11 of 12."""
    model, processor, pixels = demo
    hits = landed(model, processor, pixels, k)
    assert sum(hits) >= 11, [s.path.name for s, hit in zip(SAMPLES, hits) if not hit]


def test_untrained_model_does_not_pass(demo):
    """The same check on a CLIP of the same shape with random weights fails: passing it takes a
    model that has learned where each caption's object is."""
    model, processor, pixels = demo
    torch.manual_seed(0)
    untrained = transformers.CLIPModel(model.config).eval()
    hits = landed(untrained, processor, pixels, 0) + landed(untrained, processor, pixels, 1)
    assert sum(hits) < 18


# ---- vit-explain's own methods on the demo, through `local-dir:` and `Prompt` -------------------

@pytest.fixture(scope="module")
def library_demo():
    from vit_explain.io.models import load_model
    from vit_explain.io.preprocess import Preprocessor
    model = load_model(f"local-dir:{FOLDER}")
    preprocess = Preprocessor(model)
    x = torch.stack([preprocess(Image.open(s.path).convert("RGB")) for s in SAMPLES])
    return model, x


def library_maps(model, x, method: str, k: int, **kwargs) -> np.ndarray:
    from vit_explain.methods.table import METHODS
    from vit_explain.methods.targets import Prompt
    explainer = METHODS[method].load()(model, **kwargs)
    columns = [CONCEPTS.index(s.captions[k]) for s in SAMPLES]  # each sample's object k's caption
    return explainer.explain(x, columns, target=Prompt(*CONCEPTS)).masks.numpy()


def test_library_preprocessing_is_the_processor_s(demo, library_demo):
    """The processor's size, mean and std; the resize rounds a few pixels differently (measured:
    27 of 147456 values, by one 8-bit step at most)."""
    processor, ours, theirs = demo[1], library_demo[1], demo[2]
    step = 1 / 255 / min(processor.image_processor.image_std)
    difference = (ours - theirs).abs()
    assert ours.shape == theirs.shape and float(difference.max()) <= step * (1 + 1e-4)
    assert float((difference > 1e-6).float().mean()) < 0.01


def test_library_legrad_with_the_model_s_pooling_equals_the_literal_one(demo, library_demo):
    """VITLeGrad(pooling="model") reads each block through the class token, post_layernorm and
    the projection, as the literal LeGrad above does: the same maps (min-max scaled)."""
    model, processor, _ = demo
    pixels = library_demo[1]  # the same input for both
    heat, _ = literal_legrad(model, pixels, text_embeddings(model, processor, [s.captions[0] for s in SAMPLES]))
    low, high = heat.min(axis=(1, 2), keepdims=True), heat.max(axis=(1, 2), keepdims=True)
    ours = library_maps(library_demo[0], library_demo[1], "legrad", 0, pooling="model")
    np.testing.assert_allclose(ours, (heat - low) / (high - low), atol=1e-5)


@pytest.mark.parametrize("method", ["legrad", "cola"])
@pytest.mark.parametrize("k", [0, 1])
def test_library_maps_of_each_caption_land_on_its_object(library_demo, method, k):
    """The issue's bar, with vit-explain's defaults (LeGrad as published: mean of all tokens):
    each prompt set lands in at least 11 of 12 (measured: LeGrad 12 and 11, CoLa 11 and 12)."""
    maps = library_maps(*library_demo, method, k)
    hits = [lands_on(m, s.objects, k) for m, s in zip(maps, SAMPLES)]
    assert sum(hits) >= 11, [s.path.name for s, hit in zip(SAMPLES, hits) if not hit]
