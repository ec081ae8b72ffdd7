"""Outputs written as transactions: a command stages its files in a fresh folder beside the destination and
publishes them only when it has succeeded, so a failed or interrupted run never mixes with, or wipes, the last
good result.

    with StagedOutput(out, names=("predictions.csv", "skipped.csv", "overlays", "masks")) as stage:
        write into stage.path ...
        stage.publish()          # the previous result's entries are replaced together

Leaving the ``with`` block without :meth:`StagedOutput.publish` (an exception, Ctrl-C) removes the staging
folder, unless :meth:`StagedOutput.keep` moved the finished work to ``<out>/unfinished-<time>`` for the caller
to report. A staging folder left by a killed process is removed by the next run into the same destination.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

STAGING_PREFIX = ".staging-"


class OutputNotWritable(OSError):
    """The destination folder cannot be written; the message names it and the fix."""


class StagedOutput:
    """A fresh folder ``<out>/.staging-<time>-<pid>`` for one run's outputs, published over ``out``'s ``names``.

    Creating it checks that ``out`` can be written (:class:`OutputNotWritable` otherwise, before any long work).
    """

    def __init__(self, out: str | os.PathLike, names: Sequence[str]) -> None:
        self.out = Path(out).expanduser()
        self.names = tuple(names)
        self.published = False
        self.kept = False
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(STAGING_PREFIX + "*"):
                if stale.is_dir() and not _alive(stale):
                    shutil.rmtree(stale, ignore_errors=True)
            self.path = self.out / f"{STAGING_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            self.path.mkdir()
            (self.path / ".write-test").write_bytes(b"ok")
            (self.path / ".write-test").unlink()
        except OSError as exc:
            raise OutputNotWritable(
                f"cannot write to {self.out} ({type(exc).__name__}: {exc.strerror or exc}); choose a writable output "
                "folder (--out), or free space there"
            ) from exc

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.published and not self.kept:
            shutil.rmtree(self.path, ignore_errors=True)

    def keep(self) -> Path:
        """Keep the finished part of the run as ``<out>/unfinished-<time>`` (never cleaned up automatically) and
        return that path, for the caller's message; the previous result is untouched."""
        kept = self.out / self.path.name.replace(STAGING_PREFIX, "unfinished-", 1)
        try:
            os.replace(self.path, kept)
        except OSError:
            kept = self.path
        self.kept = True
        return kept

    def publish(self) -> None:
        """Replace ``out``'s entries in ``names`` by the staged ones (an entry the run did not stage is removed:
        it belonged to the previous result). The old entries are moved aside first and restored if a move fails."""
        aside = self.out / f"{self.path.name}.previous"
        aside.mkdir()
        moved: list[str] = []
        try:
            for name in self.names:
                if (self.out / name).exists():
                    os.replace(self.out / name, aside / name)
                    moved.append(name)
            for name in self.names:
                if (self.path / name).exists():
                    os.replace(self.path / name, self.out / name)
        except OSError:
            for name in moved:  # put the previous result back as it was
                if (self.out / name).exists():
                    shutil.rmtree(self.out / name) if (self.out / name).is_dir() else (self.out / name).unlink()
                os.replace(aside / name, self.out / name)
            shutil.rmtree(aside, ignore_errors=True)
            raise
        self.published = True
        shutil.rmtree(aside, ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)


def _alive(folder: Path) -> bool:
    """Whether the process that made a staging folder (its name ends in the pid) is still running."""
    try:
        pid = int(folder.name.rsplit("-", 1)[-1].split(".")[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # a process of another user
        return True
    return pid != os.getpid()
