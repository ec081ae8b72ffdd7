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


def test_export_refuses_an_unsupported_opset_in_one_line(capsys):
    from pathlib import Path

    run = Path(__file__).parent.parent / "assets" / "old_runs" / "memory_bank"
    code = cli.main(["export", "--run", str(run), "--format", "onnx", "--opset", "3"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--opset 3: the graph exports to ONNX opsets 14-20" in err


def test_a_write_failure_is_one_line_naming_the_folder(tmp_path, capsys, monkeypatch):
    def full(args):
        raise OSError(28, "No space left on device", str(tmp_path / "runs" / "last.pt"))

    monkeypatch.setattr(cli, "cmd_train", full)
    code = cli.main(["train", "--data-root", "d", "--category", "bottle", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert "No space left on device" in err and "last.pt" in err and "run the same command again" in err


def test_a_missing_data_folder_names_the_command_that_makes_it(tmp_path, capsys):
    code = cli.main(["train", "--data-root", str(tmp_path / "nowhere"), "--category", "bottle",
                     "--out", str(tmp_path / "runs")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "python -m colab_utils download" in err and "python -m colab_utils make-sample" in err
