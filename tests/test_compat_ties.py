"""compat="vit-explain" breaks ties at the discard cut exactly as the original's topk did.

The original zeroed the int(N*N*ratio) entries torch.topk(largest=False) picked; the default
mode's discard_lowest zeroes every entry tied with the last one instead. The two differ only
when equal values straddle the cut, so each case here is built to have such a tie, and says so.
"""
import numpy as np
import pytest
import timm
import torch

from vit_explain import VITAttentionRollout
from vit_explain.math import compat_discard, compat_gradient_rollout, discard_lowest
from vit_explain.recording import AttentionRecorder


def original_discard(fused, discard_ratio, protect_first):
    """The original's lines, transcribed (in place, batch item 0, as it ran them)."""
    fused = fused.clone()
    flat = fused.view(fused.size(0), -1)
    _, indices = flat.topk(int(flat.size(-1) * discard_ratio), -1, False)
    if protect_first:
        indices = indices[indices != 0]
    flat[0, indices] = 0
    return fused


def original_rollout_product(fused_blocks, discard_ratio, protect_first):
    """The original's product of (F' + I)/2 over the blocks, with its row normalisation
    (divided by the row sums broadcast along the columns: no keepdim)."""
    result = torch.eye(fused_blocks[0].size(-1))
    for fused in fused_blocks:
        fused = fused.clone()  # the original discarded in place; the callers' maps stay as they are
        flat = fused.view(fused.size(0), -1)
        _, indices = flat.topk(int(flat.size(-1) * discard_ratio), -1, False)
        if protect_first:
            indices = indices[indices != 0]
        flat[0, indices] = 0
        identity = torch.eye(fused.size(-1))
        a = (fused + 1.0 * identity) / 2
        a = a / a.sum(dim=-1)
        result = torch.matmul(a, result)
    return result


def tie_at_cut(fused, discard_ratio):
    """True when the last entry discarded equals the first one kept, above zero (ties of zeros
    change nothing)."""
    flat = fused.reshape(-1)
    count = int(flat.numel() * discard_ratio)
    ordered = flat.sort().values
    return bool(ordered[count - 1] == ordered[count] and ordered[count] > 0)


# Five of the nine entries are 0.25; a ratio of 0.5 discards four of them.
TIED = torch.tensor([[[0.50, 0.25, 0.25],
                      [0.25, 0.50, 0.25],
                      [0.25, 0.25, 0.50]]])


@pytest.mark.parametrize("protect_first", [True, False])
def test_compat_discard_is_the_original_topk(protect_first):
    fused = torch.tensor([[[0.25, 0.25, 0.125],
                           [0.25, 0.50, 0.25],
                           [0.25, 0.125, 0.50]]])
    assert tie_at_cut(fused, 0.5)
    out = compat_discard(fused, 0.5, protect_first)
    torch.testing.assert_close(out, original_discard(fused, 0.5, protect_first), rtol=0, atol=0)
    # exactly topk's four picks go (less index 0 when protected): both 0.125s and two of the
    # five tied 0.25s, so at least three 0.25s survive
    assert int((out == 0).sum()) in ((3, 4) if protect_first else (4,))
    assert int((out == 0.125).sum()) == 0 and int((out == 0.25).sum()) >= 3
    # the default rule drops every entry tied at the cut (all 0.25s, index 0 aside when protected)
    default = discard_lowest(fused, 0.5, protect_first)
    assert not bool((default.reshape(-1)[1:] == 0.25).any())


def test_compat_discard_leaves_its_input_alone():
    fused = TIED.clone()
    compat_discard(fused, 0.5, True)
    torch.testing.assert_close(fused, TIED, rtol=0, atol=0)


def test_compat_discard_batch_equals_singles():
    fused = torch.cat([TIED, TIED.flip(-1), TIED.transpose(1, 2) * 0.5])
    out = compat_discard(fused, 0.5, True)
    for row in range(fused.shape[0]):
        torch.testing.assert_close(out[row], compat_discard(fused[row:row + 1], 0.5, True)[0], rtol=0, atol=0)


def test_compat_gradient_rollout_breaks_ties_as_the_original():
    """Two blocks, one head, gradients of ones: each block's (A * G).mean is A, tied at the cut."""
    second = torch.tensor([[[0.50, 0.25, 0.25],
                            [0.125, 0.75, 0.125],
                            [0.25, 0.25, 0.50]]])
    attentions = [TIED.unsqueeze(1), second.unsqueeze(1)]
    gradients = [torch.ones_like(a) for a in attentions]
    assert all(tie_at_cut(a[:, 0], 0.5) for a in attentions)
    row = compat_gradient_rollout(attentions, gradients, 0.5, reverse_blocks=False, scores_gradient=False)
    # the original's gradient rollout: mean fusion, negatives clamped, nothing protected
    fused = [(a * g).mean(dim=1).clamp(min=0) for a, g in zip(attentions, gradients)]
    expected = original_rollout_product(fused, 0.5, protect_first=False)[:, 0]
    torch.testing.assert_close(row, expected, rtol=0, atol=1e-6)
    # with every tied entry dropped the answer differs, so this case can tell the two apart
    dropped = [discard_lowest(f, 0.5, protect_first=False) for f in fused]
    assert not torch.allclose(original_rollout_product(dropped, 0.0, False)[:, 0], expected, atol=1e-4)


@pytest.fixture(scope="module")
def deit_small_case():
    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    torch.manual_seed(1)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad(), AttentionRecorder(model) as rec:  # switches fused attention off
        rec.forward(x)
        attentions = [a.detach().clone() for a in rec.attentions]
    return model, x, attentions


def test_compat_rollout_equals_the_original_on_a_tie(deit_small_case):
    model, x, attentions = deit_small_case
    fused = [a.mean(dim=1) for a in attentions]
    # random-init attention is nearly uniform: some block has equal values at the cut
    assert any(tie_at_cut(f, 0.5) for f in fused)
    result = original_rollout_product(fused, 0.5, protect_first=True)
    expected = result[0, 0, 1:].reshape(14, 14).numpy()
    expected = expected / np.max(expected)
    mask = VITAttentionRollout(model, head_fusion="mean", discard_ratio=0.5, compat="vit-explain")(x)
    np.testing.assert_allclose(mask, expected, rtol=0, atol=1e-6)
    # the default discard rule on the same maps misses the original by more than that
    dropped = [discard_lowest(f, 0.5) for f in fused]
    other = original_rollout_product(dropped, 0.0, protect_first=True)[0, 0, 1:].reshape(14, 14).numpy()
    assert np.abs(other / np.max(other) - expected).max() > 1e-5
