"""The command line on faults: an invalid number names its flag and range before any work starts, and Ctrl-C
ends in one line that says how to resume, not a traceback (COLAB_UTILS_DEBUG=1 shows the traceback)."""

from __future__ import annotations

import pytest

from colab_utils import cli


@pytest.mark.parametrize("flag,value,expected", [
    ("--batch-size", "0", "argument --batch-size: must be at least 1, got 0"),
    ("--batch-size", "-4", "argument --batch-size: must be at least 1, got -4"),
    ("--batch-size", "eight", "argument --batch-size: must be a whole number of at least 1, got 'eight'"),
])  # fmt: skip
def test_predict_refuses_a_bad_batch_size_by_name(tmp_path, capsys, flag, value, expected):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", "--run", str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path / "o"),
                  flag, value])  # fmt: skip
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size"])
def test_train_refuses_zero_by_name(tmp_path, capsys, flag):
    with pytest.raises(SystemExit):
        cli.main(["train", "--data-root", str(tmp_path), "--category", "x", "--out", str(tmp_path), flag, "0"])
    assert f"argument {flag}: must be at least 1, got 0" in capsys.readouterr().err


def test_ctrl_c_ends_in_one_line_that_says_how_to_resume(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_train", interrupted)
    code = cli.main(["train", "--data-root", "d", "--category", "bottle", "--out", "runs"])
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    assert err.strip() == "interrupted (Ctrl-C): run the same command again to resume from the last checkpoint"
    monkeypatch.setenv("COLAB_UTILS_DEBUG", "1")
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", "--data-root", "d", "--category", "bottle", "--out", "runs"])
