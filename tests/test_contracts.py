"""Contract tests generated from the tables: every method of the method table, on an example
model of every adapter in ADAPTERS, through the API and the command line.

A method or a model family added to its table is covered here without editing a list.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import vit_explain
from tests import image_files as files
from tests.helpers import assert_state_equal, error_lines, model_state, run, tiny
from vit_explain.cli.options import Options
from vit_explain.io.sinks import SINKS
from vit_explain.methods.adapters import ADAPTERS, adapter_for
from vit_explain.methods.base import AttentionExplainer
from vit_explain.methods.table import METHODS

CLASSES = 5  # every adapter's example has 5 classes
X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
CATEGORIES = [0, 3, 1]

# A value each method keyword refuses; a keyword without one here fails test_every_option_has_a_bad_value.
BAD_VALUES = {"head_fusion": "median", "discard_ratio": 1.0, "compat": "v2", "layer": 99, "start_layer": 99,
              "target_layer": "no.such.module"}


@pytest.fixture(scope="module", params=ADAPTERS, ids=lambda adapter: adapter.__name__)
def family(request):
    try:
        model = request.param.example()
    except ImportError as error:  # an optional family whose package is not installed
        pytest.skip(f"{request.param.__name__}: {error}")
    return request.param, model


@pytest.fixture(params=list(METHODS))
def spec(request):
    return METHODS[request.param]


def categories(spec):
    return CATEGORIES if spec.class_specific else None


def target_of(family):
    """What the family's example explains: its classes (None), or 5 prompts or references
    (models without classes), among which CATEGORIES pick as among classes."""
    adapter, _ = family
    return adapter.example_target()


def refused(spec, family) -> bool:
    """A family without token-to-token attention refuses the attention methods; a method refuses
    a family it is not defined on with a ValueError at construction that names the model (any
    other ValueError there is a failure, not a refusal)."""
    adapter, model = family
    if not adapter.token_attention and issubclass(spec.load(), AttentionExplainer):
        return True
    try:
        spec.build(model, Options())
    except ValueError as error:
        return type(model).__name__ in str(error)
    return False


def explainer_or_skip(spec, family):
    adapter, model = family
    if refused(spec, family):
        pytest.skip(f"{adapter.__name__} refuses {spec.name} (test_attention_methods_are_refused_clearly)")
    return spec.build(model, Options())


def test_each_example_is_explained_by_its_own_adapter(family):
    adapter, model = family
    assert type(adapter_for(model)) is adapter


def test_batch_equals_singles(spec, family):
    explainer = explainer_or_skip(spec, family)
    batch = explainer.explain(X, categories(spec), target=target_of(family))
    for i in range(len(X)):
        single = explainer.explain(X[i:i + 1], None if categories(spec) is None else categories(spec)[i],
                                   target=target_of(family))
        torch.testing.assert_close(batch.masks[i], single.masks[0], atol=1e-5, rtol=0)
        assert batch.targets[i] == single.targets[0]
        if batch.head_masks is not None:
            torch.testing.assert_close(batch.head_masks[i], single.head_masks[0], atol=1e-5, rtol=0)


def test_masks_are_finite_maps_scaled_to_one(spec, family):
    explanation = explainer_or_skip(spec, family).explain(X, categories(spec), target=target_of(family))
    masks = explanation.masks
    assert masks.dtype == torch.float32 and masks.ndim == 3 and masks.shape[0] == len(X)
    assert torch.isfinite(masks).all() and masks.min() >= 0
    torch.testing.assert_close(masks.amax(dim=(1, 2)), torch.ones(len(X)))
    if spec.class_specific:
        assert explanation.targets.tolist() == CATEGORIES
    else:
        assert explanation.targets.tolist() == explanation.logits.argmax(-1).tolist()


def test_the_numpy_call_gives_the_masks(spec, family):
    explainer = explainer_or_skip(spec, family)
    masks = explainer(X, categories(spec), target=target_of(family))
    assert isinstance(masks, np.ndarray) and masks.dtype == np.float32 and masks.shape[0] == len(X)
    assert explainer(X[:1], 0, target=target_of(family)).shape == masks.shape[1:]


def test_model_comes_back_as_it_went_in(spec, family):
    _, model = family
    explainer = explainer_or_skip(spec, family)
    model.train()  # a caller's training model goes back to training
    before = model_state(model)
    try:
        explainer.explain(X, categories(spec), target=target_of(family))
        assert_state_equal(before, model_state(model))
        with pytest.raises(ValueError):  # a failure after the forward pass also restores everything
            explainer.explain(X, CLASSES + 1, target=target_of(family))
        assert_state_equal(before, model_state(model))
    finally:
        model.eval()


def test_works_under_no_grad_and_inference_mode(spec, family):
    explainer = explainer_or_skip(spec, family)
    expected = explainer.explain(X, categories(spec), target=target_of(family)).masks
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            torch.testing.assert_close(explainer.explain(X, categories(spec), target=target_of(family)).masks, expected)


def test_bad_parameters_raise_value_error(spec, family):
    _, model = family
    explainer = explainer_or_skip(spec, family)
    for option in spec.options:
        with pytest.raises(ValueError):
            spec.build(model, Options(**{option: BAD_VALUES[option]}))
    for category in (CLASSES, -1, [0, 1]):  # out of range, negative, one per sample for 3 samples
        with pytest.raises(ValueError):
            explainer.explain(X, category, target=target_of(family))
    for x in (X[:, :2], X[0], X.long()):  # wrong channels, no batch axis, not floating point
        with pytest.raises(ValueError):
            explainer.explain(x, target=target_of(family))


def test_attention_methods_are_refused_clearly(spec, family):
    adapter, model = family
    if not refused(spec, family):
        pytest.skip(f"{adapter.__name__} explains {spec.name}")
    with pytest.raises(ValueError, match="windowed attention|no rollout|attention") as error:
        spec.build(model, Options()).explain(X, target=target_of(family))
    assert type(model).__name__ in str(error.value)  # the refusal names the model


def test_every_method_explains_some_family(spec):
    # a method whose construction refused every family would otherwise pass by skipping
    for adapter in ADAPTERS:
        try:
            model = adapter.example()
        except ImportError:
            continue
        if not refused(spec, (adapter, model)):
            return
    pytest.fail(f"every family refuses {spec.name}")


def test_every_option_has_a_bad_value(spec):
    assert set(spec.options) <= set(BAD_VALUES), "add a refused value for the new keyword to BAD_VALUES"


def test_the_table_line_is_complete(spec):
    cls = spec.load()
    assert cls.__name__ == spec.class_name and getattr(vit_explain, spec.class_name) is cls
    assert spec.class_name in vit_explain.__all__
    assert set(spec.extra_outputs) <= set(SINKS)
    assert spec.compat == ("compat" in spec.options)
    for category in (None, 7):
        suffix = spec.suffix(Options(), category)
        assert suffix and "/" not in suffix and " " not in suffix


def test_the_command_writes_every_output_of_the_method(spec, tiny_model_dir, tmp_path, capsys):
    image = files.write_rgb(tmp_path / "a.png", size=(90, 60))
    out = tmp_path / "out"
    args = ["--image_path", image, "--method", spec.name, "--output-dir", out, *tiny(tiny_model_dir)]
    if spec.class_specific:
        args += ["--category_index", 1]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    (entry,) = json.loads((out / "manifest.json").read_text())["images"]
    base = f"a_{spec.suffix(Options(), 1 if spec.class_specific else None)}"
    kinds = ("overlay", "mask") + spec.extra_outputs
    assert list(entry["outputs"]) == list(kinds)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [base + SINKS[kind].ending for kind in kinds] + ["manifest.json"])
    assert cv2.imread(str(out / f"{base}.png")).shape[:2] == (60, 90)
    mask = np.load(out / f"{base}.npy")
    assert mask.shape == (4, 4) and mask.max() == pytest.approx(1.0)
    assert entry["method"] == spec.name
    assert set(entry["parameters"]) == set(spec.options) | ({"category_index"} if spec.class_specific else set())


def test_the_command_writes_only_the_outputs_asked_for(spec, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--method", spec.name,
                       "--outputs", "mask", "--output-dir", out, *tiny(tiny_model_dir))
    assert code == 0, err
    assert sorted(p.suffix for p in out.iterdir()) == [".json", ".npy"]
    (entry,) = json.loads((out / "manifest.json").read_text())["images"]
    assert list(entry["outputs"]) == ["mask"]


def test_an_output_the_method_lacks_is_a_usage_error(tiny_model_dir, tmp_path, capsys):
    without_heads = next(name for name, spec in METHODS.items() if "heads" not in spec.extra_outputs)
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--method", without_heads,
                       "--outputs", "overlay,heads", "--output-dir", tmp_path / "out", *tiny(tiny_model_dir))
    (line,) = error_lines(err)
    assert code == 2 and "--outputs" in line and f"heads is not an output of {without_heads}" in line
    code, _, err = run(capsys, "--image_path", files.write_rgb(tmp_path / "a.png"), "--outputs", "pdf",
                       "--output-dir", tmp_path / "out", *tiny(tiny_model_dir))
    (line,) = error_lines(err)
    assert code == 2 and "unknown output pdf" in line


# How to read back each kind of file a sink may write; a sink with a new ending needs one here.
def animation(path):
    from PIL import Image
    with Image.open(path) as opened:
        return np.asarray(opened.convert("RGB"))


DECODERS = {".png": lambda path: cv2.imread(str(path)), ".jpg": lambda path: cv2.imread(str(path)),
            ".npy": np.load, ".gif": animation, "webp": animation}


@pytest.mark.parametrize("name", list(SINKS))
def test_every_sink_writes_a_file_that_decodes_and_a_rerun_skips_it(name, tiny_model_dir, tmp_path, capsys):
    owners = [m for m, spec in METHODS.items() if name in spec.extra_outputs + spec.optional_outputs]
    method = owners[0] if owners else next(iter(METHODS))
    image, out = files.write_rgb(tmp_path / "a.png", size=(90, 60)), tmp_path / "out"
    args = ["--image_path", image, "--method", method, "--outputs", name, "--output-dir", out,
            "--category_index", 1, *tiny(tiny_model_dir)]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    if getattr(SINKS[name], "table", False):  # a table's rows are the images' record, not manifest entries
        assert_one_row_and_a_rerun_skips_it(out, args, capsys)
        return
    (entry,) = json.loads((out / "manifest.json").read_text())["images"]
    (written,) = entry["outputs"].values()
    assert list(entry["outputs"]) == [name] and written.endswith(SINKS[name].ending)
    decoded = DECODERS[SINKS[name].ending[-4:]](written)
    assert decoded is not None and decoded.size > 0
    assert sorted(p.name for p in out.iterdir()) == sorted([Path(written).name, "manifest.json"])
    code, _, err = run(capsys, *args)
    assert code == 0 and "0 explained, 0 failed (1 skipped" in err


def assert_one_row_and_a_rerun_skips_it(out, args, capsys):
    import pyarrow.parquet as pq
    from vit_explain.io.table import DATASET
    (row,) = pq.read_table(out / DATASET).to_pylist()
    assert row["error"] is None and len(row["mask"]) == row["grid_h"] * row["grid_w"] == 16
    assert sorted(p.name for p in out.iterdir()) == sorted([DATASET, "manifest.json"])
    code, _, err = run(capsys, *args)
    assert code == 0 and "0 explained, 0 failed (1 skipped" in err
    assert len(pq.read_table(out / DATASET)) == 1
