"""A multi-method run shares one model run between the methods that record alike: the masks are
bit for bit those of each method alone, and the model runs once per batch."""
import pytest
import torch

from tests.helpers import assert_state_equal, counting_runs, model_state
from vit_explain.cli.options import Options
from vit_explain.methods.adapters import TimmAdapter
from vit_explain.methods.sharing import share_recordings, sharing_key
from vit_explain.methods.table import METHODS

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(11))


def built(model, names, **options):
    return [METHODS[name].build(model, Options(head_fusion="max", discard_ratio=0.5, **options)) for name in names]


@pytest.mark.parametrize("names, category", [
    (["rollout", "raw-attention", "flow"], None),
    (["grad-rollout", "chefer", "gradsam"], [1, 0, 3]),
])
def test_shared_masks_equal_each_method_alone(names, category, monkeypatch):
    model = TimmAdapter.example()
    alone = [e.explain(X, category, per_layer=True) for e in built(model, names)]
    explainers = built(model, names)
    groups = share_recordings(explainers)
    assert len(groups) == 1
    before = model_state(model)
    with counting_runs(model, monkeypatch) as calls:
        shared = [e.explain(X, category, per_layer=True) for e in explainers]
    assert calls["forward"] == 1 and groups[0].runs == 1
    for one, other in zip(alone, shared):
        assert torch.equal(one.masks, other.masks) and torch.equal(one.targets, other.targets)
        for field in ("head_masks", "layer_masks"):
            a, b = getattr(one, field), getattr(other, field)
            assert (a is None and b is None) or torch.equal(a, b)
    assert_state_equal(before, model_state(model))


def test_compat_rollout_records_apart_and_stays_exact():
    model = TimmAdapter.example()
    alone = built(model, ["rollout"], compat="vit-explain")[0].explain(X).masks
    compat = built(model, ["rollout"], compat="vit-explain")
    share_recordings(built(model, ["rollout", "raw-attention"]) + compat)  # compat is a group of its own
    assert compat[0].shared is None
    assert torch.equal(compat[0].explain(X).masks, alone)


def test_a_new_batch_or_class_runs_the_model_again():
    model = TimmAdapter.example()
    explainers = built(model, ["grad-rollout", "chefer"])
    (group,) = share_recordings(explainers)
    for explainer in explainers:
        explainer.explain(X, 1)
    assert group.runs == 1
    explainers[0].explain(X, 2)        # another class
    explainers[1].explain(X + 1e-3, 2)  # another batch
    assert group.runs == 3
    alone = built(model, ["chefer"])[0].explain(X + 1e-3, 2).masks
    assert torch.equal(explainers[1].explain(X + 1e-3, 2).masks, alone) and group.runs == 3


def test_methods_that_record_their_own_way_do_not_share():
    model = TimmAdapter.example()
    explainers = built(model, ["rollout", "grad-rollout", "agcam", "legrad", "cp-lrp", "grad-cam"])
    assert share_recordings(explainers) == []  # one of each kind: no group of two
    assert [sharing_key(e) is not None for e in explainers] == [True, True, False, False, False, False]
