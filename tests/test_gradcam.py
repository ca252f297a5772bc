"""Grad-CAM for transformers: the pytorch-grad-cam package's maps, batches, layouts, state, errors."""
import copy

import numpy as np
import pytest
import timm
import torch
from timm.models import SwinTransformer, VisionTransformer

from tests.helpers import assert_state_equal, model_state, plain_gradcam
from vit_explain.math.gradcam import grad_cam, gradcam_weights
from vit_explain.methods.gradcam import VITGradCAM
from vit_explain.recording.activations import ActivationRecorder

GEN = torch.Generator().manual_seed(11)
X2 = torch.randn(2, 3, 224, 224, generator=GEN)
X4 = torch.randn(4, 3, 224, 224, generator=GEN)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are small: one thread is faster than two on a busy machine (no spin-waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def peaky_head(model, factor=20.0):
    """Random-init heads give nearly flat logits; scaling the head makes the gradients class-specific."""
    with torch.no_grad():
        for name in ("head", "head_dist"):
            head = getattr(model, name, None)
            head = getattr(head, "fc", head)  # Swin's head is a ClassifierHead
            if isinstance(head, torch.nn.Linear):
                head.weight.mul_(factor)
    return model.eval()


@pytest.fixture(scope="module")
def deit():
    torch.manual_seed(0)
    return peaky_head(timm.create_model("deit_tiny_patch16_224", pretrained=False))


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return peaky_head(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False))


@pytest.fixture(scope="module")
def small_swin():
    """Swin with Swin-T's layout (patch 4, window 7, 4 stages, last stage 7x7) but narrow and shallow."""
    torch.manual_seed(0)
    return peaky_head(SwinTransformer(img_size=224, embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4),
                                      num_classes=1000))


def small_vit(**kwargs):
    """A 2-block ViT on 64x64 inputs (4x4 grid): cheap models with unusual token layouts."""
    torch.manual_seed(1)
    args = dict(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    return peaky_head(VisionTransformer(**{**args, **kwargs}), 50.0)


def nontrivial(masks):
    masks = np.asarray(masks)
    assert np.isfinite(masks).all() and np.allclose(masks.reshape(len(masks), -1).max(1), 1)
    assert all((m > 0).sum() > 3 and m.std() > 0.01 for m in masks)


# ---------------------------------------------------------------------------------------------
# (a) the grad-cam package (pytorch-grad-cam) gives the same maps

def vit_reshape(tensor, grid=(14, 14)):
    return tensor[:, 1:].reshape(tensor.shape[0], *grid, tensor.shape[-1]).permute(0, 3, 1, 2)


def swin_reshape(tensor):
    return tensor.permute(0, 3, 1, 2)  # timm's Swin blocks are NHWC


@pytest.mark.parametrize("arch, layer_name, reshape, categories", [
    ("deit", "blocks.11.norm1", vit_reshape, [3, 517]),
    ("swin", "layers.3.blocks.1.norm1", swin_reshape, [42, 980]),
])
def test_matches_the_grad_cam_package(request, arch, layer_name, reshape, categories):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = request.getfixturevalue(arch)
    explainer = VITGradCAM(model)
    assert explainer.target_layer == layer_name  # the default: the last block's norm1
    ours = explainer(X2, category_index=categories)

    # The package runs loss.backward() (filling .grad) and leaves the model in eval: give it a copy.
    # Only the target layer's parameters require grad there, so its output (where the package hooks
    # its gradient) is still in the graph but the backward stops at it (speed; same values).
    theirs_model = copy.deepcopy(model).requires_grad_(False)
    layer = dict(theirs_model.named_modules())[layer_name].requires_grad_(True)
    targets = [ClassifierOutputTarget(c) for c in categories]
    cam = pgc.GradCAM(model=theirs_model, target_layers=[layer], reshape_transform=reshape)
    try:
        final = cam(input_tensor=X2, targets=targets)  # (B, 224, 224): min-max scaled, resized, rescaled
        # Like with like, 1: the package's raw map on the patch grid, from its own internals
        # (the reshaped activations and gradients its hooks kept, its own get_cam_image, its relu),
        # before any scaling or resizing. Ours is that map divided by its maximum.
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = np.maximum(cam.get_cam_image(X2, layer, targets, acts, grads), 0)
    finally:
        cam.activations_and_grads.release()
    assert raw.shape == ours.shape == (2, *ours.shape[1:])
    np.testing.assert_allclose(ours, raw / raw.max(axis=(1, 2), keepdims=True), atol=1e-5)
    nontrivial(ours)

    # Like with like, 2: the package's public output is its raw map min-max scaled and resized to
    # the input (cv2 bilinear), then min-max scaled again; ours put through the same steps (its
    # own scale_cam_image) gives the same image. Dividing by the max first does not change this.
    size = (X2.shape[-1], X2.shape[-2])
    np.testing.assert_allclose(scale_cam_image(scale_cam_image(ours, size)), final, atol=1e-4)


def test_matches_a_plain_computation(deit):
    """Independent of the package: hooks + retain_grad + backward on a copy of the model."""
    np.testing.assert_allclose(VITGradCAM(deit)(X2, [3, 517]),
                               plain_gradcam(deit, "blocks.11.norm1", X2, [3, 517], 1, (14, 14)), atol=1e-5)
    other = VITGradCAM(deit, target_layer="blocks.9.norm2")(X2[:1], 7)
    np.testing.assert_allclose(other, plain_gradcam(deit, "blocks.9.norm2", X2[:1], [7], 1, (14, 14))[0],
                               atol=1e-5)


def test_math_weights_are_the_spatial_mean_of_the_gradients():
    acts = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]])    # (1, 2, 1, 2): gh=2, gw=1, C=2
    grads = torch.tensor([[[[1.0, -4.0]], [[3.0, 0.0]]]])   # channel means: 2, -2
    assert torch.equal(gradcam_weights(grads), torch.tensor([[2.0, -2.0]]))
    # position 0: 2*1 - 2*2 = -2 -> 0 ; position 1: 2*3 + 2*1 = 8
    assert torch.equal(grad_cam(acts, grads), torch.tensor([[[0.0], [8.0]]]))
    with pytest.raises(ValueError, match="same shape"):
        grad_cam(acts, grads[:, :1])


# ---------------------------------------------------------------------------------------------
# (b) a batch gives the same masks as one call per image

@pytest.mark.parametrize("arch, grid", [("deit", (14, 14)), ("small_swin", (7, 7))])
def test_batch_equals_singles(request, arch, grid):
    model = request.getfixturevalue(arch)
    explainer = VITGradCAM(model)
    categories = [1, 250, 500, 999]
    explanation = explainer.explain(X4, categories)
    batch = explanation.masks.numpy()
    assert batch.shape == (4, *grid) and explanation.masks.dtype == torch.float32
    assert explanation.targets.tolist() == categories
    for i, category in enumerate(categories):
        single = explainer(X4[i:i + 1], category)
        assert single.shape == grid and single.dtype == np.float32
        np.testing.assert_allclose(batch[i], single, atol=1e-5)
    nontrivial(batch)


def test_default_category_is_the_prediction_and_logits_are_the_models(deit):
    explanation = VITGradCAM(deit).explain(X2)
    with torch.no_grad():
        logits = deit(X2)
    torch.testing.assert_close(explanation.logits, logits, atol=1e-5, rtol=1e-5)
    assert explanation.targets.tolist() == logits.argmax(-1).tolist()


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_under_no_grad_and_inference_mode(deit, context):
    expected = VITGradCAM(deit)(X2[:1], 5)
    with context():
        got = VITGradCAM(deit)(X2[:1], torch.tensor(5))
    np.testing.assert_allclose(got, expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# (c) the model is handed back unchanged

@pytest.fixture
def user_model(deit):
    """A model in an unusual state: training mode, one frozen block, a user hook, a stored gradient."""
    model = copy.deepcopy(deit).train()
    model.blocks[0].requires_grad_(False)
    model.blocks[2].register_forward_hook(lambda *args: None)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    return model


def test_model_state_is_restored(user_model):
    before = model_state(user_model)
    masks = VITGradCAM(user_model)(X2[:1], 0)
    assert_state_equal(before, model_state(user_model))
    assert user_model.training and user_model.blocks[11].norm1.training
    np.testing.assert_allclose(masks, VITGradCAM(user_model.eval())(X2[:1], 0), atol=1e-6)  # eval inside


def test_model_state_is_restored_when_forward_or_targets_raise(user_model):
    def explode(*args):
        raise RuntimeError("boom in forward")
    handle = user_model.blocks[11].mlp.register_forward_hook(explode)
    before = model_state(user_model)
    with pytest.raises(RuntimeError, match="boom in forward"):
        VITGradCAM(user_model)(X2[:1])
    assert_state_equal(before, model_state(user_model))
    handle.remove()

    before = model_state(user_model)
    with pytest.raises(ValueError, match="1000 classes"):
        VITGradCAM(user_model)(X2[:1], category_index=1000)
    assert_state_equal(before, model_state(user_model))


def test_recorder_restores_state_when_backward_raises(user_model):
    before = model_state(user_model)
    with pytest.raises(RuntimeError):
        with ActivationRecorder(user_model, "blocks.11.norm1") as rec:
            logits = rec.forward(X2[:1])
            rec.gradient(logits, torch.tensor([5, 6, 7]))  # one target too many: gather fails
    assert_state_equal(before, model_state(user_model))


# ---------------------------------------------------------------------------------------------
# (d) token layouts: distilled, registers, no class token, dynamic non-square inputs, conv targets

def test_distilled_model_has_two_prefix_tokens():
    torch.manual_seed(0)
    model = peaky_head(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, depth=3))
    assert model.num_prefix_tokens == 2
    masks = VITGradCAM(model)(X2, [3, 4])
    assert masks.shape == (2, 14, 14)
    np.testing.assert_allclose(masks, plain_gradcam(model, "blocks.2.norm1", X2, [3, 4], 2, (14, 14)),
                               atol=1e-5)


def test_dynamic_image_size_gives_a_non_square_grid():
    torch.manual_seed(0)
    model = peaky_head(timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True, depth=3))
    x = torch.randn(2, 3, 224, 160, generator=torch.Generator().manual_seed(3))
    masks = VITGradCAM(model)(x, [8, 9])
    assert masks.shape == (2, 14, 10)
    np.testing.assert_allclose(masks, plain_gradcam(model, "blocks.2.norm1", x, [8, 9], 1, (14, 10)),
                               atol=1e-5)


@pytest.mark.parametrize("kwargs, prefix", [
    (dict(reg_tokens=4), 5),
    (dict(class_token=False, global_pool="avg"), 0),
])
def test_register_and_gap_models(kwargs, prefix):
    model = small_vit(**kwargs)
    assert model.num_prefix_tokens == prefix
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    masks = VITGradCAM(model)(x, [1, 2, 3])
    assert masks.shape == (3, 4, 4)
    np.testing.assert_allclose(masks, plain_gradcam(model, "blocks.1.norm1", x, [1, 2, 3], prefix, (4, 4)),
                               atol=1e-5)


def test_channels_first_target_layer():
    model = small_vit()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    masks = VITGradCAM(model, target_layer="patch_embed.proj")(x, [0, 1])  # Conv2d: (B, C, 4, 4)
    assert masks.shape == (2, 4, 4)
    store = {}
    ref_model = copy.deepcopy(model)
    def hook(module, inputs, output):
        output.retain_grad()
        store["a"] = output
    ref_model.patch_embed.proj.register_forward_hook(hook)
    ref_model(x)[[0, 1], [0, 1]].sum().backward()
    act, grad = store["a"].detach(), store["a"].grad
    cam = torch.relu((act * grad.mean(dim=(2, 3), keepdim=True)).sum(1))
    np.testing.assert_allclose(masks, (cam / cam.amax(dim=(1, 2), keepdim=True)).numpy(), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# (e) errors

def test_unknown_target_layer_names_candidates(deit):
    with pytest.raises(ValueError, match=r"no module named 'blocks\.11\.norm'.*'blocks\.11\.norm1'"):
        VITGradCAM(deit, target_layer="blocks.11.norm")
    with pytest.raises(ValueError, match="no module named"):
        VITGradCAM(deit, target_layer="")


def test_model_without_norm1_needs_a_target_layer():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    with pytest.raises(ValueError, match="no module named 'norm1'.*target_layer="):
        VITGradCAM(model)


def test_bad_input_and_category(deit):
    explainer = VITGradCAM(deit)
    with pytest.raises(ValueError, match=r"expected an input tensor of shape \(B, 3, 224, 224\), got \(1, 3, 200, 224\)"):
        explainer(torch.randn(1, 3, 200, 224))
    with pytest.raises(ValueError, match="1000 classes"):
        explainer(X2[:1], category_index=[-1])
    with pytest.raises(ValueError, match="3 entries but the batch has 2"):
        explainer(X2, category_index=[1, 2, 3])
