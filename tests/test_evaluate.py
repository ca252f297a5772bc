"""Deletion / insertion and pointing scores, and the `vit-explain evaluate` command."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests import image_files as files
from tests.helpers import error_lines, run, tiny
from vit_explain.math.metrics import (area_under_curve, energy_pointing, patch_order, perturbation_inputs,
                                      pointing_hits, step_masks)
from vit_explain.methods.evaluation import deletion_insertion
from vit_explain.methods.table import METHODS


class TexturedCorner(torch.nn.Module):
    """Class 0's logit is the texture (std) of the top-left quarter: the map that points there is right."""

    def forward(self, x):
        evidence = x[:, :, :8, :8].flatten(1).std(dim=1) * 20 - 2
        return torch.stack([evidence, torch.zeros_like(evidence)], dim=1)


def test_steps_follow_the_relevance_order():
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    assert patch_order(maps).tolist() == [[1, 2, 3, 0]]
    chosen = step_masks(patch_order(maps), 2)
    assert chosen[0].int().tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]]


def test_deletion_and_insertion_inputs():
    image, base = torch.ones(1, 4, 4), torch.zeros(1, 4, 4)
    chosen = torch.tensor([[False, False, False, False], [True, False, False, False]])
    deleted = perturbation_inputs(image, base, chosen, (2, 2), insertion=False)
    inserted = perturbation_inputs(image, base, chosen, (2, 2), insertion=True)
    assert deleted[0].eq(1).all() and deleted[1, 0, :2, :2].eq(0).all() and deleted[1].sum() == 12
    assert inserted[0].eq(0).all() and inserted[1].sum() == 4


def test_area_under_curve_is_normalised():
    assert area_under_curve(torch.full((21,), 0.7)).item() == pytest.approx(0.7)
    assert area_under_curve(torch.linspace(1, 0, 21)).item() == pytest.approx(0.5)


@pytest.mark.parametrize("baseline", ["blur", "mean", "zero"])
def test_a_faithful_map_beats_its_inverse(baseline):
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) + 1
    right = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    wrong = 1 - right
    targets = torch.tensor([0])
    good = deletion_insertion(TexturedCorner(), image, right, targets, steps=4, baseline=baseline)
    bad = deletion_insertion(TexturedCorner(), image, wrong, targets, steps=4, baseline=baseline)
    assert good["deletion"] + 0.1 < bad["deletion"] and good["insertion"] > bad["insertion"] + 0.1
    assert good["deletion_curve"].shape == (1, 5)


def test_pointing_game_and_energy():
    objects = torch.zeros(1, 8, 8, dtype=torch.bool)
    objects[0, :4, :4] = True
    on, off = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    assert pointing_hits(on, objects).tolist() == [True] and pointing_hits(off, objects).tolist() == [False]
    assert energy_pointing(torch.ones(1, 2, 2), objects).item() == pytest.approx(0.25)
    assert energy_pointing(torch.zeros(1, 2, 2), objects).item() == 0


def test_evaluate_command_writes_table_csv_and_json(tiny_model_dir, tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for seed in range(3):
        files.write_rgb(images / f"s{seed}.png", size=(40, 40), seed=seed)
        Image.fromarray(np.pad(np.full((20, 20), 255, np.uint8), ((0, 20), (0, 20)))).save(masks / f"s{seed}.png")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "evaluate", "--image_path", images, "--masks", masks, "--output-dir", out,
                            "--methods", "rollout,grad-rollout", "--steps", 5, *tiny(tiny_model_dir))
    assert code == 0, err
    header, *rows = stdout.strip().splitlines()
    assert "deletion AUC" in header and "pointing game" in header
    assert [row.split()[0] for row in rows] == ["rollout", "grad-rollout", "random", "uniform"]
    with open(out / "evaluation.csv") as file:
        records = list(csv.DictReader(file))
    assert len(records) == 3 * 4 and all(0 <= float(r["deletion_auc"]) <= 1 for r in records)
    summary = json.loads((out / "evaluation.json").read_text())["summary"]
    assert {e["method"] for e in summary} == {"rollout", "grad-rollout", "random", "uniform"}
    assert all(0 <= e["pointing_game"] <= 1 and 0 <= e["energy_pointing"] <= 1 for e in summary)


def test_evaluate_rejects_unknown_methods(tiny_model_dir, tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", "--image_path", files.write_rgb(tmp_path), "--methods", "rollout,magic",
                       *tiny(tiny_model_dir))
    assert code == 2 and error_lines(err) == [
        "vit-explain: Invalid value for --methods: unknown method magic; choose from "
        f"{', '.join(METHODS)} (see vit-explain evaluate --help)"]


def test_a_layer_the_model_lacks_is_a_usage_error(tiny_model_dir, tmp_path, capsys):
    image = files.write_rgb(tmp_path / "a.png")
    code, _, err = run(capsys, "evaluate", "--image_path", image, "--methods", "raw-attention", "--layer", 9,
                       "--output-dir", tmp_path / "out", *tiny(tiny_model_dir))
    (line,) = error_lines(err)
    assert code == 2 and "layer 9 is out of range: the model has 2 attention blocks" in line
