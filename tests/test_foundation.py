"""Foundation models: prompt and reference targets, CLIP / SigLIP / DINOv2 / OpenCLIP families,
attention-pooled readouts. Random-init models from tiny configs; nothing is downloaded."""
import json

import pytest
import torch
import torch.nn.functional as F

from tests import image_files as files
from tests.helpers import assert_state_equal, error_lines, model_state, run, tiny
from vit_explain import VITAttentionRollout, VITGradWeightedAttention, VITLeGrad
from vit_explain.methods.adapters import HuggingFaceEmbeddingAdapter, OpenCLIPAdapter, TimmAdapter, adapter_for
from vit_explain.methods.adapters.huggingface_embedding import word_tokenizer
from vit_explain.methods.targets import Prompt, Reference

transformers = pytest.importorskip("transformers")
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
REF = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
WORDS = ["a", "dog", "cat", "car"]


def timm_siglip():
    import timm
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_siglip_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             embed_dim=48, num_heads=3, num_classes=0).eval()


def timm_dinov2():
    import timm
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=32, patch_size=8, depth=2,
                             embed_dim=48, num_heads=3, num_classes=0).eval()


def hf_siglip():
    config = transformers.SiglipConfig(
        # SigLIP compares the towers' outputs directly: the same width
        text_config=dict(vocab_size=8, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=3, max_position_embeddings=6, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=3))
    torch.manual_seed(0)
    model = transformers.SiglipModel(config).eval()
    model.tokenizer = word_tokenizer(WORDS, max_length=6)
    return model


def hf_dinov2():
    config = transformers.Dinov2Config(image_size=32, patch_size=8, hidden_size=48, intermediate_size=96,
                                       num_hidden_layers=2, num_attention_heads=3)
    torch.manual_seed(0)
    return transformers.Dinov2Model(config).eval()


# family -> (build, a target it takes)
FAMILIES = {
    "hf-clip": (HuggingFaceEmbeddingAdapter.example, Prompt("a photo of a dog", "a red car")),
    "hf-siglip": (hf_siglip, Prompt("a dog", "a cat")),
    "hf-dinov2": (hf_dinov2, Reference(REF)),
    "open-clip": (OpenCLIPAdapter.example, Prompt("a dog", "a cat")),
    "timm-siglip-map": (timm_siglip, Reference(REF)),
    "timm-dinov2": (timm_dinov2, Reference(REF)),
}


def build(name):
    maker, target = FAMILIES[name]
    try:
        return maker(), target
    except ImportError as error:
        pytest.skip(str(error))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_recording_reproduces_the_model_and_hands_it_back(name):
    model, target = build(name)
    explainer = VITGradWeightedAttention(model)
    adapter = explainer.adapter
    scorer = __import__("vit_explain.methods.targets", fromlist=["resolve"]).resolve(explainer, target)
    with adapter.scoring(scorer), torch.no_grad():
        expected = adapter.logits(X)  # the unhooked model's scores
    model.train()
    before = model_state(model)
    with adapter.scoring(scorer), adapter.recorder(gradients=True) as rec:
        replayed = rec.forward(X)
        gradients = rec.attention_gradients(replayed, [0, 1])
    assert_state_equal(before, model_state(model))
    model.eval()
    torch.testing.assert_close(replayed, expected, atol=1e-5, rtol=0)
    assert len(rec.attentions) == len(gradients) == adapter.block_count()
    assert all(g.abs().sum() > 0 for g in gradients)  # the recorded attention is on the score's path


def test_prompt_scores_are_the_models_own_logits():
    # the explained score of a prompt is exactly CLIP's / SigLIP's logits_per_image
    for model in (HuggingFaceEmbeddingAdapter.example(), hf_siglip()):
        explanation = VITLeGrad(model).explain(X, target=Prompt("a dog", "a cat"))
        padding = "max_length" if "Siglip" in type(model).__name__ else True
        tokens = model.tokenizer(["a dog", "a cat"], padding=padding, return_tensors="pt")
        if "Siglip" in type(model).__name__:
            tokens.pop("attention_mask")
        with torch.no_grad():
            own = model(pixel_values=X, **tokens).logits_per_image
        torch.testing.assert_close(explanation.logits, own, atol=1e-5, rtol=0)


def literal_chefer_for_prompt(model, x, prompt):
    """Chefer (ICCV'21) on CLIP's image tower with score = logit_scale * cos(image, text),
    written from the definition with eager attentions and autograd."""
    model = model.eval()
    tokens = model.tokenizer([prompt], padding=True, return_tensors="pt")
    with torch.no_grad():
        text = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    model.set_attn_implementation("eager")
    out = model.vision_model(pixel_values=x, output_attentions=True)
    image = F.normalize(model.visual_projection(out.pooler_output), dim=-1)
    score = (model.logit_scale.exp() * image @ text.t()).sum()
    grads = torch.autograd.grad(score, out.attentions)
    maps = []
    for b in range(len(x)):
        n = out.attentions[0].shape[-1]
        r = torch.eye(n)
        for a, g in zip(out.attentions, grads):
            r = r + (a[b] * g[b]).clamp(min=0).mean(0) @ r
        row = r[0, 1:]
        maps.append((row / row.max()).view(4, 4))
    return torch.stack(maps).detach()


def test_chefer_for_a_prompt_matches_a_literal_computation():
    model = HuggingFaceEmbeddingAdapter.example()
    mask = VITGradWeightedAttention(model).explain(X, target=Prompt("a photo of a dog")).masks
    torch.testing.assert_close(mask, literal_chefer_for_prompt(HuggingFaceEmbeddingAdapter.example(), X,
                                                               "a photo of a dog"), atol=1e-5, rtol=1e-4)


def test_rollout_of_an_attention_pooled_model_ends_with_the_pool_row():
    model = timm_siglip()
    adapter = adapter_for(model)
    with adapter.recorder(gradients=False) as rec:
        rec.forward(X)
        blocks, pool_row = [a.mean(1) for a in rec.attentions], rec.readout
    n = blocks[0].shape[-1]
    expected = []
    for b in range(len(X)):
        r = torch.eye(n)
        for a in blocks:
            m = (a[b] + torch.eye(n)) / 2
            r = (m / m.sum(-1, keepdim=True)) @ r
        row = pool_row[b, 0] @ r  # no class token: the pool's attention reads the tokens
        expected.append((row / row.max()).view(4, 4))
    mask = VITAttentionRollout(model, head_fusion="mean", discard_ratio=0.0).explain(X).masks
    torch.testing.assert_close(mask, torch.stack(expected), atol=1e-5, rtol=1e-4)
    assert pool_row.shape == (len(X), 1, n) and torch.allclose(pool_row.sum(-1), torch.ones(len(X), 1))


def test_each_prompt_or_reference_is_its_own_map():
    model = HuggingFaceEmbeddingAdapter.example()
    explainer = VITLeGrad(model)
    both = Prompt("a photo of a dog", "a red car")
    first, second = (explainer.explain(X, i, target=both).masks for i in (0, 1))
    alone = explainer.explain(X, target=Prompt("a red car")).masks
    torch.testing.assert_close(second, alone)
    assert not torch.allclose(first, second)
    references = VITLeGrad(timm_dinov2()).explain(X, [2, 0], target=Reference(REF))
    assert references.targets.tolist() == [2, 0] and references.logits.shape == (2, 3)


@pytest.mark.parametrize("model, target, words", [
    (TimmAdapter.example, Prompt("a dog"), "no text tower"),
    (TimmAdapter.example, Reference(REF), "no embedding output"),
    (timm_dinov2, Prompt("a dog"), "no text tower"),
    (timm_dinov2, 0, "no classifier head"),
    (HuggingFaceEmbeddingAdapter.example, None, "no classifier head"),
])
def test_a_target_the_model_cannot_take_is_a_value_error_naming_what_it_takes(model, target, words):
    model = model()
    with pytest.raises(ValueError, match=words) as error:
        VITGradWeightedAttention(model).explain(X, target=target)
    assert "takes" in str(error.value) and type(model).__name__ in str(error.value)
    with pytest.raises(ValueError, match="non-empty"):
        Prompt("  ")


def test_rollout_takes_no_target_on_a_model_without_classes():
    masks = VITAttentionRollout(HuggingFaceEmbeddingAdapter.example()).explain(X).masks
    assert masks.shape == (2, 4, 4) and torch.isfinite(masks).all()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A CLIPModel saved with save_pretrained, with its tokenizer and image processor."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    model = HuggingFaceEmbeddingAdapter.example()
    model.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder)
    return folder


def test_the_command_writes_one_map_per_prompt_named_after_it(clip_dir, tmp_path, capsys):
    image, out = files.write_rgb(tmp_path / "a.png", size=(48, 40)), tmp_path / "out"
    code, _, err = run(capsys, "--image_path", image, "--prompt", "a photo of a dog", "--prompt", "a red car",
                       "--output-dir", out, *tiny(clip_dir))
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert "a_grad_rollout_prompt-a_photo_of_a_dog_0.900_max.png" in names
    assert "a_grad_rollout_prompt-a_red_car_0.900_max.npy" in names
    entries = json.loads((out / "manifest.json").read_text())["images"]
    assert sorted(e["parameters"]["prompt"] for e in entries) == ["a photo of a dog", "a red car"]
    assert {e["target"] for e in entries} == {"prompt"}


def test_the_command_explains_a_reference_image(clip_dir, tmp_path, capsys):
    image, out = files.write_rgb(tmp_path / "a.png"), tmp_path / "out"
    reference = files.write_rgb(tmp_path / "dog.png", size=(40, 40))
    code, _, err = run(capsys, "--image_path", image, "--reference", reference, "--method", "legrad",
                       "--output-dir", out, *tiny(clip_dir))
    assert code == 0, err
    assert (out / "a_legrad_ref-dog.npy").exists()


@pytest.mark.parametrize("args, words", [
    (["--prompt", "a dog"], "no text tower"),
    (["--reference", "REF"], "no embedding output"),
    (["--prompt", " "], "--prompt is empty"),
])
def test_a_target_the_model_cannot_take_is_one_line_and_exit_2(args, words, tiny_model_dir, tmp_path, capsys):
    image = files.write_rgb(tmp_path / "a.png")
    args = [str(files.write_rgb(tmp_path / "r.png")) if a == "REF" else a for a in args]
    code, _, err = run(capsys, "--image_path", image, *args, "--output-dir", tmp_path / "out", *tiny(tiny_model_dir))
    (line,) = error_lines(err)
    assert code == 2 and words in line


def test_a_class_asked_of_a_model_without_classes_is_one_line_and_exit_2(clip_dir, tmp_path, capsys):
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--category_index", "1",
                       "--output-dir", tmp_path / "out", *tiny(clip_dir))
    (line,) = error_lines(err)
    assert code == 2 and "no classifier head" in line and "--prompt" in line
