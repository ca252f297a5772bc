"""`vit-explain evaluate` draws its curves: evaluation_curves.json and .png beside the CSV and
JSON, which stay as they were."""
import json

import cv2
import numpy as np
import pytest
import torch

from tests import image_files as files
from tests.helpers import run, tiny
from vit_explain.math.metrics import area_under_curve


def test_evaluate_writes_the_mean_curves_and_their_plot(tiny_model_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(2):
        files.write_rgb(images / f"s{seed}.png", size=(40, 40), seed=seed)
    out = tmp_path / "out"
    code, _, err = run(capsys, "evaluate", "--image_path", images, "--output-dir", out,
                       "--methods", "rollout,chefer", "--steps", 5, *tiny(tiny_model_dir))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.csv", "evaluation.json", "evaluation_curves.json",
                                                     "evaluation_curves.png"]
    document = json.loads((out / "evaluation.json").read_text())
    assert set(document) == {"vit_explain", "torch", "steps", "baseline", "summary", "images"}  # as before
    curves = json.loads((out / "evaluation_curves.json").read_text())
    assert curves["x"] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0] and curves["steps"] == 5
    assert list(curves["methods"]) == ["rollout", "chefer", "random", "uniform"]
    summary = {entry["method"]: entry for entry in document["summary"]}
    for name, curve in curves["methods"].items():
        assert curve["images"] == 2 and len(curve["deletion"]) == len(curve["insertion"]) == 6
        for kind in ("deletion", "insertion"):  # the AUC of the mean curve is the mean AUC
            auc = area_under_curve(torch.tensor(curve[kind], dtype=torch.float64)).item()
            assert auc == pytest.approx(summary[name][f"{kind}_auc"], abs=1e-5)
    plot = cv2.imread(str(out / "evaluation_curves.png"))
    assert plot is not None and plot.shape[1] > 800 and len(np.unique(plot.reshape(-1, 3), axis=0)) > 50


def test_a_folder_where_the_curves_go_is_refused_first(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "evaluation_curves.png").mkdir(parents=True)
    code, _, err = run(capsys, "evaluate", "--image_path", files.write_rgb(tmp_path / "a.png"), "--output-dir", out,
                       "--methods", "rollout", "--steps", 2, *tiny(tiny_model_dir))
    assert code == 5 and "evaluation_curves.png" in err
