"""The downloader on small stand-in files: mirrors, formats, verification, failure."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest

from mnist_precision.core import download
from mnist_precision.core.download import DownloadError, FetchPolicy, download_mnist

from helpers import serve_directory

FAST = FetchPolicy(timeout_s=5, attempts=2, backoff_s=0)


@pytest.fixture
def originals(monkeypatch) -> dict[str, bytes]:
    """Four small files standing in for MNIST, with their MD5s as the published ones."""
    contents = {name: f"{name} ".encode() * (200 + i) for i, name in enumerate(download.FILES)}
    monkeypatch.setattr(download, "FILES", {n: hashlib.md5(c).hexdigest() for n, c in contents.items()})
    return contents


def make_mirror(root: Path, files: dict[str, bytes], compress: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if compress:
            (root / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (root / name).write_bytes(content)
    return root


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def assert_downloaded(out: Path, originals: dict[str, bytes]) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(originals)
    for name, content in originals.items():
        assert (out / name).read_bytes() == content


def test_gzip_files_from_a_plain_directory(tmp_path, originals):
    mirror = make_mirror(tmp_path / "mirror", originals)
    download_mnist(tmp_path / "out", [str(mirror)], FAST)
    assert_downloaded(tmp_path / "out", originals)


def test_uncompressed_files_over_http(tmp_path, originals):
    mirror = make_mirror(tmp_path / "mirror", originals, compress=False)
    with serve_directory(mirror) as url:
        download_mnist(tmp_path / "out", [url], FAST)
    assert_downloaded(tmp_path / "out", originals)


def test_file_url_mirror(tmp_path, originals):
    mirror = make_mirror(tmp_path / "mirror", originals)
    download_mnist(tmp_path / "out", [mirror.as_uri()], FAST)
    assert_downloaded(tmp_path / "out", originals)


def test_mnist_mirror_overrides_the_default_mirrors(tmp_path, originals, monkeypatch):
    mirror = make_mirror(tmp_path / "mirror", originals)
    monkeypatch.setenv("MNIST_MIRROR", str(mirror))
    assert download.mirrors_from_env() == [str(mirror)]
    download_mnist(tmp_path / "out", policy=FAST)
    assert_downloaded(tmp_path / "out", originals)


def test_refused_connection_falls_through_to_the_next_mirror(tmp_path, originals):
    mirror = make_mirror(tmp_path / "mirror", originals)
    download_mnist(tmp_path / "out", [closed_port_url(), str(mirror)], FAST)
    assert_downloaded(tmp_path / "out", originals)


def corrupted(content: bytes) -> bytes:
    return bytes([content[0] ^ 0xFF]) + content[1:]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda name, content, all_: gzip.compress(corrupted(content)), id="corrupted"),
        pytest.param(lambda name, content, all_: gzip.compress(content)[:-20], id="truncated-gzip"),
        pytest.param(lambda name, content, all_: content[: len(content) // 2], id="truncated-plain"),
        # another data set's bytes under this file's name
        pytest.param(lambda name, content, all_: gzip.compress(all_["t10k-labels-idx1-ubyte"]), id="wrong-data"),
    ],
)
def test_bad_file_falls_through_then_fails_clearly(tmp_path, originals, damage):
    name = "train-labels-idx1-ubyte"
    bad = make_mirror(tmp_path / "bad", originals)
    (bad / f"{name}.gz").write_bytes(damage(name, originals[name], originals))

    download_mnist(tmp_path / "ok", [str(bad), str(make_mirror(tmp_path / "good", originals))], FAST)
    assert_downloaded(tmp_path / "ok", originals)

    out = tmp_path / "out"
    with pytest.raises(DownloadError) as failure:
        download_mnist(out, [str(bad)], FAST)
    message = str(failure.value)
    assert name in message and "MNIST_MIRROR" in message
    # Nothing a later run could take for good data: no file of that name, no temporary.
    assert not (out / name).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_checksum_mismatch_names_file_and_both_checksums(tmp_path, originals):
    name = "t10k-images-idx3-ubyte"
    bad = make_mirror(tmp_path / "bad", originals)
    wrong = corrupted(originals[name])
    (bad / f"{name}.gz").write_bytes(gzip.compress(wrong))
    with pytest.raises(DownloadError) as failure:
        download_mnist(tmp_path / "out", [str(bad)], FAST)
    message = str(failure.value)
    assert name in message
    assert download.FILES[name] in message  # expected
    assert hashlib.md5(wrong).hexdigest() in message  # actual


def test_no_reachable_mirror_names_mnist_mirror(tmp_path, originals):
    with pytest.raises(DownloadError, match="Set MNIST_MIRROR"):
        download_mnist(tmp_path / "out", [closed_port_url(), str(tmp_path / "missing")], FAST)


def test_missing_file_is_reported_per_mirror(tmp_path, originals):
    mirror = make_mirror(tmp_path / "mirror", {k: v for k, v in originals.items() if "t10k" not in k})
    with pytest.raises(DownloadError, match="t10k-images-idx3-ubyte"):
        download_mnist(tmp_path / "out", [str(mirror)], FAST)


@pytest.mark.parametrize("mirror", ["ftp://example.org/mnist/", "s3://bucket/mnist/"])
def test_only_http_https_and_file_mirrors_are_accepted(tmp_path, originals, mirror):
    with pytest.raises(DownloadError, match="only http, https, file"):
        download_mnist(tmp_path / "out", [mirror], FAST)
    assert not (tmp_path / "out").exists()


def test_verified_files_are_not_downloaded_again(tmp_path, originals):
    mirror = make_mirror(tmp_path / "mirror", originals)
    download_mnist(tmp_path / "out", [str(mirror)], FAST)
    download_mnist(tmp_path / "out", [str(tmp_path / "gone")], FAST)  # would fail if it fetched
    assert_downloaded(tmp_path / "out", originals)


class Hanging(http.server.BaseHTTPRequestHandler):
    """Accepts the connection, then says nothing."""

    def do_GET(self):
        time.sleep(3)

    def log_message(self, *args):
        pass


class ServesHtml(http.server.BaseHTTPRequestHandler):
    """A captive portal or error page, with status 200, under every name."""

    def do_GET(self):
        body = b"<!DOCTYPE html><html><body>Please log in</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(handler) -> str:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("handler, problem", [(Hanging, "timed out"), (ServesHtml, "MD5 of the decompressed content")])
def test_hanging_or_html_mirror_falls_through_then_fails_clearly(tmp_path, originals, handler, problem):
    policy = FetchPolicy(timeout_s=0.2, attempts=2, backoff_s=0)
    with serve(handler) as bad:
        download_mnist(tmp_path / "ok", [bad, str(make_mirror(tmp_path / "good", originals))], policy)
        assert_downloaded(tmp_path / "ok", originals)
        with pytest.raises(DownloadError) as failure:
            download_mnist(tmp_path / "out", [bad], policy)
    assert problem in str(failure.value) and "MNIST_MIRROR" in str(failure.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_http_404_is_reported_and_falls_through(tmp_path, originals):
    empty = tmp_path / "empty"
    empty.mkdir()
    with serve_directory(empty) as bad:
        download_mnist(tmp_path / "ok", [bad, str(make_mirror(tmp_path / "good", originals))], FAST)
        with pytest.raises(DownloadError, match="HTTP 404"):
            download_mnist(tmp_path / "out", [bad], FAST)
    assert_downloaded(tmp_path / "ok", originals)
