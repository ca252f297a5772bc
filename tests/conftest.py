import copy
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from timm.models import save_for_hf

from tests.helpers import LABELS, peaky

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
    return peaky(copy.deepcopy(deit_tiny))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 32x32, 4x4-patch-grid ViT with 3 named classes, saved the way users save theirs."""
    folder = tmp_path_factory.mktemp("tiny-vit")
    args = {"num_classes": 3, "img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3}
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args)
    with torch.no_grad():  # untrained attention is uniform and would discard to an all-zero map
        model.cls_token.normal_(std=0.5)
    peaky(model)
    save_for_hf(model, folder, model_config={"label_names": LABELS}, model_args=args)
    return folder
