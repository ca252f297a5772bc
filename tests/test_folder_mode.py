"""Folder mode when things go wrong half-way: one image's outputs cannot be written, or the
user interrupts. Outputs are written on background threads; none may be lost either way."""
import json
import threading
import time

import numpy as np
import pytest

from tests import image_files as files
from tests.helpers import error_lines, run, tiny
from vit_explain.io.writer import BackgroundWriter
from vit_explain.methods.base import AttentionExplainer

NAME = "_attention_rollout_0.900_max"


def folder_of(tmp_path, count):
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(count):
        files.write_rgb(folder / f"img{seed}.png", seed=seed)
    return folder


def test_an_unwritable_output_fails_that_image_only(tiny_model_dir, tmp_path, capsys):
    folder, out = folder_of(tmp_path, 5), tmp_path / "out"
    (out / f"img2{NAME}.png").mkdir(parents=True)  # a folder where the overlay should go
    code, _, err = run(capsys, "--image_path", folder, "--output-dir", out, "--batch-size", 2,
                       *tiny(tiny_model_dir))
    lines = error_lines(err)
    assert code == 1 and lines[-1] == "4 explained, 1 failed"
    assert len(lines) == 2 and "img2.png: cannot write outputs" in lines[0]
    entries = {e["input"]: e for e in json.loads((out / "manifest.json").read_text())["images"]}
    assert [entries[str(folder / f"img{i}.png")]["status"] for i in range(5)] == [
        "explained", "explained", "failed", "explained", "explained"]
    for i in (0, 1, 3, 4):
        assert np.load(out / f"img{i}{NAME}.npy").shape == (4, 4)
    assert not list(out.rglob("*.part"))


def test_an_interrupt_keeps_every_image_already_explained(tiny_model_dir, tmp_path, capsys, monkeypatch):
    folder, out = folder_of(tmp_path, 6), tmp_path / "out"
    explain, calls = AttentionExplainer.explain, []

    def interrupted_on_the_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return explain(self, *args, **kwargs)

    monkeypatch.setattr(AttentionExplainer, "explain", interrupted_on_the_second_batch)
    code, _, err = run(capsys, "--image_path", folder, "--output-dir", out, "--batch-size", 3,
                       "--workers", 0, *tiny(tiny_model_dir))
    assert code == 130 and error_lines(err)[-1] == "vit-explain: interrupted"
    images = json.loads((out / "manifest.json").read_text())["images"]
    assert [(e["input"], e["status"]) for e in images] == [(str(folder / f"img{i}.png"), "explained")
                                                           for i in range(3)]
    assert sorted(p.name for p in out.glob("*.png")) == [f"img{i}{NAME}.png" for i in range(3)]
    monkeypatch.undo()  # a re-run finishes the rest and skips what was done
    code, _, err = run(capsys, "--image_path", folder, "--output-dir", out, *tiny(tiny_model_dir))
    assert code == 0 and "3 explained, 0 failed (3 skipped" in err


def test_writer_waits_for_every_job_before_reporting_a_failure():
    start, done = threading.Event(), []

    def job(index):
        start.wait()
        if index == 1:
            raise RuntimeError("job 1 failed")
        time.sleep(0.02)
        done.append(index)

    writer = BackgroundWriter(threads=2, pending=10)
    for index in range(6):
        writer.submit(job, index)
    start.set()
    with pytest.raises(RuntimeError, match="job 1 failed"):
        writer.close()
    assert sorted(done) == [0, 2, 3, 4, 5]


def test_writer_reports_a_failed_job_at_the_next_submit():
    writer = BackgroundWriter(threads=1, pending=1)  # the second submit waits for the first job
    writer.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        writer.submit(lambda: None)
    writer.close()
