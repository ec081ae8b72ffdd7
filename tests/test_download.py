"""colab_utils.download against a real HTTP server on 127.0.0.1 serving archives made here."""

from __future__ import annotations

import hashlib
import io
import socket
import sys
import tarfile
import threading
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colab_utils import download
from colab_utils.data import find_categories, load_split
from colab_utils.download import (
    MARKER,
    MVTEC_PAGE,
    MVTEC_SHA256,
    MVTEC_URL,
    DownloadError,
    download_file,
    download_from_drive,
    download_mvtec,
    drive_file_id,
    extract_categories,
)


# --------------------------------------------------------------------------- a local server
class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        asked = self.headers.get("Range")
        if asked and srv.support_range:
            start = int(asked.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if srv.cut_after is not None:  # simulate a dropped connection
            self.wfile.write(payload[: srv.cut_after])
            srv.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture()
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.support_range, srv.cut_after = {}, [], True, None
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/gone.tar.xz"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# --------------------------------------------------------------------------- archives
def _png(seed: int, mask: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (
        (rng.random((24, 24)) > 0.7).astype(np.uint8) * 255
        if mask
        else rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    )
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _tree(categories=("bottle", "screw"), prefix="mvtec_anomaly_detection/", padding=0) -> dict[str, bytes]:
    files = {f"{prefix}readme.txt": b"MVTec AD (test copy)"} if prefix else {}
    for k, cat in enumerate(categories):
        for i in range(3):
            files[f"{prefix}{cat}/train/good/{i:03d}.png"] = _png(100 * k + i)
        files[f"{prefix}{cat}/test/good/000.png"] = _png(100 * k + 10)
        files[f"{prefix}{cat}/test/broken/000.png"] = _png(100 * k + 11)
        files[f"{prefix}{cat}/ground_truth/broken/000_mask.png"] = _png(100 * k + 12, mask=True)
        if padding:  # incompressible bulk, so a truncated archive breaks in the middle of a category
            files[f"{prefix}{cat}/train/good/zz_bulk.bin"] = np.random.default_rng(k).bytes(padding)
    return files


def _archive(path: Path, files: dict[str, bytes], fmt: str = "w:xz", links: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return path
    with tarfile.open(path, fmt) as tf:
        dirs = sorted({str(Path(n).parent) for n in files if "/" in n})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return path


def _extracted(dest: Path, cat: str) -> dict[str, bytes]:
    return {
        str(p.relative_to(dest / cat)): p.read_bytes()
        for p in (dest / cat).rglob("*")
        if p.is_file() and p.name != MARKER
    }


def _expected(files: dict[str, bytes], cat: str, prefix="mvtec_anomaly_detection/") -> dict[str, bytes]:
    head = f"{prefix}{cat}/"
    return {n[len(head) :]: b for n, b in files.items() if n.startswith(head)}


# --------------------------------------------------------------------------- download_file
def test_download_checksum_ok_then_skipped(server, tmp_path):
    body = np.random.default_rng(0).bytes(300_000)
    server.files["/a.bin"] = body
    dest = tmp_path / "sub" / "a.bin"
    assert download_file(server.base + "/a.bin", dest, sha256=_sha(body), progress=False) == dest
    assert dest.read_bytes() == body and not dest.with_name("a.bin.part").exists()
    n = len(server.requests)
    download_file(server.base + "/a.bin", dest, sha256=_sha(body).upper(), progress=False)
    assert len(server.requests) == n  # already there with the right checksum: no request
    dest.write_bytes(b"stale")  # wrong content: fetched again
    download_file(server.base + "/a.bin", dest, sha256=_sha(body), progress=False)
    assert dest.read_bytes() == body and len(server.requests) == n + 1


def test_download_checksum_mismatch(server, tmp_path):
    server.files["/a.bin"] = b"x" * 1000
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError, match="checksum mismatch") as err:
        download_file(server.base + "/a.bin", dest, sha256="0" * 64, progress=False)
    assert "by hand" in str(err.value)
    assert not dest.exists() and not dest.with_name("a.bin.part").exists()


def test_download_network_errors(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download_file(server.base + "/missing.tar", tmp_path / "m.tar", progress=False)
    assert "by hand" in str(err.value) and "/missing.tar" in str(err.value)
    with pytest.raises(DownloadError, match="could not download"):
        download_file(_dead_url(), tmp_path / "m.tar", progress=False, timeout=5)
    assert not (tmp_path / "m.tar").exists()


def test_interrupted_download_resumes(server, tmp_path):
    body = np.random.default_rng(1).bytes(200_000)
    server.files["/big.bin"] = body
    server.cut_after = 70_000
    dest = tmp_path / "big.bin"
    with pytest.raises(DownloadError, match="interrupted|stopped after"):
        download_file(server.base + "/big.bin", dest, sha256=_sha(body), progress=False)
    part = tmp_path / "big.bin.part"
    assert (
        not dest.exists() and part.read_bytes() == body[: part.stat().st_size] and 0 < part.stat().st_size < len(body)
    )
    kept = part.stat().st_size
    download_file(server.base + "/big.bin", dest, sha256=_sha(body), progress=False)
    assert dest.read_bytes() == body and not part.exists()
    assert server.requests[-1][1] == f"bytes={kept}-"


def test_restart_when_server_ignores_range(server, tmp_path):
    body = b"fresh content " * 500
    server.files["/f.bin"] = body
    server.support_range = False
    (tmp_path / "f.bin.part").write_bytes(b"garbage from elsewhere")
    download_file(server.base + "/f.bin", tmp_path / "f.bin", sha256=_sha(body), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body


# --------------------------------------------------------------------------- extraction
def test_extract_selected_category(tmp_path):
    files = _tree()
    archive = _archive(tmp_path / "mvtec.tar.xz", files)
    dest = tmp_path / "data"
    assert extract_categories(archive, dest, ["bottle"], progress=False) == [dest / "bottle"]
    assert (dest / "bottle" / MARKER).is_file()
    assert _extracted(dest, "bottle") == _expected(files, "bottle")
    assert not (dest / "screw").exists() and not (dest / "readme.txt").exists()
    assert sorted(p.name for p in dest.iterdir()) == ["bottle"]  # no temporary folders left
    test = load_split(dest, "bottle", "test", 24, 3)
    assert test.labels.tolist() == [0, 1] and int(test.masks[1].sum()) > 0


@pytest.mark.parametrize(
    "fmt,name,prefix", [("w:gz", "a.tar.gz", ""), ("w", "a.tar", "top/"), ("zip", "a.zip", "mvtec/")]
)
def test_extract_all_formats(tmp_path, fmt, name, prefix):
    files = _tree(prefix=prefix)
    archive = _archive(tmp_path / name, files, fmt)
    dest = tmp_path / "data"
    assert extract_categories(archive, dest, progress=False) == [dest / "bottle", dest / "screw"]
    for cat in ("bottle", "screw"):
        assert _extracted(dest, cat) == _expected(files, cat, prefix)
    assert find_categories(dest) == ["bottle", "screw"]


def test_extract_skips_complete_categories(tmp_path):
    archive = _archive(tmp_path / "mvtec.tar.xz", _tree())
    dest = tmp_path / "data"
    extract_categories(archive, dest, ["bottle"], progress=False)
    marker_time = (dest / "bottle" / MARKER).stat().st_mtime_ns
    extract_categories(archive, dest, ["bottle", "screw"], progress=False)
    assert (dest / "bottle" / MARKER).stat().st_mtime_ns == marker_time  # bottle left alone
    assert (dest / "screw" / MARKER).is_file()
    archive.unlink()
    assert extract_categories(archive, dest, ["screw", "bottle"], progress=False) == [dest / "screw", dest / "bottle"]


def test_truncated_archive_leaves_nothing_that_looks_complete(tmp_path):
    raw = _archive(tmp_path / "full.tar.xz", _tree(padding=200_000)).read_bytes()
    cut = tmp_path / "cut.tar.xz"
    cut.write_bytes(raw[: int(len(raw) * 0.75)])  # ends inside screw, after bottle was read whole
    dest = tmp_path / "data"
    with pytest.raises(DownloadError, match="damaged, incomplete") as err:
        extract_categories(cut, dest, progress=False)
    assert str(cut) in str(err.value)
    assert list(dest.iterdir()) == []  # no category folder, no partial folder
    assert find_categories(dest) == []


@pytest.mark.parametrize("bad", ["../evil.txt", "mvtec/bottle/../../evil.txt", "/var/colab_utils_evil.txt"])
def test_path_traversal_rejected(tmp_path, bad):
    files = {**_tree(), bad: b"pwned"}
    archive = _archive(tmp_path / "a" / "evil.tar", files, "w")
    dest = tmp_path / "a" / "data"
    with pytest.raises(DownloadError, match="unsafe member"):
        extract_categories(archive, dest, progress=False)
    assert not list(tmp_path.rglob("*evil.txt")) and not Path("/var/colab_utils_evil.txt").exists()
    assert not dest.exists() or list(dest.iterdir()) == []


def test_links_rejected(tmp_path):
    archive = _archive(
        tmp_path / "l.tar", _tree(), "w", links={"mvtec_anomaly_detection/bottle/train/good/x.png": "/etc/passwd"}
    )
    dest = tmp_path / "data"
    with pytest.raises(DownloadError, match="symlink|link"):
        extract_categories(archive, dest, ["bottle"], progress=False)
    assert list(dest.iterdir()) == []


def test_existing_unmarked_folder_is_not_overwritten(tmp_path):
    archive = _archive(tmp_path / "a.tar.xz", _tree())
    dest = tmp_path / "data"
    mine = dest / "bottle" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    with pytest.raises(DownloadError, match="no .complete marker"):
        extract_categories(archive, dest, ["bottle"], progress=False)
    assert [p.name for p in (dest / "bottle").iterdir()] == ["notes.txt"]


def test_category_missing_from_archive(tmp_path):
    archive = _archive(tmp_path / "a.tar.xz", _tree())
    with pytest.raises(DownloadError, match=r"no categories \['carpet'\].*bottle"):
        extract_categories(archive, tmp_path / "data", ["carpet"], progress=False)
    assert list((tmp_path / "data").iterdir()) == []


# --------------------------------------------------------------------------- download_mvtec
def test_download_mvtec_end_to_end(server, tmp_path):
    files = _tree()
    body = _archive(tmp_path / "srv" / "mvtec.tar.xz", files).read_bytes()
    server.files["/mvtec.tar.xz"] = body
    dest = tmp_path / "data"
    url = server.base + "/mvtec.tar.xz"
    assert download_mvtec(dest, ["bottle"], url=url, sha256=_sha(body), progress=False) == dest
    assert find_categories(dest) == ["bottle"] and (dest / "bottle" / MARKER).is_file()
    assert (dest / ".downloads" / "mvtec.tar.xz").read_bytes() == body
    n = len(server.requests)
    download_mvtec(dest, ["bottle"], url=_dead_url(), sha256=_sha(body), progress=False)  # already there: no network
    download_mvtec(dest, ["bottle", "screw"], url=url, sha256=_sha(body), progress=False)  # archive kept: no download
    assert len(server.requests) == n and find_categories(dest) == ["bottle", "screw"]
    other = tmp_path / "other"
    download_mvtec(other, ["screw"], url=_dead_url(), archive=tmp_path / "srv" / "mvtec.tar.xz", progress=False)
    assert _extracted(other, "screw") == _expected(files, "screw")


def test_download_mvtec_failures_explain_the_manual_route(server, tmp_path):
    server.files["/mvtec.tar.xz"] = b"not the archive"
    with pytest.raises(DownloadError, match="checksum mismatch") as err:
        download_mvtec(
            tmp_path / "d", ["bottle"], url=server.base + "/mvtec.tar.xz", sha256=MVTEC_SHA256, progress=False
        )
    assert MVTEC_PAGE in str(err.value) and "archive=" in str(err.value)
    with pytest.raises(ValueError, match="did you mean 'bottle'"):
        download_mvtec(tmp_path / "d", ["botle"], url=MVTEC_URL, progress=False)
    with pytest.raises(DownloadError, match="does not exist"):
        download_mvtec(tmp_path / "d", ["bottle"], archive=tmp_path / "nope.tar.xz", progress=False)


# --------------------------------------------------------------------------- Google Drive
def test_drive_file_id():
    fid = "1AbCdEfGhIjKlMnOp_-xyz"
    assert drive_file_id(fid) == fid
    assert drive_file_id(f"https://drive.google.com/file/d/{fid}/view?usp=sharing") == fid
    assert drive_file_id(f"https://drive.google.com/uc?export=download&id={fid}") == fid
    with pytest.raises(DownloadError, match="share link"):
        drive_file_id("not a link")


def test_download_from_drive_with_gdown(tmp_path, monkeypatch):
    calls = []

    def fake_download(id=None, output=None, quiet=False, **kw):  # noqa: A002 - gdown's keyword
        calls.append(id)
        if id == "missingfile123":
            return None
        Path(output).write_bytes(b"drive bytes")
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=fake_download))
    dest = tmp_path / "x.bin"
    out = download_from_drive("https://drive.google.com/file/d/abcdefghijk123/view", dest, sha256=_sha(b"drive bytes"))
    assert out == dest and dest.read_bytes() == b"drive bytes" and calls == ["abcdefghijk123"]
    download_from_drive("abcdefghijk123", dest, sha256=_sha(b"drive bytes"))
    assert len(calls) == 1  # skipped: already there
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_from_drive("abcdefghijk123", tmp_path / "y.bin", sha256="1" * 64)
    assert not (tmp_path / "y.bin").exists() and not (tmp_path / "y.bin.part").exists()
    with pytest.raises(DownloadError, match="Anyone with the link"):
        download_from_drive("missingfile123", tmp_path / "z.bin")


def test_module_constants():
    assert download.MVTEC_URL.endswith("mvtec_anomaly_detection.tar.xz")
    assert len(download.MVTEC_SHA256) == 64 and int(download.MVTEC_SHA256, 16) >= 0
