"""A finished run, loaded: checkpoints written by older code keep loading and score as they did, and a run of a
retired family is refused with the reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from colab_utils import checkpoint as ckpt
from colab_utils.config import ConfigError
from colab_utils.data import load_split
from colab_utils.runs import BEST, TrainedRun
from colab_utils.scoring import anomaly_maps, image_scores

OLD_RUNS = Path(__file__).parent.parent / "assets" / "old_runs"


@pytest.mark.parametrize("family", ["memory_bank", "unet"])
def test_an_old_checkpoint_loads_and_scores_as_it_did(family, sample_root):
    run = TrainedRun.load(OLD_RUNS / family, "cpu")
    assert run.config.mode == run.family.name == family
    assert "model" not in ckpt.load_checkpoint(OLD_RUNS / family / BEST)["config"]  # written in the old flat format
    expected = json.loads((OLD_RUNS / family / "expected.json").read_text())
    test = load_split(sample_root, "sample", "test", run.config.work_size, run.config.channels)
    by_path = {Path(p).relative_to(sample_root).as_posix(): i for i, p in enumerate(test.paths)}
    x = test.float_images([by_path[p] for p in expected["test_images"]])
    with torch.no_grad():
        out = anomaly_maps(run.model, x, run.config)
    torch.testing.assert_close(image_scores(out.maps, run.config), torch.tensor(expected["scores"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.maps.sum(dim=(1, 2, 3)), torch.tensor(expected["map_sums"]), rtol=1e-4, atol=1e-3)
    assert run.image_threshold > 0 and run.pixel_threshold > 0


def _rewritten(tmp_path: Path, **changes) -> Path:
    """The old U-Net fixture with its saved config changed (as a checkpoint of a retired option would be)."""
    state = ckpt.load_checkpoint(OLD_RUNS / "unet" / BEST)
    state["config"].update(changes)
    folder = tmp_path / "run"
    folder.mkdir(parents=True)
    ckpt.save_checkpoint(folder / BEST, state)
    return folder


def test_a_run_of_a_retired_family_or_option_says_why(tmp_path):
    with pytest.raises(ConfigError, match="mode 'feature'.*retired.*87.1 against 97.6"):
        TrainedRun.load(_rewritten(tmp_path / "a", mode="feature"), "cpu")
    with pytest.raises(ConfigError, match="discriminative head.*retired"):
        TrainedRun.load(_rewritten(tmp_path / "b", discriminative_head=True), "cpu")


def test_missing_or_unfinished_runs_say_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TrainedRun.load(tmp_path / "nope")
    (tmp_path / "run").mkdir()
    shutil.copy(OLD_RUNS / "unet" / BEST, tmp_path / "run" / "last.pt")
    with pytest.raises(FileNotFoundError, match="did not finish"):
        TrainedRun.load(tmp_path / "run")


def test_test_labels_cannot_reach_the_default_thresholds(sample_root):
    """The same run evaluated on the same images with labels and masks scrambled reports the same thresholds."""
    import dataclasses

    from colab_utils.evaluate import evaluate

    test = load_split(sample_root, "sample", "test", 64, 3)
    scrambled = dataclasses.replace(test, labels=1 - test.labels, masks=test.masks.flip(-1))
    a = evaluate(OLD_RUNS / "memory_bank", test_set=test, progress=False)
    b = evaluate(OLD_RUNS / "memory_bank", test_set=scrambled, progress=False)
    for key in ("image_default", "pixel_default"):
        assert a.thresholds[key] == b.thresholds[key]
    assert a.metrics["image_auroc"] != b.metrics["image_auroc"]  # the labels did change what was measured
