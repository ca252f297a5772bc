"""The Python API refuses what it cannot explain with a ValueError, whatever the type of the bad
value: documented parameters of every method, and inputs holding NaN or infinite values (which
would come back as NaN masks without a word)."""
import inspect
import math

import numpy as np
import pytest
import torch

from tests.helpers import assert_state_equal, model_state
from vit_explain.methods.adapters import TimmAdapter
from vit_explain.methods.base import AttentionExplainer
from vit_explain.methods.table import METHODS

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))

# Refused values of every type for each documented keyword (None is the default of target_layer
# and compat, so it is refused only where it is not).
BAD = {
    "head_fusion": [None, 1, b"max", ["max"], np.array(["max"]), "MAX"],
    "discard_ratio": [None, "0.5", True, math.nan, math.inf, -0.1, 1.0, [0.5], torch.tensor(0.5)],
    "compat": ["2020", 1, ["vit-explain"]],
    "layer": [None, 1.5, "1", True, 99, -99],
    "target_layer": [5, [], "", "no.such.module"],
}
BAD_CATEGORIES = [2.0, True, "1", b"1", [1.5, 2, 0], torch.tensor([1.0, 2.0, 0.0]), [None, 1, 0], {1: 2},
                  np.float64(1.0), torch.tensor([True, False, True]), np.array([0.5, 1, 2]), object()]
GOOD_CATEGORIES = [1, np.int64(1), torch.tensor(1), np.array(1), [0, 1, 2], (0, 1, 2), range(3),
                   torch.tensor([0, 1, 2]), np.array([0, 1, 2], dtype=np.int32), torch.tensor([[0], [1], [2]])]


@pytest.fixture(scope="module")
def model():
    return TimmAdapter.example()


def keyword_cases():
    for spec in METHODS.values():
        for keyword in spec.options:
            for value in BAD.get(keyword, []):
                yield pytest.param(spec, keyword, value, id=f"{spec.name}-{keyword}={value!r}")


@pytest.mark.parametrize("spec,keyword,value", list(keyword_cases()))
def test_a_bad_keyword_raises_value_error_whatever_its_type(model, spec, keyword, value):
    before = model_state(model)
    with pytest.raises(ValueError):
        spec.load()(model, **{keyword: value})
    assert_state_equal(before, model_state(model))


def attention_methods():
    return [pytest.param(spec, id=spec.name) for spec in METHODS.values()
            if issubclass(spec.load(), AttentionExplainer)
            and "attention_layer_name" in inspect.signature(spec.load()).parameters]


@pytest.mark.parametrize("value", [
    "", "no_such_module",
    None, 5,
])
@pytest.mark.parametrize("spec", attention_methods())
def test_a_bad_attention_layer_name_raises_value_error(model, spec, value):
    with pytest.raises(ValueError):
        spec.load()(model, attention_layer_name=value)


def test_compat_as_an_array_names_compat(model):
    with pytest.raises(ValueError, match="compat"):
        METHODS["rollout"].load()(model, compat=np.array([1, 2]))


def class_specific():
    return [pytest.param(spec, id=spec.name) for spec in METHODS.values() if spec.class_specific]


@pytest.mark.parametrize("category", BAD_CATEGORIES, ids=repr)
@pytest.mark.parametrize("spec", class_specific())
def test_a_category_that_is_not_integers_raises_value_error(model, spec, category):
    """A float is refused even when whole (2.0): the class is an index, and a float there is most
    likely a probability or a score passed by mistake. A bool is refused too: True is not a class."""
    explainer = spec.load()(model)
    before = model_state(model)
    with pytest.raises(ValueError, match="category_index"):
        explainer.explain(X, category)
    assert_state_equal(before, model_state(model))


@pytest.mark.parametrize("category", GOOD_CATEGORIES, ids=repr)
def test_integer_categories_of_every_kind_are_taken(model, category):
    explainer = METHODS["grad-rollout"].load()(model)
    expected = torch.as_tensor(np.asarray(category)).long().flatten()
    assert explainer.explain(X, category).targets.tolist() == expected.expand(3).tolist()


@pytest.mark.parametrize("value", [np.float32(0.5), 0, 0.0, np.float64(0.25)], ids=repr)
def test_discard_ratios_of_every_real_type_are_taken(model, value):
    explainer = METHODS["rollout"].load()(model, discard_ratio=value)
    assert explainer.discard_ratio == float(value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("spec", [pytest.param(spec, id=spec.name) for spec in METHODS.values()])
def test_an_input_with_a_nan_or_inf_pixel_is_refused(model, spec, bad):
    x = X.clone()
    x[1, 2, 5, 7] = bad
    explainer = spec.load()(model)
    before = model_state(model)
    with pytest.raises(ValueError, match=r"the input holds 1 NaN or infinite values \(of 9216\)"):
        explainer.explain(x)
    assert_state_equal(before, model_state(model))


def test_an_input_beyond_the_models_dtype_is_refused(model):
    """1e5 is finite in float32 but infinite once cast to a float16 model's dtype."""
    half = TimmAdapter.example().half()
    with pytest.raises(ValueError, match=r"beyond the range of the model's dtype torch.float16 \(largest 65504\)"):
        METHODS["rollout"].load()(half).explain(X * 1e5)
