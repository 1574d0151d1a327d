"""``robustad-bench data download`` against a real HTTP server on 127.0.0.1 (started here; no
other address): fixture archives in the published layouts unpack and pass ``data check``; a
download cut halfway resumes with a Range request and is byte-identical; a checksum mismatch,
a malicious archive or a failing server exits 2 and leaves the root clean."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustad_bench.core import download
from robustad_bench.harness.cli import main
from robustad_bench.harness.datasets import DATASETS
from robustad_bench.harness.datasets.layout import Download


class Server:
    """Serves ``files`` (path → bytes) with Range support; ``behaviour[path]`` plants a fault:
    ``cut`` (the first response stops halfway and the connection closes), ``404``/``500``,
    ``reset`` (the connection closes without a response), ``slow`` (no byte for 5 s)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.behaviour: dict[str, str] = {}
        self.log: list[tuple[str, str | None]] = []  # (path, Range header) per request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.log.append((self.path, self.headers.get("Range")))
                try:
                    server.respond(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the slow case): what it does next is the test

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def requests(self, path: str) -> list[str | None]:
        return [r for p, r in self.log if p == path]

    def respond(self, h: BaseHTTPRequestHandler) -> None:
        fault = self.behaviour.get(h.path)
        if fault in ("404", "500"):
            h.send_error(int(fault))
            return
        if fault == "reset":
            h.close_connection = True
            h.connection.close()
            return
        if fault == "slow":
            time.sleep(5)
        data = self.files[h.path]
        start = int(h.headers["Range"].removeprefix("bytes=").split("-")[0]) if h.headers.get("Range") else 0
        body = data[start:]
        h.send_response(206 if start else 200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if fault == "cut" and len(self.requests(h.path)) == 1:
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(body)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(download, "BACKOFF_SECONDS", 0.0)


def png(seed: int, size: int = 16, mask: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    array = np.zeros((size, size), np.uint8) if mask else rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    if mask:
        array[4:8, 4:8] = 255
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def mvtec_files(category: str = "bottle", normal: str = "good", defect: str = "broken", mask_suffix: str = "_mask") -> dict[str, bytes]:
    """One category in MVTec's published layout (a BTAD category with ``ok``/``ko``, masks without suffix)."""
    files = {f"{category}/train/{normal}/{i:03d}.png": png(i) for i in range(3)}
    files[f"{category}/test/{normal}/000.png"] = png(10)
    files[f"{category}/test/{defect}/000.png"] = png(20)
    files[f"{category}/ground_truth/{defect}/000{mask_suffix}.png"] = png(0, mask=True)
    return files


def tar_bytes(files: dict[str, bytes], mode: str = "w:xz", extra=()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buffer.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve_as(monkeypatch, server: Server, name: str, path: str, data: bytes, checksum: str | None = None) -> None:
    """The dataset's published download, pointed at the local server."""
    server.files[path] = data
    cls = DATASETS.get(name)
    published = cls.download
    monkeypatch.setattr(cls, "download", Download(published.page, published.licence,
                                                  ((server.url(path), checksum or f"sha256:{sha256(data)}"),),
                                                  strip=published.strip))


def run(tmp_path: Path, *args: str) -> int:
    return main(["data", "download", *args, "--cache", str(tmp_path / "cache"), "--no-progress"])


def test_published_layouts_in_each_archive_kind_unpack_and_pass_the_data_check(server, monkeypatch, tmp_path, capsys):
    serve_as(monkeypatch, server, "mvtec", "/mvtec_anomaly_detection.tar.xz", tar_bytes(mvtec_files()))
    assert run(tmp_path, "mvtec", "--root", str(tmp_path / "mvtec"), "--categories", "bottle") == 0
    out = capsys.readouterr().out
    assert "bottle" in out and "1 categories ok" in out, out
    assert (tmp_path / "mvtec" / "bottle" / "ground_truth" / "broken" / "000_mask.png").read_bytes() == png(0, mask=True)

    btad = {f"BTech_Dataset_transformed/{k}": v for k, v in mvtec_files("01", "ok", "ko", "").items()}
    serve_as(monkeypatch, server, "btad", "/btad.zip", zip_bytes(btad))
    assert run(tmp_path, "btad", "--root", str(tmp_path / "btad"), "--categories", "01") == 0
    assert (tmp_path / "btad" / "01" / "train" / "ok" / "000.png").is_file()  # the leading folder is dropped

    gz = tar_bytes(mvtec_files("cable"), "w:gz")
    server.files["/mirror/mvtec.tar.gz"] = gz
    assert run(tmp_path, "mvtec", "--root", str(tmp_path / "m2"), "--categories", "cable",
               "--url", server.url("/mirror/mvtec.tar.gz"), "--sha256", sha256(gz)) == 0
    assert (tmp_path / "m2" / "cable" / "test" / "broken" / "000.png").read_bytes() == png(20)


def test_the_archive_cache_is_reused_without_a_request(server, monkeypatch, tmp_path, capsys):
    serve_as(monkeypatch, server, "mvtec", "/a.tar.xz", tar_bytes(mvtec_files()))
    assert run(tmp_path, "mvtec", "--root", str(tmp_path / "r"), "--categories", "bottle") == 0
    assert run(tmp_path, "mvtec", "--root", str(tmp_path / "r"), "--categories", "bottle") == 0
    assert len(server.requests("/a.tar.xz")) == 1 and "reused" in capsys.readouterr().out


def test_a_download_cut_halfway_resumes_with_a_range_request_byte_identical(server, monkeypatch, tmp_path):
    data = tar_bytes({**mvtec_files(), "bottle/big.bin": np.random.default_rng(0).bytes(300_000)})
    serve_as(monkeypatch, server, "mvtec", "/cut.tar.xz", data)
    server.behaviour["/cut.tar.xz"] = "cut"
    assert run(tmp_path, "mvtec", "--root", str(tmp_path / "r"), "--categories", "bottle") == 0
    first, second = server.requests("/cut.tar.xz")
    assert first is None and second is not None and second.startswith("bytes=") and second != "bytes=0-", server.log
    assert (tmp_path / "cache" / "mvtec" / "cut.tar.xz").read_bytes() == data


def test_a_part_left_by_a_killed_download_is_resumed(server, monkeypatch, tmp_path):
    data = tar_bytes(mvtec_files())
    serve_as(monkeypatch, server, "mvtec", "/k.tar.xz", data)
    part = tmp_path / "cache" / "mvtec" / "k.tar.xz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    assert run(tmp_path, "mvtec", "--root", str(tmp_path / "r"), "--categories", "bottle") == 0
    assert server.requests("/k.tar.xz") == ["bytes=1000-"]
    assert (tmp_path / "cache" / "mvtec" / "k.tar.xz").read_bytes() == data and not part.exists()


def test_a_checksum_mismatch_exits_2_naming_both_digests_and_leaves_nothing(server, monkeypatch, tmp_path, capsys):
    data = tar_bytes(mvtec_files())
    serve_as(monkeypatch, server, "mvtec", "/bad.tar.xz", data, checksum="sha256:" + "0" * 64)
    assert run(tmp_path, "mvtec", "--root", str(tmp_path / "r"), "--categories", "bottle") == 2
    err = capsys.readouterr().err
    assert "0" * 64 in err and sha256(data) in err and "Traceback" not in err, err
    assert not list((tmp_path / "cache" / "mvtec").iterdir()) and not (tmp_path / "r").exists()


def sparse_bomb(size: int = 10 * 2**30) -> bytes:
    """A ~1 KB tar.gz whose one member declares 10 GB (a GNU sparse file: all holes)."""
    info = tarfile.TarInfo("bottle/bomb.bin")
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[483:495] = tarfile.itn(size, 12, tarfile.GNU_FORMAT)  # the real size the holes add up to
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    return gzip.compress(bytes(header) + b"\0" * 1024)


def link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


MALICIOUS = {
    "dotdot": ("t.tar.xz", lambda: tar_bytes({**mvtec_files(), "bottle/../../escaped.txt": b"x"}), "climbs out"),
    "absolute": ("t.tar.xz", lambda: tar_bytes({**mvtec_files(), "/tmp/robustad-absolute.txt": b"x"}), "absolute"),
    "symlink": ("t.tar.xz", lambda: tar_bytes(mvtec_files(), extra=[link("bottle/etc", "/etc")]), "outside the root"),
    "hardlink": ("t.tar.xz", lambda: tar_bytes(mvtec_files(), extra=[link("bottle/passwd", "/etc/passwd", tarfile.LNKTYPE)]), "absolute"),
    "overwrite-outside": ("t.tar.xz", lambda: tar_bytes({**mvtec_files(), "../../outside/victim.txt": b"owned"}), "climbs out"),
    "link-then-overwrite": ("t.tar.xz", lambda: tar_bytes_ordered([link("bottle/out", "../../../outside"),
                                                                   ("bottle/out/victim.txt", b"owned")]), "outside the root"),
    "write-through-link": ("t.tar.xz", lambda: tar_bytes_ordered([link("bottle/sub", "train"), ("bottle/sub/f.txt", b"x")]),
                           "through a link"),
    "device": ("t.tar.xz", lambda: tar_bytes(mvtec_files(), extra=[device("bottle/tty")]), "special file"),
    "zip-dotdot": ("t.zip", lambda: zip_bytes({**mvtec_files(), "../evil.txt": b"x"}), "climbs out"),
    "zip-absolute": ("t.zip", lambda: zip_bytes({"/abs.txt": b"x"}), "absolute"),
    "bomb": ("t.tar.gz", sparse_bomb, "decompression bomb"),
}


def tar_bytes_ordered(members: list) -> bytes:
    """Members in the given order: TarInfo (links) or (name, data) files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return buffer.getvalue()


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_a_malicious_archive_is_refused_with_exit_2_and_the_root_left_clean(case, server, tmp_path, capsys):
    name, make, why = MALICIOUS[case]
    data = make()
    if case == "bomb":
        assert len(data) < 2048
    server.files[f"/{name}"] = data
    root = tmp_path / "data" / "mvtec"
    root.mkdir(parents=True)
    (root / "keep.txt").write_text("mine")  # what the user had there stays, untouched
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim.txt").write_text("safe")
    assert run(tmp_path, "mvtec", "--root", str(root), "--categories", "bottle", "--url", server.url(f"/{name}"),
               "--sha256", sha256(data)) == 2
    err = capsys.readouterr().err
    assert why in err and "Traceback" not in err, err
    assert sorted(p.name for p in root.iterdir()) == ["keep.txt"] and (root / "keep.txt").read_text() == "mine"
    assert [p.name for p in (tmp_path / "outside").iterdir()] == ["victim.txt"]
    assert (tmp_path / "outside" / "victim.txt").read_text() == "safe" and not (tmp_path / "data" / "escaped.txt").exists()
    assert not Path("/tmp/robustad-absolute.txt").exists()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["mvtec"]  # no staging folder left behind


@pytest.mark.parametrize("fault, attempts, message", [("404", 1, "HTTP 404"), ("500", 3, "HTTP 500"),
                                                      ("reset", 3, "gave up after 3"), ("slow", 3, "timed out")])
def test_server_errors_are_clear_bounded_and_exit_2(fault, attempts, message, server, monkeypatch, tmp_path, capsys):
    serve_as(monkeypatch, server, "mvtec", "/f.tar.xz", tar_bytes(mvtec_files()))
    server.behaviour["/f.tar.xz"] = fault
    assert run(tmp_path, "mvtec", "--root", str(tmp_path / "r"), "--retries", "2", "--timeout", "0.5") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert len(server.requests("/f.tar.xz")) == attempts  # 404 is not retried; the rest are, 2 times
    assert not (tmp_path / "r").exists()


def test_a_set_behind_a_login_prints_the_steps_and_exits_2(tmp_path, capsys):
    assert run(tmp_path, "headct", "--root", str(tmp_path / "h")) == 2
    captured = capsys.readouterr()
    assert "kaggle datasets download felipekitamura/head-ct-hemorrhage" in captured.err and "no direct download" in captured.err
    assert not (tmp_path / "h").exists()
