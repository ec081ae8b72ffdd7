"""Downloads: MVTec AD from its official mirror, files from Google Drive, safe extraction.

* :func:`download_file` streams a URL to ``<dest>.part`` (resumed with an HTTP Range
  request when a previous attempt was interrupted), checks the SHA-256 and only then
  moves it to ``dest`` (``os.replace``). A file already there with the right checksum is
  not downloaded again.
* :func:`extract_categories` extracts only the requested categories of a ``.tar.xz`` /
  ``.tar.gz`` / ``.tar`` / ``.zip`` archive, each into a hidden temporary sibling folder
  that gets a completion marker (``.complete``) and is then renamed into place, so a
  half-extracted category never looks complete. Member names that would escape the
  destination (absolute paths, ``..``) and links are refused.
* :func:`download_mvtec` combines both for MVTec AD (about 4.9 GB; the archive is kept
  in ``<dest>/.downloads`` so more categories can be extracted later without a new
  download).

If the automatic download fails (the mirror moves now and then), download
``mvtec_anomaly_detection.tar.xz`` by hand from :data:`MVTEC_PAGE` and pass its path:
``download_mvtec(dest, archive="path/to/mvtec_anomaly_detection.tar.xz")``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import lzma
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Optional, Union
from urllib.parse import urlparse

from .config import MVTEC_CATEGORIES

PathLike = Union[str, "os.PathLike[str]"]

MVTEC_URL = (
    "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/420938113-1629960298/"
    "mvtec_anomaly_detection.tar.xz"
)
MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
#: Written last into every extracted category folder.
MARKER = ".complete"
#: Folders directly below a category folder in the MVTec layout; they identify the category in archive paths.
LAYOUT_DIRS = ("train", "test", "ground_truth")
_CHUNK = 1 << 20
_USER_AGENT = "colab-utils-anomaly/0.1 (+python urllib)"


class DownloadError(RuntimeError):
    """A download or extraction failed; the message says what to do instead."""


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _checksum_ok(path: Path, sha256: Optional[str]) -> bool:
    return sha256 is None or sha256_file(path) == sha256.lower()


def _by_hand(url: str, dest: Path) -> str:
    return (
        f"Check the internet connection and run again (an interrupted download resumes from {dest.name}.part), "
        f"or download {url} by hand (e.g. in a browser), save it as {dest} or pass its path "
        f"(--archive PATH; Python: download_mvtec(..., archive=PATH))"
    )


# --------------------------------------------------------------------------- HTTP
def download_file(
    url: str, dest: PathLike, sha256: Optional[str] = None, progress: bool = True, timeout: float = 60.0
) -> Path:
    """Download ``url`` to the file ``dest`` and return ``dest``.

    Streams to ``<dest>.part`` with a progress bar, resuming a partial ``.part`` when the
    server supports range requests, verifies ``sha256`` (hex; ``None`` skips the check) and
    moves the file into place atomically. If ``dest`` already exists with the right
    checksum (or exists and no checksum is given) nothing is downloaded.

    Raises:
        DownloadError: network failure (the ``.part`` file is kept for resuming) or
            checksum mismatch (the bad download is deleted); the message says what to do.
    """
    dest = Path(dest).expanduser()
    if dest.is_dir():
        raise DownloadError(f"download destination {dest} is a folder; pass the path of the file to write")
    if dest.is_file() and _checksum_ok(dest, sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resp, start = _open_resumable(url, dest, part, timeout)
    digest = _stream_to(resp, part, start, url, dest, progress)
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise DownloadError(
            f"checksum mismatch for {url}: sha256 {digest}, expected {sha256.lower()}. The download was corrupted or "
            f"the file on the server changed; the bad file was deleted. Run again, or download the file by hand and "
            f"pass its path (--archive PATH; Python: download_mvtec(..., archive=PATH)); skip the check (Python: sha256=None) only if you trust the source"
        )
    os.replace(part, dest)
    return dest


def _open_resumable(url: str, dest: Path, part: Path, timeout: float):
    """(open response, bytes already in ``part``): asks for the rest of a partial download, and starts over when
    the server says the ``.part`` is not a prefix of the file (HTTP 416)."""
    for attempt in range(2):
        start = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": _USER_AGENT}
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout), start
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and start and attempt == 0:  # the .part is not a prefix of this file: start over
                part.unlink()
                continue
            raise DownloadError(
                f"could not download {url}: HTTP {exc.code} {exc.reason}. {_by_hand(url, dest)}"
            ) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise DownloadError(
                f"could not download {url}: {getattr(exc, 'reason', exc)}. {_by_hand(url, dest)}"
            ) from exc
    raise DownloadError(f"could not download {url}. {_by_hand(url, dest)}")  # pragma: no cover


def _stream_to(resp, part: Path, start: int, url: str, dest: Path, progress: bool) -> str:
    """Append the response to ``part`` (or rewrite it when the server ignored the range) with a progress bar;
    returns the sha256 of the whole file. A short or broken transfer raises, keeping ``part`` for resuming."""
    from .env import progress_bar as tqdm

    hasher = hashlib.sha256()
    with resp:
        resumed = bool(start) and resp.status == 206
        if resumed:
            with open(part, "rb") as f:
                while chunk := f.read(_CHUNK):
                    hasher.update(chunk)
        else:
            start = 0
        length = resp.headers.get("Content-Length")
        expected = start + int(length) if length and length.isdigit() else None
        received = start
        bar = tqdm(total=expected, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                   disable=not progress)  # fmt: skip
        try:
            with open(part, "ab" if resumed else "wb") as f, bar:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(
                f"download of {url} was interrupted after {received} bytes ({type(exc).__name__}: {exc}). {_by_hand(url, dest)}"
            ) from exc
    if expected is not None and received != expected:
        raise DownloadError(f"download of {url} stopped after {received} of {expected} bytes. {_by_hand(url, dest)}")
    return hasher.hexdigest()


# --------------------------------------------------------------------------- Google Drive
_DRIVE_ID_PATTERNS = (r"/file/d/([A-Za-z0-9_-]+)", r"/d/([A-Za-z0-9_-]+)", r"[?&]id=([A-Za-z0-9_-]+)")


def drive_file_id(file_id_or_url: str) -> str:
    """The file id of a Google Drive share link (``.../file/d/<id>/view``, ``...?id=<id>``) or a bare id."""
    text = file_id_or_url.strip()
    if re.fullmatch(r"[A-Za-z0-9_-]{10,}", text):
        return text
    for pattern in _DRIVE_ID_PATTERNS:
        if m := re.search(pattern, text):
            return m.group(1)
    raise DownloadError(
        f"{file_id_or_url!r} is neither a Google Drive file id nor a share link; copy the link from Drive "
        f"(Share > Copy link), it looks like https://drive.google.com/file/d/<id>/view"
    )


def download_from_drive(file_id_or_url: str, dest: PathLike, sha256: Optional[str] = None) -> Path:
    """Download a Google Drive file (shared as "Anyone with the link") to ``dest`` with gdown.

    Same contract as :func:`download_file`: skipped when ``dest`` exists with the right
    checksum, written through ``<dest>.part`` and moved into place after the check.
    """
    file_id = drive_file_id(file_id_or_url)
    dest = Path(dest).expanduser()
    if dest.is_file() and _checksum_ok(dest, sha256):
        return dest
    try:
        import gdown
    except ImportError as exc:
        raise DownloadError("download_from_drive needs gdown: pip install gdown") from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    advice = (
        f"Make sure the file is shared as 'Anyone with the link' and try again later (Drive limits downloads of "
        f"popular files), or download it by hand from https://drive.google.com/uc?id={file_id} and save it as {dest}"
    )
    try:
        out = gdown.download(id=file_id, output=str(part), quiet=False)
    except Exception as exc:  # noqa: BLE001 - gdown raises many different types
        raise DownloadError(
            f"Google Drive download of {file_id} failed ({type(exc).__name__}: {exc}). {advice}"
        ) from exc
    if out is None or not part.is_file():
        raise DownloadError(f"Google Drive download of {file_id} failed (nothing was written). {advice}")
    if not _checksum_ok(part, sha256):
        digest = sha256_file(part)
        part.unlink()
        raise DownloadError(
            f"checksum mismatch for Google Drive file {file_id}: sha256 {digest}, expected {sha256}; the bad file was "
            f"deleted. {advice}"
        )
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------- extraction
def is_complete(category_dir: PathLike) -> bool:
    """Whether ``category_dir`` was fully extracted (holds the :data:`MARKER` file)."""
    return (Path(category_dir) / MARKER).is_file()


def _member_parts(name: str, archive: Path) -> tuple[str, ...]:
    """Validated relative path parts of an archive member; raises on anything that could escape."""
    norm = name.replace("\\", "/")
    parts = PurePosixPath(norm).parts
    if norm.startswith("/") or (parts and parts[0].endswith(":")) or ".." in parts:
        raise DownloadError(
            f"archive {archive} holds the unsafe member name {name!r} (it would be written outside the destination); "
            f"refusing to extract. Download the archive again from its official source"
        )
    return tuple(p for p in parts if p not in ("", "."))


def _split_category(parts: tuple[str, ...]) -> tuple[Optional[str], tuple[str, ...]]:
    """``(category, path below it)`` for ``<cat>/<layout dir>/...``, possibly under one top-level folder."""
    for i in (0, 1):
        if len(parts) > i + 1 and parts[i + 1] in LAYOUT_DIRS:
            return parts[i], parts[i + 1 :]
    return None, ()


class _ProgressReader:
    """File wrapper that reports bytes read to a tqdm bar (for streamed tar archives)."""

    def __init__(self, f: BinaryIO, bar: Any) -> None:
        self.f, self.bar = f, bar

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.bar.update(len(data))
        return data


_Member = tuple[str, str, Callable[[], BinaryIO]]  # (name, kind: "dir" | "file" | "link" | "other", opener)


def _iter_tar(archive: Path, progress: bool) -> Iterator[_Member]:
    from .env import progress_bar as tqdm

    with (
        open(archive, "rb") as raw,
        tqdm(
            total=archive.stat().st_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"extract {archive.name}",
            disable=not progress,
        ) as bar,
        tarfile.open(fileobj=_ProgressReader(raw, bar), mode="r|*") as tf,
    ):  # one sequential pass (xz is slow to seek)
        for m in tf:
            kind = "dir" if m.isdir() else "file" if m.isfile() else "link" if (m.issym() or m.islnk()) else "other"
            yield m.name, kind, (lambda m=m: tf.extractfile(m))


def _iter_zip(archive: Path, progress: bool) -> Iterator[_Member]:
    from .env import progress_bar as tqdm

    with zipfile.ZipFile(archive) as zf:
        for info in tqdm(zf.infolist(), desc=f"extract {archive.name}", unit="file", disable=not progress):
            mode = (info.external_attr >> 16) & 0o170000
            kind = "dir" if info.is_dir() else "link" if mode == 0o120000 else "file"
            yield info.filename, kind, (lambda info=info: zf.open(info))


def extract_categories(
    archive: PathLike, dest: PathLike, categories: Optional[Sequence[str]] = None, progress: bool = True
) -> list[Path]:
    """Extract categories of an MVTec-layout archive into ``dest``; return their folders.

    Members look like ``<cat>/train/...``, ``<cat>/test/...``, ``<cat>/ground_truth/...``,
    optionally below one top-level folder; anything else (readme, licence) is ignored.
    ``categories=None`` extracts every category in the archive. Categories already
    complete (with the :data:`MARKER` file) are skipped, without even opening the archive
    when all requested ones are. Each category is written to ``dest/.<cat>.partial``,
    marked complete, then renamed to ``dest/<cat>``; on any error the partial folders are
    removed. A ``dest/<cat>`` without marker (not made here, or made by something else) is
    never overwritten (:class:`DownloadError`).
    """
    archive = Path(archive).expanduser()
    dest = Path(dest).expanduser()
    wanted = None if categories is None else list(dict.fromkeys(categories))
    for c in wanted or []:
        if not c or "/" in c or "\\" in c or c in (".", ".."):
            raise ValueError(f"category name {c!r} is not a plain folder name")
    if wanted is not None and all(is_complete(dest / c) for c in wanted):
        return [dest / c for c in wanted]
    if not archive.is_file():
        raise DownloadError(
            f"archive {archive} does not exist; download it first (download_mvtec downloads and extracts)"
        )
    for c in wanted or []:
        _check_no_conflict(dest / c)
    dest.mkdir(parents=True, exist_ok=True)

    if zipfile.is_zipfile(archive):
        members = _iter_zip(archive, progress)
    else:
        members = _iter_tar(archive, progress)
    temps: dict[str, Path] = {}
    found: set[str] = set()
    skipped: set[str] = set()
    try:
        try:
            for name, kind, opener in members:
                _extract_member(name, kind, opener, archive, dest, wanted, temps, found, skipped)
        finally:
            close = getattr(members, "close", None)
            if close is not None:
                close()
        if wanted is not None and (missing := [c for c in wanted if c not in found and not is_complete(dest / c)]):
            raise DownloadError(
                f"archive {archive} has no categories {missing}; it holds {sorted(found) or 'no MVTec-layout folders'}"
            )
        for cat, tmp in temps.items():
            (tmp / MARKER).write_text(
                json.dumps({"archive": archive.name, "time": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"
            )
            os.replace(tmp, dest / cat)
    except OSError as exc:
        if isinstance(exc, DownloadError):  # pragma: no cover - DownloadError is not an OSError
            raise
        raise DownloadError(
            f"extracting {archive} into {dest} failed ({type(exc).__name__}: {exc}); check the free disk space and "
            f"write permission of {dest} and run again; nothing was left half-extracted"
        ) from exc
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError, zlib.error, ValueError) as exc:
        raise DownloadError(
            f"archive {archive} could not be read ({type(exc).__name__}: {exc}): it is damaged, incomplete or not a "
            f".tar.xz/.tar.gz/.tar/.zip file. Delete it and download it again; nothing was left half-extracted"
        ) from exc
    finally:
        for tmp in temps.values():
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    names = wanted if wanted is not None else sorted(found)
    return [dest / c for c in names]


def _extract_member(name, kind, opener, archive: Path, dest: Path, wanted, temps: dict, found: set, skipped: set) -> None:
    """Write one archive member into its category's ``.partial`` folder (created on the category's first member;
    a category already complete is skipped); a link or device member is refused."""
    cat, below = _split_category(_member_parts(name, archive))
    if cat is None:
        return
    found.add(cat)
    if (wanted is not None and cat not in wanted) or cat in skipped:
        return
    if cat not in temps:
        if is_complete(dest / cat):
            skipped.add(cat)
            return
        _check_no_conflict(dest / cat)
        tmp = dest / f".{cat}.partial"
        if tmp.exists():  # left by an interrupted earlier run
            shutil.rmtree(tmp)
        tmp.mkdir()
        temps[cat] = tmp
    target = temps[cat].joinpath(*below)
    if kind == "dir":
        target.mkdir(parents=True, exist_ok=True)
        return
    if kind != "file":
        raise DownloadError(
            f"archive {archive} holds {name!r}, a {kind} rather than a regular file; refusing to extract it. "
            f"Download the archive again from its official source"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with opener() as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out, _CHUNK)


def _check_no_conflict(folder: Path) -> None:
    if folder.exists() and not is_complete(folder):
        raise DownloadError(
            f"{folder} already exists but has no {MARKER} marker, so it was not extracted completely by this tool. "
            f"Delete it to extract it again, or keep it and do not ask for this category"
        )


# --------------------------------------------------------------------------- MVTec AD
def _present(folder: Path) -> bool:
    """Complete by marker, or a folder with the full layout made by other means (trusted as is)."""
    return is_complete(folder) or all((folder / d).is_dir() for d in ("train/good", "test", "ground_truth"))


def download_mvtec(
    dest: PathLike,
    categories: Optional[Sequence[str]] = None,
    url: str = MVTEC_URL,
    sha256: Optional[str] = MVTEC_SHA256,
    archive: Optional[PathLike] = None,
    keep_archive: bool = True,
    progress: bool = True,
) -> Path:
    """Make ``dest/<category>`` exist for the requested MVTec AD categories; return ``dest``.

    Categories already there (extracted by :func:`extract_categories`, or any folder with
    ``train/good``, ``test`` and ``ground_truth``) are left alone; when all are, nothing is
    downloaded. Otherwise the archive (``archive`` if given: a file you downloaded by hand,
    not checksummed; else ``url``, checked against ``sha256``) is stored in
    ``dest/.downloads`` and the missing categories are extracted from it.
    ``categories=None`` means all 15.
    """
    dest = Path(dest).expanduser()
    cats = list(MVTEC_CATEGORIES) if categories is None else list(dict.fromkeys(categories))
    if url == MVTEC_URL and archive is None and (unknown := [c for c in cats if c not in MVTEC_CATEGORIES]):
        import difflib

        hints = {c: difflib.get_close_matches(c, MVTEC_CATEGORIES, n=1) for c in unknown}
        said = ", ".join(f"{c!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for c, h in hints.items())
        raise ValueError(f"unknown MVTec AD categories {said}; choose from {', '.join(MVTEC_CATEGORIES)}")
    need = [c for c in cats if not _present(dest / c)]
    if not need:
        return dest
    if archive is None:
        name = Path(urlparse(url).path).name or "mvtec_anomaly_detection.tar.xz"
        archive_path = dest / ".downloads" / name
        try:
            download_file(url, archive_path, sha256=sha256, progress=progress)
        except DownloadError as exc:
            raise DownloadError(
                f"{exc}. MVTec AD can also be downloaded by hand from {MVTEC_PAGE}; then run `python -m colab_utils "
                f"download {dest} --archive path/to/mvtec_anomaly_detection.tar.xz` (Python: "
                f"download_mvtec({str(dest)!r}, archive='path/to/mvtec_anomaly_detection.tar.xz'))"
            ) from exc
    else:
        archive_path = Path(archive).expanduser()
        if not archive_path.is_file():
            raise DownloadError(f"archive {archive_path} does not exist; pass the path of the downloaded .tar.xz file")
    extract_categories(archive_path, dest, need, progress=progress)
    if archive is None and not keep_archive:
        archive_path.unlink(missing_ok=True)
    return dest
