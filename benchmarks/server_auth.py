"""What a team server's password checks cost: one train stage through
`mnist-precision server`, with MLflow's auth cache (the default) and without it.

    python benchmarks/server_auth.py [--data data/mnist] [--out benchmarks/results/server_auth.md]

MLflow's basic-auth app checks the password of every request against a scrypt
hash (werkzeug's default, slow on purpose); a training run sends hundreds of
requests. Each arm starts the server on a fresh data folder (PostgreSQL's
server programs must be installed), runs the train stage of params.yaml (one
epoch) against it, and measures the stage's wall time and the CPU time the
server's processes (MLflow and PostgreSQL) spent meanwhile. The two arms run
one after the other on the same machine, the cached one first (the cold file
caches of a first run count against it); the table names the machine.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from stage_folder import stage_folder

from mnist_precision.base.atomic import atomic_write_bytes
from mnist_precision.base.environment import cpu_name
from mnist_precision.core.download import download_mnist
from mnist_precision.operations.server import free_tcp_port

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "mnist-precision")


def tree_cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and all its descendants now alive."""
    root = psutil.Process(pid)
    total = 0.0
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def start_server(folder: Path, credentials: dict[str, str], *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_tcp_port()
    with open(folder / "server.out", "w") as log:  # the server keeps its own copy of the descriptor
        server = subprocess.Popen(
            [CLI, "server", "--data", str(folder / "data"), "--port", str(port), *extra],
            env=os.environ | credentials,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while "MLflow tracking server ready" not in (folder / "server.out").read_text():
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start:\n{(folder / 'server.out').read_text()}")
        time.sleep(0.5)
    return server, f"http://127.0.0.1:{port}"


def train_through(uri: str, data: Path, folder: Path, credentials: dict[str, str]) -> float:
    """Run the train stage in a fresh folder laid out like the project; its wall seconds."""
    stage = folder / "stage"
    stage.mkdir()
    stage_folder(stage, data, {"epochs": 1})
    env = os.environ | credentials | {"MLFLOW_TRACKING_URI": uri}
    started = time.monotonic()
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / "train.py")],
        cwd=stage,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.monotonic() - started


def measure(cache_seconds: int, data: Path) -> tuple[float, float]:
    """(stage wall seconds, server CPU seconds) with the auth cache set to `cache_seconds`."""
    folder = Path(tempfile.mkdtemp(prefix="mnist-precision-auth-"))
    folder.chmod(0o711)  # PostgreSQL runs as its own user where this runs as root
    credentials = {"MLFLOW_TRACKING_USERNAME": "bench", "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(16)}
    server = None
    try:
        server, uri = start_server(folder, credentials, "--auth-cache-seconds", str(cache_seconds))
        before = tree_cpu_seconds(server.pid)
        wall = train_through(uri, data, folder, credentials)
        return wall, tree_cpu_seconds(server.pid) - before
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "mnist")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "server_auth.md")
    args = parser.parse_args()
    download_mnist(args.data)  # MNIST_MIRROR applies
    rows = [(seconds, *measure(seconds, args.data)) for seconds in (60, 0)]
    (cached_wall, cached_cpu), (bare_wall, bare_cpu) = (row[1:] for row in rows)
    table = "\n".join(f"| {seconds} | {wall:.1f} | {cpu:.1f} |" for seconds, wall, cpu in rows)
    report = (
        f"# A train stage through the team server, with and without MLflow's auth cache\n\n"
        f"`python benchmarks/server_auth.py`, {time.strftime('%Y-%m-%d')}, {cpu_name()}, "
        f"{os.cpu_count()} cores: one epoch of params.yaml's recipe through `mnist-precision server` "
        f"(PostgreSQL, basic auth) on this machine, the cached arm first.\n\n"
        "| `--auth-cache-seconds` | stage wall s | server CPU s |\n| ---: | ---: | ---: |\n"
        f"{table}\n\n"
        f"With the cache the stage took {cached_wall / bare_wall:.2f}x the wall time and the server "
        f"{cached_cpu / bare_cpu:.3f}x the CPU time of the same stage without it.\n"
    )
    atomic_write_bytes(args.out, report.encode())
    print(report)


if __name__ == "__main__":
    main()
