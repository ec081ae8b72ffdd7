"""Outputs as transactions (colab_utils.outputs) and what `predict` does with them: a run that reads nothing,
fails midway, is interrupted or cannot write never wipes or mixes with the last good result, and every skipped
file is listed with its reason. The run is the committed tiny memory bank (assets/old_runs)."""

from __future__ import annotations

import csv
import errno
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colab_utils import inspector as inspector_module
from colab_utils.cli import main as cli
from colab_utils.inspector import Inspector
from colab_utils.outputs import STAGING_PREFIX, OutputNotWritable, StagedOutput

RUN = Path(__file__).parent.parent / "assets" / "old_runs" / "memory_bank"


@pytest.fixture()
def photos(sample_root, tmp_path) -> Path:
    """Five sample test images and one corrupt file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, src in enumerate(sorted((sample_root / "sample" / "test").rglob("*.png"))[:5]):
        shutil.copy(src, folder / f"{i:02d}.png")
    (folder / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    return folder


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_staged_output_replaces_all_entries_together_or_none(tmp_path):
    out = tmp_path / "out"
    with StagedOutput(out, ("a.csv", "pics")) as stage:
        (stage.path / "a.csv").write_text("first")
        (stage.path / "pics").mkdir()
        (stage.path / "pics" / "1.png").write_text("x")
        stage.publish()
    assert (out / "a.csv").read_text() == "first" and (out / "pics" / "1.png").exists()
    with StagedOutput(out, ("a.csv", "pics")) as stage:  # left without publish: nothing changes
        (stage.path / "a.csv").write_text("second")
    assert (out / "a.csv").read_text() == "first" and not list(out.glob(STAGING_PREFIX + "*"))
    with StagedOutput(out, ("a.csv", "pics")) as stage:  # publish replaces every name; pics/ was not staged
        (stage.path / "a.csv").write_text("third")
        stage.publish()
    assert (out / "a.csv").read_text() == "third" and not (out / "pics").exists()


def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, photos, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    scored = []
    monkeypatch.setattr(Inspector, "score_batch", lambda self, x: scored.append(1))
    with pytest.raises(OutputNotWritable, match="cannot write to .*a_file/out.*choose a writable output folder"):
        Inspector.load(RUN, "cpu").predict(photos, out=blocker / "out", progress=False, log=lambda m: None)
    assert not scored


def test_skipped_files_are_listed_next_to_the_verdicts(tmp_path, photos):
    report = Inspector.load(RUN, "cpu").predict(photos, out=tmp_path / "out", progress=False, log=lambda m: None)
    assert len(report.predictions) == 5 and report.csv == tmp_path / "out" / "predictions.csv"
    rows = list(csv.DictReader(report.skipped_csv.open()))
    assert [Path(r["path"]).name for r in rows] == ["zz_corrupt.png"] and "cannot read image" in rows[0]["reason"]
    assert not list((tmp_path / "out").glob(STAGING_PREFIX + "*"))


def test_a_run_that_reads_nothing_keeps_the_previous_result(tmp_path, photos, capsys):
    out = tmp_path / "out"
    Inspector.load(RUN, "cpu").predict(photos, out=out, progress=False, log=lambda m: None)
    before = _snapshot(out)
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "broken.png").write_bytes(b"garbage")
    code = cli(["predict", "--run", str(RUN), "--images", str(only_bad), "--out", str(out), "--device", "cpu"])
    assert code == 2 and "previous results in" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_an_interrupted_run_leaves_the_previous_result_whole(tmp_path, photos, monkeypatch):
    out = tmp_path / "out"
    inspector = Inspector.load(RUN, "cpu")
    inspector.predict(photos, out=out, batch_size=2, progress=False, log=lambda m: None)
    before = _snapshot(out)
    calls = []
    real = Inspector.score_batch

    def interrupted(self, x):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(Inspector, "score_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        inspector.predict(photos, out=out, batch_size=2, progress=False, log=lambda m: None)
    assert _snapshot(out) == before and not list(out.glob(STAGING_PREFIX + "*"))


def test_a_write_failure_keeps_what_was_finished_and_says_where(tmp_path, photos, monkeypatch):
    out = tmp_path / "out"
    inspector = Inspector.load(RUN, "cpu")
    inspector.predict(photos, out=out, progress=False, log=lambda m: None)
    before = _snapshot(out)
    written = []
    real = inspector_module._write_png

    def disk_full(array: np.ndarray, path: str) -> None:
        if len(written) == 6:  # three images' overlay and mask, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        real(array, path)

    monkeypatch.setattr(inspector_module, "_write_png", disk_full)
    with pytest.raises(OSError, match=r"failed after 3 of 6 images .*No space left.*finished ones are in .*unfinished-"):
        inspector.predict(photos, out=out, progress=False, log=lambda m: None)
    assert {k: v for k, v in _snapshot(out).items() if not k.startswith("unfinished-")} == before
    kept = next(out.glob("unfinished-*"))
    rows = list(csv.DictReader((kept / "predictions.csv").open()))
    assert len(rows) == 3 and len(list((kept / "overlays").glob("*.png"))) == 3
    assert Image.open(next((kept / "masks").glob("*.png"))).mode == "L"
