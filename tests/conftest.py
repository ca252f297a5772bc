import copy
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

# The oracle was recorded with 2 threads; gradient masks move by ~1e-6 with other counts.
torch.set_num_threads(2)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def oracle():
    return np.load(DATA / "vit_explain_oracle.npz")


def seeded_deit_tiny():
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()


@pytest.fixture(scope="session")
def deit_tiny():
    return seeded_deit_tiny()


@pytest.fixture(scope="session")
def deit_tiny_qkv4(deit_tiny):
    """Random-init attention is nearly uniform; scaling qkv makes the maps peaky."""
    model = copy.deepcopy(deit_tiny)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(4)
    return model


def model_state(model):
    """Everything an explainer must hand back unchanged."""
    return {
        "training": [m.training for m in model.modules()],
        "fused": [getattr(m, "fused_attn", None) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for m in model.modules()],
    }


def assert_state_equal(before, after):
    for key in before:
        if key == "grads":
            assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before[key], after[key]))
        else:
            assert before[key] == after[key], key
