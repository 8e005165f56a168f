"""Fetch the four MNIST files from a list of mirrors and verify them.

Each file is verified against the published MD5 of its *decompressed* IDX
content, so gzip files recompressed by a mirror (whose own checksums differ)
are accepted, and so are uncompressed files. A file reaches its final name
only once verified: a failed or interrupted download never leaves anything a
later run could take for good data.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from mnist_precision.base.atomic import atomic_write_bytes
from mnist_precision.base.errors import UserError

# The public mirrors torchvision's MNIST dataset uses, in its order.
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# The widely published MD5s of the uncompressed IDX files.
FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

MIRROR_ENV = "MNIST_MIRROR"
ALLOWED_SCHEMES = ("http", "https", "file")
GZIP_MAGIC = b"\x1f\x8b"


class DownloadError(UserError, RuntimeError):
    """No mirror delivered a verified copy of a file."""


class ChecksumError(ValueError):
    def __init__(self, name: str, expected: str, actual: str):
        super().__init__(f"{name}: MD5 of the decompressed content is {actual}, expected {expected}")
        self.name, self.expected, self.actual = name, expected, actual


@dataclass(frozen=True)
class FetchPolicy:
    timeout_s: float = 30.0
    attempts: int = 2  # per file and mirror; the second after `backoff_s`
    backoff_s: float = 1.0


def mirrors_from_env() -> list[str]:
    """MNIST_MIRROR (one URL or directory) overrides the default mirrors."""
    override = os.environ.get(MIRROR_ENV, "").strip()
    return [override] if override else list(DEFAULT_MIRRORS)


def normalize_mirror(mirror: str) -> str:
    """Return the mirror as a URL ending in '/'; a plain directory becomes file://."""
    scheme = urllib.parse.urlsplit(mirror).scheme
    if not scheme:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    elif scheme not in ALLOWED_SCHEMES:
        raise DownloadError(
            f"mirror {mirror!r} uses the scheme {scheme!r}; only {', '.join(ALLOWED_SCHEMES)} "
            f"mirrors or a plain directory are accepted (check {MIRROR_ENV})"
        )
    return mirror if mirror.endswith("/") else mirror + "/"


def decompress(data: bytes) -> bytes:
    """gzip by its magic bytes, whatever the file is called; else as served."""
    if data[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as error:
            raise ValueError(f"corrupt or truncated gzip: {error}") from None
    return data


def verify(name: str, content: bytes) -> None:
    actual = hashlib.md5(content).hexdigest()
    if actual != FILES[name]:
        raise ChecksumError(name, FILES[name], actual)


def is_verified(path: Path) -> bool:
    try:
        verify(path.name, path.read_bytes())
    except (FileNotFoundError, ChecksumError):
        return False
    return True


def _read_url(url: str, timeout_s: float, label: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "mnist-precision"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        chunks = []
        with tqdm(total=total, unit="B", unit_scale=True, desc=label, leave=False) as bar:
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                bar.update(len(chunk))
    data = b"".join(chunks)
    if total is not None and len(data) != total:
        raise ValueError(f"connection closed after {len(data)} of {total} bytes")
    return data


def _fetch_from_mirror(mirror: str, name: str, policy: FetchPolicy) -> bytes:
    """Try `name.gz`, then `name`, on one mirror; return verified IDX bytes."""
    problems = []
    for candidate in (f"{name}.gz", name):
        url = urllib.parse.urljoin(mirror, candidate)
        for attempt in range(1, policy.attempts + 1):
            try:
                content = decompress(_read_url(url, policy.timeout_s, candidate))
                verify(name, content)
                return content
            except urllib.error.HTTPError as error:
                problems.append(f"{url}: HTTP {error.code} {error.reason}")
                break  # the server answered: asking again will not change it
            except (FileNotFoundError, IsADirectoryError) as error:
                problems.append(f"{url}: {error.strerror}")
                break
            except urllib.error.URLError as error:
                if isinstance(error.reason, FileNotFoundError):
                    problems.append(f"{url}: no such file")
                    break
                problems.append(f"{url}: {error.reason}")
            except ChecksumError as error:
                problems.append(f"{url}: {error}")
                break
            except (OSError, ValueError) as error:  # timeouts, resets, bad gzip
                problems.append(f"{url}: {error}")
            if attempt < policy.attempts:
                time.sleep(policy.backoff_s)
    raise DownloadError("; ".join(problems))


def fetch(name: str, out_dir: Path, mirrors: list[str], policy: FetchPolicy = FetchPolicy()) -> Path:
    """Download one file from the first mirror that serves it verified."""
    target = out_dir / name
    if is_verified(target):
        return target
    failures = []
    for mirror in mirrors:
        try:
            content = _fetch_from_mirror(normalize_mirror(mirror), name, policy)
        except DownloadError as error:
            failures.append(f"  {mirror}: {error}")
            continue
        atomic_write_bytes(target, content)
        return target
    raise DownloadError(
        f"could not download {name} from any mirror:\n" + "\n".join(failures) + "\n"
        f"Set {MIRROR_ENV} to a mirror you can reach (an http(s):// or file:// URL, "
        f"or a directory holding the MNIST files), e.g. {MIRROR_ENV}=/path/to/mnist"
    )


def download_mnist(
    out_dir: str | Path, mirrors: list[str] | None = None, policy: FetchPolicy = FetchPolicy()
) -> list[Path]:
    """Fetch and verify all four MNIST files into `out_dir`."""
    mirrors = mirrors_from_env() if mirrors is None else mirrors
    for mirror in mirrors:
        normalize_mirror(mirror)  # refuse a bad scheme before any work
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [fetch(name, out_dir, mirrors, policy) for name in FILES]
