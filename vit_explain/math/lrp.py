"""LRP for transformers as gradient x input with a modified backward (CP-LRP and AttnLRP).

Layer-wise relevance propagation written as a gradient: the relevance of an activation a is
a * g, where g is the gradient the modified backward brings to a. Each rule below keeps the
forward value of the layer it replaces bit for bit and changes only what its backward passes on,
so that a * g obeys the LRP rule of that layer (the "gradient x input" form of LRP, Ali et al.
2022, Achtibat et al. 2024). The rules were written from the papers' definitions:

* LayerNorm, identity rule: y = (x - mean(x)) / sd(x) * w + b with the standard deviation held
  constant: the backward is g_x = (h - mean(h)) / sd, h = g * w. A linear map without offset, so
  x * g_x sums to (y - b) * g: conservative (`layer_norm_identity`).
* Elementwise activations (GELU), identity rule: relevance passes through unchanged,
  x * g_x = f(x) * g, i.e. g_x = g * f(x) / x (`activation_identity`; at x = 0 the limit f'(0)).
* Attention, CP-LRP (Ali et al., ICML 2022): the queries and keys are detached, so the attention
  weights are constants and out = A v is linear in the values: relevance flows through V only.
  That needs no function here (the recording detaches them).
* Attention, AttnLRP (Achtibat et al., ICML 2024): the uniform rule on the two bilinear products
  (q k^T and A v) halves the gradient to each factor; the softmax keeps its gradient (its LRP rule
  is its gradient x input). Scaled onto the packed projection: q and k get 1/4, v 1/2
  (`scaled_gradient`).
* L2 normalisation (the cosine similarity of CLIP-family scores), identity rule: y = x / ||x||
  with the norm held constant, as LayerNorm's standard deviation: g_x = g / ||x||, so x * g_x
  sums to y * g (`l2_normalize_identity`). The true gradient cannot conserve anything here: a
  cosine similarity is unchanged when x is scaled, so x . ds/dx = 0 (Euler), and gradient x input
  would hand the input a total relevance of zero whatever the score.
* Linear layers and the patch embedding: plain gradient (LRP-0), or the generalised gamma rule
  (`gamma_rule`): an output z_j > 0 shares its relevance among the contributions x_i w_ij in
  proportion to x_i w_ij + gamma (x_i w_ij)^+, an output z_j < 0 in proportion to
  x_i w_ij + gamma (x_i w_ij)^-, where (x w)^+ = x^+ w^+ + x^- w^- and (x w)^- = x^+ w^- + x^- w^+
  (the signed-input form of Montavon et al.'s gamma rule, as AttnLRP uses it). The bias's share
  of z_j keeps its relevance, as in LRP-0.

Without biases (and with the classifier's constant tokens zero) every rule is conservative, so the
input relevance sums to the explained logit (tests/test_lrp.py measures it).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


class _ModifiedBackward(torch.autograd.Function):
    """forward(output, source, rule, *saved) -> output's values; backward: rule(g, *saved) to source."""

    @staticmethod
    def forward(ctx, output, source, rule, *saved):
        ctx.rule = rule
        ctx.source_dtype = source.dtype
        ctx.save_for_backward(*saved)
        return output

    @staticmethod
    def backward(ctx, grad):
        source_grad = ctx.rule(grad, *ctx.saved_tensors).to(ctx.source_dtype)
        return (None, source_grad, None) + (None,) * len(ctx.saved_tensors)


def with_rule(output: torch.Tensor, source: torch.Tensor, rule: Callable, *saved: torch.Tensor) -> torch.Tensor:
    """A tensor with output's values whose backward sends rule(g, *saved) to source (and nothing
    along output's own graph, which is dropped)."""
    return _ModifiedBackward.apply(output.detach(), source, rule, *saved)


def _layer_norm_backward(grad, weight, sd):
    h = grad if weight is None else grad * weight
    return (h - h.mean(dim=-1, keepdim=True)) / sd


def layer_norm_identity(x: torch.Tensor, output: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """output (= LayerNorm(x) over the last axis) with the identity rule's backward: the standard
    deviation sqrt(var(x) + eps) held constant, the mean differentiated."""
    dtype = torch.promote_types(x.dtype, torch.float32)  # half precision computes in float32
    with torch.no_grad():
        sd = torch.sqrt(x.to(dtype).var(dim=-1, unbiased=False, keepdim=True) + eps)
        if weight is not None:
            weight = weight.detach().to(dtype)
    if weight is None:
        return with_rule(output, x, lambda g, s: _layer_norm_backward(g.to(s.dtype), None, s), sd)
    return with_rule(output, x, lambda g, w, s: _layer_norm_backward(g.to(s.dtype), w, s), weight, sd)


def l2_normalize_identity(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """F.normalize(x, dim) with the identity rule's backward: the norm max(||x||, eps) held constant."""
    output = F.normalize(x, dim=dim, eps=eps)
    with torch.no_grad():
        norm = x.norm(dim=dim, keepdim=True).clamp(min=eps)
    return with_rule(output, x, lambda g, n: g / n, norm)


def activation_identity(x: torch.Tensor, output: torch.Tensor, at_zero: float = 0.5) -> torch.Tensor:
    """output (= f(x) elementwise) with the identity rule's backward g * f(x) / x; at x = 0 the
    ratio is at_zero (GELU's limit f'(0) = 1/2; what it is changes no relevance, as x * g = 0)."""
    with torch.no_grad():
        ratio = torch.where(x != 0, output / torch.where(x != 0, x, torch.ones_like(x)), torch.full_like(x, at_zero))
    return with_rule(output, x, lambda g, r: g * r, ratio)


def scaled_gradient(output: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """output with its gradient multiplied by scales along the last axis (broadcast)."""
    return with_rule(output, output, lambda g, s: g * s, scales.to(output.dtype))


def gamma_rule(x: torch.Tensor, output: torch.Tensor, weight: torch.Tensor, gamma: float,
               op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """output (= op(x, weight) + bias, with x on the graph) with the gamma rule's backward.

    op(x, w) is the layer's linear map without its bias (F.linear, a convolution). With
    P = op(x^+, w^+) + op(x^-, w^-) >= 0 and N = op(x^+, w^-) + op(x^-, w^+) <= 0, the
    denominator D = z + gamma * (P where z > 0, else N) has |D| >= |z|; the output's relevance
    R = z * g is shared in proportion to D's terms: g_x = dD/dx^T (g * z / D). Forward values
    are output's exactly. gamma = 0 is the plain gradient (LRP-0)."""
    if gamma == 0:
        return output
    w = weight.detach()
    positive, negative = x.clamp(min=0), x.clamp(max=0)
    w_positive, w_negative = w.clamp(min=0), w.clamp(max=0)
    boost = torch.where(output > 0,
                        op(positive, w_positive) + op(negative, w_negative),
                        op(positive, w_negative) + op(negative, w_positive))
    denominator = output + gamma * boost
    with torch.no_grad():
        share = torch.where(denominator != 0, output / torch.where(denominator != 0, denominator,
                                                                   torch.ones_like(denominator)),
                            torch.zeros_like(output))
    # values: output's (the added term is exactly zero); gradient: share * dD/dx
    return output.detach() + (denominator - denominator.detach()) * share


def linear_op(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x, weight)


def pixel_relevance(x: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) input and its modified gradient -> (B, H, W) relevance: sum over channels of x * g."""
    return (x * gradient).sum(dim=1)


def patch_sums(pixels: torch.Tensor, grid: tuple[int, int], patch: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) pixel relevance -> (B, gh, gw): the sum over each patch's pixels. Pixels beyond the
    grid (an input not a multiple of the patch, cut off by the patch embedding) are left out; a
    grid larger than the input (a padding patch embedding) gets zeros for the padding."""
    (gh, gw), (ph, pw) = grid, patch
    height, width = gh * ph, gw * pw
    pixels = pixels[:, :height, :width]
    pad_h, pad_w = height - pixels.shape[1], width - pixels.shape[2]
    if pad_h or pad_w:
        pixels = F.pad(pixels, (0, pad_w, 0, pad_h))
    return pixels.reshape(pixels.shape[0], gh, ph, gw, pw).sum(dim=(2, 4))
