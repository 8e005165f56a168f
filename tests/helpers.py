"""Helpers the tests share: the project copied into a fresh git repository, servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real data set, laid beside the checkout on these machines (and in CI).
SHARED_MNIST = REPO_ROOT.parent / "shared" / "mnist"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def serve_directory(directory: Path, handler=QuietHandler) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1 (a free port); yield its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Project:
    root: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`args` in the project's root, with `env` added to the project's environment; it must exit 0."""
        # Output goes to files, not pipes: `dvc queue start` leaves workers
        # behind that inherit its output, and a pipe would stay open with them.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            code = subprocess.run(
                args,
                cwd=self.root,
                env=self.env | (env or {}),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                timeout=timeout,
            ).returncode
            out.seek(0), err.seek(0)
            result = subprocess.CompletedProcess(args, code, out.read(), err.read())
        assert code == 0, f"{' '.join(args)} exited {code}\n{result.stdout}\n{result.stderr}"
        return result

    def json(self, relative: str):
        return json.loads((self.root / relative).read_text())

    def mlflow_runs(self):
        """The training runs of the project's experiment (not the report's parent runs)."""
        from mnist_precision.tracking.run_types import is_training_run

        client = sqlite_client(self.root)
        experiment = client.get_experiment_by_name("mnist-precision")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return client, experiment, [run for run in runs if is_training_run(run.data.tags)]


def sqlite_client(root: Path):
    """A client of the SQLite store in `root`, opened under the lock the stages
    hold while they may create it: a client that opens a half-created store
    runs MLflow's schema migrations beside the stage's, and one of them fails
    ("Online migration expected to match one row ... 0 found")."""
    from mlflow import MlflowClient

    with open(root / "mlflow.db.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")  # which creates the store, if it must


def project_files() -> list[str]:
    """What a clone of the project holds: tracked files, and new ones git does not ignore."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [name for name in listing.split("\0") if name and (REPO_ROOT / name).is_file()]


# What the tests' runs change in params.yaml's `train` section: one epoch, on one
# thread (params.yaml says auto: 2 here), since two test workers share the two
# cores and a second thread only waits for one (docs/testing.md).
TEST_TRAIN = {"epochs": 1, "threads": 1}


def make_project(root: Path, mnist_mirror: str | None, **train) -> Project:
    """The project as a user's clone, in a fresh git repository, its `train`
    section set to TEST_TRAIN, then to `train`."""
    for name in project_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"] |= TEST_TRAIN | train
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "MNIST_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env |= {
        "GIT_AUTHOR_NAME": "e2e",
        "GIT_AUTHOR_EMAIL": "e2e@localhost",
        "GIT_COMMITTER_NAME": "e2e",
        "GIT_COMMITTER_EMAIL": "e2e@localhost",
        # Else every dvc command spawns a daemon that tries to post a usage
        # report (measured: 0.12 CPU-s a command, beside its 0.5).
        "DVC_NO_ANALYTICS": "1",
    }
    if mnist_mirror:
        env["MNIST_MIRROR"] = mnist_mirror
    project = Project(root, env)
    project.run("git", "init", "-q", "-b", "main")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-q", "-m", "project")
    return project


def queue_workers(project: Project) -> list[psutil.Process]:
    """The `dvc exp queue-worker` processes of this repository (they run in its root)."""
    return [
        process
        for process in psutil.process_iter(["cmdline", "cwd"])
        if "queue-worker" in (process.info["cmdline"] or []) and process.info["cwd"] == str(project.root)
    ]


def stop_queue(project: Project, timeout: float = 120) -> None:
    """Stop the queue's workers, killing the experiments they still run, and wait
    until their processes are gone.

    `dvc queue status` says "0 active, 0 idle" as soon as the workers stop
    answering, while they still finish their task; a `dvc queue start` then
    spawns workers of the same names beside them, which were seen to stop
    after one task each, leaving the rest queued."""
    project.run("dvc", "queue", "stop", "--kill")
    _, alive = psutil.wait_procs(queue_workers(project), timeout=timeout)
    if alive:
        pytest.fail(f"the DVC queue's workers {[p.pid for p in alive]} did not exit in {timeout} s")


@contextlib.contextmanager
def running_queue(project: Project, jobs: int = 1) -> Iterator[None]:
    """`dvc queue start --jobs N`; however the block ends, the workers are stopped and waited for."""
    project.run("dvc", "queue", "start", "--jobs", str(jobs))
    try:
        yield
    finally:
        stop_queue(project)


def task_results(project: Project) -> list[tuple[str, int]]:
    """The result files of DVC's celery queue (one per task, rewritten as its
    state changes), with their mtimes.

    Not the queue's other files: its workers' logs grow with every line an
    experiment prints, and `dvc queue status` itself writes control messages
    to the broker, so watching those asked for the status every few seconds."""
    results = project.root / ".dvc" / "tmp" / "exps" / "celery" / "result"
    return sorted((path.name, path.stat().st_mtime_ns) for path in results.iterdir()) if results.is_dir() else []


def task_state(line: str) -> str:
    """A `dvc queue status` row's state: its last column ("" for a blank line)."""
    return (line.split() or [""])[-1]


@dataclass(frozen=True)
class QueueEnd:
    """`dvc queue status` once nothing is queued or running, and what its failed experiments printed."""

    status: str
    failed_logs: str

    def count(self, state: str) -> int:
        """The tasks in `state` (Success, Failed): the status table's last column,
        never a word of an experiment's log (MLflow prints "Successfully ...")."""
        return sum(1 for line in self.status.splitlines() if task_state(line) == state)

    def __str__(self) -> str:
        return self.status + self.failed_logs


def wait_for_queue(project: Project, timeout: float = 600) -> QueueEnd:
    """The queue's status once nothing is queued or running, with the logs of
    the experiments that failed (what a failed assertion should show).

    `dvc queue status` costs a core about a second: it is asked when a task's
    result appears, or every 20 s, not every few seconds, which took that core
    from the experiments."""
    deadline = time.monotonic() + timeout
    seen, asked = None, 0.0
    while time.monotonic() < deadline:
        results = task_results(project)
        if results != seen or time.monotonic() - asked > 20:
            seen, asked = results, time.monotonic()
            status = project.run("dvc", "queue", "status").stdout
            if not any(word in status for word in ("Queued", "Running")):
                return QueueEnd(status, "".join(queue_logs(project, status, ("Failed",))))
        time.sleep(1)
    pytest.fail(f"the DVC queue did not finish in {timeout} s:\n{status}")


def queue_logs(project: Project, status: str, states: tuple[str, ...] = ("Success", "Failed")) -> Iterator[str]:
    """What the experiments in `states` printed, for `dvc queue status`'s `status`."""
    for line in status.splitlines():
        if task_state(line) in states:
            name = line.split()[1]
            logs = subprocess.run(
                ["dvc", "queue", "logs", name], cwd=project.root, env=project.env, capture_output=True, text=True
            )
            yield f"\n--- dvc queue logs {name}\n{logs.stdout[-4000:]}{logs.stderr[-2000:]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mlflow_process(arguments: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """The venv's `mlflow` with `arguments`, its output appended to `log`."""
    with open(log, "a") as output:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), *arguments],
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def wait_for_http(server: subprocess.Popen, url: str, log: Path, timeout: float, what: str) -> None:
    """Until `url` answers; the test fails with the server's log if it exits or takes longer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not start:\n{log.read_text()}")
            time.sleep(0.5)


@contextlib.contextmanager
def start_mlflow_server(cwd: Path, port: int, store_uri: str, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """`mlflow server` as the README starts it, bound to 127.0.0.1; SIGTERM on exit."""
    log = cwd / f"mlflow-server-{port}.log"
    command = ["server", "--backend-store-uri", store_uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = mlflow_process(command, cwd, env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, log)
    try:
        wait_for_http(server, f"http://127.0.0.1:{port}/health", log, 90, "mlflow server")
        yield server
    finally:
        if server.poll() is None:
            server.terminate()
            assert server.wait(timeout=30) in (0, -15), log.read_text()


@contextlib.contextmanager
def served_model(project: Project, model_id: str, port: int) -> Iterator[subprocess.Popen]:
    """`mlflow models serve` on a logged model of the project's store, as
    docs/experiments.md shows it; the server and its workers stopped on exit."""
    log = project.root / f"mlflow-models-serve-{port}.log"
    command = ["models", "serve", "-m", f"models:/{model_id}", "--env-manager", "local"]
    env = project.env | {"MLFLOW_TRACKING_URI": f"sqlite:///{project.root / 'mlflow.db'}"}
    server = mlflow_process([*command, "--host", "127.0.0.1", "--port", str(port)], project.root, env, log)
    try:
        wait_for_http(server, f"http://127.0.0.1:{port}/ping", log, 120, "mlflow models serve")
        yield server
    finally:
        workers = psutil.Process(server.pid).children(recursive=True) if server.poll() is None else []
        server.terminate()
        server.wait(timeout=30)
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.wait(timeout=30)


class Stage:
    """A directory laid out like the project, where the real train stage runs."""

    def __init__(self, root: Path, data: Path, **overrides):
        self.root = root
        params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
        params["train"] |= TEST_TRAIN | overrides.pop("train", {})
        params |= overrides
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        (root / "data").mkdir()
        (root / "data" / "mnist").symlink_to(data)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}

    def start(self, **env) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "stages" / "train.py")],
            cwd=self.root,
            env=self.env | env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, **env) -> subprocess.CompletedProcess:
        process = self.start(**env)
        out, err = process.communicate(timeout=300)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def runs(self, uri: str | None = None):
        from mlflow import MlflowClient

        client = MlflowClient(uri) if uri else sqlite_client(self.root)
        experiment = client.get_experiment_by_name("mnist-precision")
        return client, client.search_runs([experiment.experiment_id]) if experiment else []


def wait_for_epoch(stage: Stage, epoch: int, process: subprocess.Popen, uri: str | None = None) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        client, runs = stage.runs(uri)
        if runs and any(m.step >= epoch for m in client.get_metric_history(runs[0].info.run_id, "train_loss")):
            return
        time.sleep(0.2)
    pytest.fail(f"epoch {epoch} was never logged")


ADMIN = {"MLFLOW_TRACKING_USERNAME": "team-admin", "MLFLOW_TRACKING_PASSWORD": "a-long-test-password-0451"}
CLI = str(Path(sys.executable).parent / "mnist-precision")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}


class Server:
    """`mnist-precision server` in a subprocess, until its URI line appears."""

    def __init__(self, data: Path, port: int, *extra: str, env: dict[str, str] | None = None):
        self.log = data.parent / f"server-{port}.log"
        self.output = open(self.log, "a")
        self.process = subprocess.Popen(
            [CLI, "server", "--data", str(data), "--port", str(port), *extra],
            env=env if env is not None else clean_env() | ADMIN,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.uri = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 180) -> Server:
        deadline = time.monotonic() + timeout
        while "MLflow tracking server ready" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the server did not start:\n{self.log.read_text()}")
            time.sleep(0.5)
        return self

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, signum: int = signal.SIGTERM) -> int:
        children = self.descendants()
        if self.output.closed:
            return self.process.wait()
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout=120)
        gone, alive = psutil.wait_procs(children, timeout=30)
        for process in alive:
            process.kill()
        self.output.close()
        assert not alive, f"left behind: {alive}"
        return code


@contextlib.contextmanager
def served(
    prefix: str, extra: Callable[[Path], tuple[str, ...]] = lambda folder: (), env: dict[str, str] | None = None
) -> Iterator[Server]:
    """A server in a folder of its own (PostgreSQL's user must reach it), stopped
    cleanly at the end; `extra(folder)` gives more options (files made there)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o711)
    running = Server(folder / "data", free_port(), *extra(folder), env=env)
    try:
        yield running.wait_ready()
        assert running.stop() == 0, running.log.read_text()
    finally:
        running.stop()
        shutil.rmtree(folder, ignore_errors=True)


S3_KEYS = {"AWS_ACCESS_KEY_ID": "e2e-key", "AWS_SECRET_ACCESS_KEY": "e2e-secret", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def moto_s3(log_folder: Path) -> Iterator[tuple[str, object]]:
    """moto's S3-compatible server on 127.0.0.1, with a bucket `mlflow-e2e`: its URL and a boto3 client."""
    import boto3

    port = free_port()
    log = open(log_folder / "moto.log", "w")
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                s3 = boto3.client(
                    "s3",
                    endpoint_url=url,
                    **{k.lower(): v for k, v in S3_KEYS.items() if k != "AWS_DEFAULT_REGION"},
                    region_name="us-east-1",
                )
                s3.create_bucket(Bucket="mlflow-e2e")
                break
            except Exception:
                assert moto.poll() is None and time.monotonic() < deadline, (log_folder / "moto.log").read_text()
                time.sleep(0.5)
        yield url, s3
    finally:
        moto.terminate()
        moto.wait(timeout=30)
        log.close()
