"""MLflow set-up shared by the stages: where the store is, and one run per pipeline.

The store defaults to `sqlite:///<repo root>/mlflow.db` with artifacts in
`<repo root>/mlartifacts`. The repo root is found even when DVC runs a queued
experiment in a temporary copy under `<repo>/.dvc/tmp/exps/`, so every
experiment lands in the user's store rather than in a copy that DVC deletes.
"""

from __future__ import annotations

import base64
import fcntl
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# MLflow's own SQLAlchemy mappings trigger this deprecation warning; it is not
# ours to fix. The filter is process-wide on purpose: the warning also fires in
# MLflow's own threads (system metrics, asynchronous logging), which a
# `warnings.catch_warnings()` block around our calls would not cover (and that
# block is not thread-safe). It matches this one message and nothing else.
warnings.filterwarnings("ignore", message="The ``noload`` loader strategy is deprecated",
                        category=DeprecationWarning)

import mlflow  # noqa: E402
import psutil  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, RunStatus  # noqa: E402
from mlflow.environment_variables import (  # noqa: E402
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
    MLFLOW_HTTP_REQUEST_MAX_RETRIES,
)
from mlflow.exceptions import MlflowException  # noqa: E402

from .errors import UserError  # noqa: E402
from .internals import system_metrics_monitor  # noqa: E402
from .interrupts import Interrupted, deferred, sigterm_raises  # noqa: E402

DVC_QUEUE_DIR = (".dvc", "tmp", "exps")


def repo_root(start: str | Path | None = None) -> Path:
    """The user's repository, also from inside one of DVC's temporary experiment copies."""
    path = Path(start or os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - len(DVC_QUEUE_DIR) + 1):
        if parts[i:i + len(DVC_QUEUE_DIR)] == DVC_QUEUE_DIR:
            return Path(*parts[:i])
    return path


@dataclass(frozen=True)
class Store:
    uri: str
    artifact_location: str | None  # for new experiments; None lets a tracking server decide
    lock: Path | None = None  # serializes creating the store and the experiment

    @contextmanager
    def creating(self) -> Iterator[None]:
        """Hold the store's lock while it may be created: two experiments that
        start together on a fresh SQLite file would both run MLflow's schema
        migrations and fail."""
        if self.lock is None:
            yield
            return
        with open(self.lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


# Queued experiments run side by side and write to one SQLite file: a writer
# waits up to this long for another's lock instead of failing at once
# ("database is locked"; sqlite3's default is 5 s).
SQLITE_BUSY_TIMEOUT_S = 120


def store(root: Path) -> Store:
    """MLFLOW_TRACKING_URI when set, else the repository's own SQLite store.

    `mlflow.set_tracking_uri` exports MLFLOW_TRACKING_URI itself, so a URI
    equal to the repository's store is that store, not a user's other one.
    """
    own = Store(f"sqlite:///{root / 'mlflow.db'}?timeout={SQLITE_BUSY_TIMEOUT_S}",
                (root / "mlartifacts").as_uri(), lock=root / "mlflow.db.lock")
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return Store(uri, None) if uri and uri != own.uri else own


class TrackingError(UserError):
    """The MLflow store cannot be reached, or lacks the run a stage needs."""


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Before any work, check that the tracking server answers and takes our
    credentials. A server that is down (restarting, say) is waited for as
    MLflow's own retries would wait (MLFLOW_HTTP_REQUEST_MAX_RETRIES, 7 by
    default: about 2 minutes; 0 fails at once), then refused by name."""
    if urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
        return
    base = uri.rstrip("/")
    retries = MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(base + "/health", timeout=timeout_s):
                break
        except (OSError, ValueError) as error:
            if attempt == retries:
                raise TrackingError(
                    f"the MLflow tracking server at MLFLOW_TRACKING_URI={uri} is not reachable ({error}); "
                    "start it, or unset MLFLOW_TRACKING_URI to use the repository's own store"
                ) from None
            if attempt == 0:
                print(f"mlflow: waiting for the tracking server at {uri} ({error})", file=sys.stderr)
            time.sleep(min(MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() * 2**attempt, 60))
    request = urllib.request.Request(base + "/api/2.0/mlflow/experiments/search?max_results=1")
    username, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if username or password:
        token = base64.b64encode(f"{username or ''}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            pass
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            given = "none were set" if not (username or password) else f"user {username!r}"
            raise TrackingError(
                f"the MLflow tracking server at {uri} refused the credentials (HTTP {error.code}; {given}): "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that server"
            ) from None
        raise TrackingError(f"the MLflow tracking server at {uri} answered HTTP {error.code} ({error.reason})") from None
    except (OSError, ValueError) as error:
        raise TrackingError(f"the MLflow tracking server at {uri} did not answer ({error})") from None


def configure(root: Path | None = None) -> Store:
    chosen = store(root or repo_root())
    check_reachable(chosen.uri)
    mlflow.set_tracking_uri(chosen.uri)
    return chosen


def experiment_id(name: str, chosen: Store) -> str:
    """Get or create the experiment. MLflow fixes the artifact location at
    creation, so a new experiment gets the store's absolute location. Stages
    of several machines may create it at once on a shared server: the one
    that loses the race takes the winner's."""
    with chosen.creating():
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return mlflow.create_experiment(name, artifact_location=chosen.artifact_location)
        except MlflowException as error:
            # Another machine's stage created it in between (a shared server has no lock of ours).
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return mlflow.get_experiment_by_name(name).experiment_id


class MetricsBuffer:
    """Per-epoch metrics that never hold up training and are never lost.

    `add` hands each epoch's metrics to MLflow's asynchronous logging: its
    background thread sends them, with MLflow's own HTTP retries, while
    training goes on, so a tracking server that restarts costs no training
    time. `flush` waits for every send; one that failed (a server away for
    longer than MLflow's retries) is sent again, with the retries again.
    """

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.client = mlflow.MlflowClient()
        self.sending: list[tuple[list[Metric], object]] = []  # each batch, and the operation that sends it

    def add(self, values: dict[str, float], step: int, series: dict[str, list] | None = None) -> None:
        """`values` at `step`, and each of `series`' [step, value] points under its key."""
        now_ms = int(time.time() * 1000)
        metrics = [Metric(key, float(value), timestamp=now_ms, step=step) for key, value in values.items()]
        metrics += [Metric(key, float(value), timestamp=now_ms, step=at)
                    for key, points in (series or {}).items() for at, value in points]
        self.sending.append((metrics, self.client.log_batch(self.run_id, metrics=metrics, synchronous=False)))

    def flush(self) -> None:
        while self.sending:
            metrics, operation = self.sending[0]
            try:
                operation.wait()
            except MlflowException as error:
                print(f"mlflow: the metrics of epoch {metrics[0].step} did not reach {mlflow.get_tracking_uri()} "
                      f"({error.message.splitlines()[0][:200]}); sending them again", file=sys.stderr)
                self.client.log_batch(self.run_id, metrics=metrics)
            del self.sending[0]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def process_tags() -> dict[str, str]:
    """Where this process runs: a run it leaves RUNNING (SIGKILL, the OOM
    killer, a reboot) can then be told stale by a later stage on this host."""
    me = psutil.Process()
    return {"host": socket.gethostname(), "pid": str(me.pid), "process_start": f"{me.create_time():.2f}"}


def process_state(tags: dict[str, str]) -> str:
    """`alive` or `dead` for a run's process on this host (the same pid with the
    same start time, or not); `unknown` on another host, or where not recorded."""
    if tags.get("host") != socket.gethostname() or "pid" not in tags or "process_start" not in tags:
        return "unknown"
    try:
        started = psutil.Process(int(tags["pid"])).create_time()
    except psutil.NoSuchProcess:
        return "dead"
    return "alive" if abs(started - float(tags["process_start"])) < 0.05 else "dead"  # a reused pid is not it


def mark_killed(client: MlflowClient, run_id: str, reason: str) -> None:
    client.set_tag(run_id, "killed_reason", reason)
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))


def end_stale_runs(experiment_id: str, keep: str | None) -> list[str]:
    """Mark KILLED the runs of the experiment left RUNNING by a process of this
    host that no longer exists, except `keep` (the run a checkpoint continues)."""
    client = MlflowClient()
    ended = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if run.info.run_id != keep and process_state(tags) == "dead":
            mark_killed(client, run.info.run_id, f"its process (pid {tags['pid']} on {tags['host']}) ended without "
                                                 f"ending the run: a hard crash (SIGKILL, out of memory, reboot)")
            ended.append(run.info.run_id)
    return ended


def run_tags() -> dict[str, str]:
    tags = {"host": socket.gethostname()}
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def run_name(precision: str) -> str:
    return f"{precision}-{os.environ.get('DVC_EXP_NAME') or 'workspace'}"


SYSTEM_METRICS_INTERVAL_S = 1


@contextmanager
def node_system_metrics(run_id: str, node_id: str) -> Iterator[None]:
    """Sample this machine's CPU, memory and GPUs into `run_id` as
    `system/<node_id>/...`: each node of a distributed job logs its own."""
    monitor = system_metrics_monitor(run_id, SYSTEM_METRICS_INTERVAL_S, node_id)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


@contextmanager
def run_scope(system_metrics: bool = True, **start_run_kwargs) -> Iterator[mlflow.ActiveRun]:
    """Start (or reopen, with run_id=...) a run and always end it:
    FINISHED on success, KILLED on SIGINT/SIGTERM, FAILED on any error.

    With `system_metrics`, MLflow samples CPU, memory (and GPU, where there is
    one) every second, so the UI shows what each precision cost the machine.
    """
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
        mlflow.set_system_metrics_samples_before_logging(1)
    with sigterm_raises():
        try:
            run = mlflow.start_run(log_system_metrics=system_metrics, **start_run_kwargs)
            mlflow.set_tags(process_tags())  # this process owns the run now (a resume, or evaluate)
        except MlflowException as error:
            raise TrackingError(f"cannot start the MLflow run in {mlflow.get_tracking_uri()}: {error.message}; "
                                "if the store was reset, rerun training with `dvc repro -f train`") from None
        status = RunStatus.to_string(RunStatus.FAILED)
        try:
            yield run
            status = RunStatus.to_string(RunStatus.FINISHED)
        except (KeyboardInterrupt, Interrupted):
            status = RunStatus.to_string(RunStatus.KILLED)
            raise
        except MlflowException as error:  # the store failed under us (a server or its database went away)
            raise store_failed(error) from None
        finally:
            with deferred():  # a SIGTERM now (torchrun stopping a job's ranks) must not leave it RUNNING
                try:
                    mlflow.end_run(status=status)
                except MlflowException as error:
                    raise store_failed(error) from None


def store_failed(error: MlflowException) -> TrackingError:
    """The store's failure as one line that names it, for a stage to report and exit."""
    uri = mlflow.get_tracking_uri()
    kind = "server" if urllib.parse.urlsplit(uri).scheme in ("http", "https") else "store"
    cause = (error.message.strip().splitlines() or [type(error).__name__])[0][:300]
    return TrackingError(f"the MLflow tracking {kind} at {uri.split('?')[0]} failed ({cause}); "
                         "the run is not recorded as finished: check it, then run the stage again")
