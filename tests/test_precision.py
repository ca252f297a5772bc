"""Other devices give the CPU's maps (skipped where there is no GPU, as in CI)."""
import copy

import numpy as np
import pytest
import torch

from vit_explain import VITAttentionGradRollout, VITAttentionRollout, VITGradWeightedAttention

X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(13))
EXPLAINERS = [
    lambda m: VITAttentionRollout(m, head_fusion="max", discard_ratio=0.9),
    lambda m: VITAttentionGradRollout(m, discard_ratio=0.9),
    lambda m: VITGradWeightedAttention(m),
]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("make", EXPLAINERS)
def test_cuda_maps_equal_cpu_maps(deit_tiny_qkv4, make):
    on_gpu = copy.deepcopy(deit_tiny_qkv4).cuda()
    np.testing.assert_allclose(make(on_gpu)(X.cuda(), 243), make(deit_tiny_qkv4)(X, 243), atol=1e-4)
