"""Shared fixtures (the real MNIST files, served over HTTP on 127.0.0.1), and
the hooks that skip what this machine cannot run, with the command that fixes it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from plots_page import VEGA_PACKAGES

from mnist_precision.core.download import download_mnist

from helpers import SHARED_MNIST, moto_s3, serve_directory

# .ci/run sets it: there every feature must be proven, so a skipped test fails the run.
NO_SKIPS = "MNIST_PRECISION_NO_SKIPS"


def missing_system_parts() -> dict[str, str]:
    """Each marker whose system part is absent here, with why and the command that installs it."""
    missing = {}
    if not (shutil.which("initdb") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))):
        missing["needs_postgres"] = "PostgreSQL's server programs are not installed: apt-get install postgresql"
    if not shutil.which("chromium"):
        missing["needs_chromium"] = "Chromium is not installed: apt-get install chromium"
    if not (VEGA_PACKAGES / "vega-embed").is_dir():
        missing["needs_vega"] = "vega is not installed from npm: npm ci --prefix tests/vega"
    return missing


# The slow files that take longest, longest first (their seconds: docs/testing.md).
# pytest-xdist hands each worker whole files in collection order (.ci/run passes
# --no-loadscope-reorder, since by default it orders files by their number of
# tests), so a long file started last would keep one worker busy alone at the end.
LONGEST_FIRST = (
    "test_sweep_e2e.py",
    "test_faults_e2e.py",
    "test_distributed_e2e.py",
    "test_pipeline_e2e.py",
    "test_team_e2e.py",
    "test_server_e2e.py",
)


def longest_first(item) -> int:
    name = item.path.name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_configure(config):
    """One intra-op thread for the torch work the tests do in their own process:
    their networks are too small for a second one to help, and with two workers
    on two cores it only waits for a core (test_numerics.py measured: the same
    61 s on one thread as on two, 60 CPU-s against 105; docs/testing.md)."""
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    items.sort(key=longest_first)  # stable: each file's tests keep their order
    missing = missing_system_parts()
    if any(item.get_closest_marker("gpu") for item in items):
        import torch

        if not torch.cuda.is_available():
            missing["gpu"] = "needs a CUDA GPU (benchmarks/gpu_check.sh runs these on one)"
    for item in items:
        for marker, why in missing.items():
            if item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=why))


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get(NO_SKIPS) and skipped and exitstatus == 0:
        reporter.write_line(
            f"{len(skipped)} test(s) skipped where {NO_SKIPS} is set: every feature must be proven "
            "here; install what their reasons name",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def mnist_mirror() -> Iterator[str | None]:
    """A URL serving the real MNIST files on 127.0.0.1, or None where the offline
    copy is absent (a user's own machine): then the public mirrors are used."""
    if not SHARED_MNIST.is_dir():
        yield None
        return
    with serve_directory(SHARED_MNIST) as url:
        yield url


@pytest.fixture(scope="session")
def mnist_data(tmp_path_factory, mnist_mirror) -> Path:
    """The four MNIST files, downloaded once (through the real downloader) for the stage tests."""
    data = tmp_path_factory.mktemp("mnist")
    download_mnist(data, [mnist_mirror] if mnist_mirror else None)
    return data


@pytest.fixture
def reachable_tmp():
    """A folder that the `postgres` user can reach (pytest's own are closed to others)."""
    folder = Path(tempfile.mkdtemp(prefix="mnist-precision-team-"))
    folder.chmod(0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def s3_endpoint(tmp_path):
    """moto's S3-compatible server on 127.0.0.1, with a bucket `mlflow-e2e`."""
    with moto_s3(tmp_path) as endpoint:
        yield endpoint
