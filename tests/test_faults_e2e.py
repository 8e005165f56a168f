"""Faults a user will meet, provoked for real on the train stage: a clear message,
the right exit code, no half-written output, and no MLflow run left RUNNING."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from helpers import CLI, REPO_ROOT, Stage, free_port, make_project, start_mlflow_server, wait_for_epoch

pytestmark = pytest.mark.slow


def test_divergence_fails_the_run_and_records_the_step(tmp_path, mnist_data):
    stage = Stage(tmp_path, mnist_data, train={"lr": 1e30})
    result = stage.run()
    assert result.returncode == 2
    assert "train: error: training diverged: the loss became" in result.stderr and "lower train.lr" in result.stderr
    assert "Traceback" not in result.stderr
    _, runs = stage.runs()
    assert [r.info.status for r in runs] == ["FAILED"]
    assert int(runs[0].data.tags["diverged_at_step"]) >= 1
    assert not (tmp_path / "models").exists()  # no model written


def test_cuda_on_a_machine_without_gpu_is_refused_before_any_work(tmp_path, mnist_data):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    stage = Stage(tmp_path, mnist_data, device="cuda")
    result = stage.run()
    assert result.returncode == 2
    assert "device is 'cuda' but PyTorch sees no CUDA GPU" in result.stderr and "device: auto" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_unreachable_tracking_server_fails_before_training_naming_the_uri(tmp_path, mnist_data):
    uri = f"http://127.0.0.1:{free_port()}"
    result = Stage(tmp_path, mnist_data).run(MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    assert result.returncode == 2
    assert f"MLFLOW_TRACKING_URI={uri} is not reachable" in result.stderr
    assert "epoch" not in result.stderr  # no training started


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory, mnist_data) -> Stage:
    """An uninterrupted 3-epoch fp32 run: what a stopped and resumed one must equal."""
    stage = Stage(tmp_path_factory.mktemp("whole"), mnist_data, train={"epochs": 3})
    assert stage.run().returncode == 0
    return stage


def epoch_figures(stage: Stage) -> list[tuple[float, float]]:
    return [
        (e["loss"], e["accuracy"]) for e in yaml.safe_load((stage.root / "plots" / "train_epochs.json").read_text())
    ]


def test_sigterm_then_sigint_checkpoint_and_the_reruns_resume_bitwise_identically(tmp_path, mnist_data, three_epochs):
    """Also the seed's promise: two fp32 CPU runs of the same params, one of them
    stopped twice (SIGTERM in epoch 2; SIGINT in epoch 3 of the resumed run) and
    resumed each time, end with identical weights and identical per-epoch loss
    and accuracy."""
    stage = Stage(tmp_path, mnist_data, train={"epochs": 3})
    for signum, epoch in ((signal.SIGTERM, 2), (signal.SIGINT, 3)):
        process = stage.start()
        wait_for_checkpoint(stage.root, epoch, process)  # the previous epoch's: the signal lands in this one
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 128 + signum, err
        assert "checkpoint written to checkpoints/train.pt" in err and "run the stage again" in err
        assert ("resuming from checkpoints/train.pt" in err) == (epoch == 3)
        assert checkpoint_epoch(stage.root) == epoch
        assert not (stage.root / "models" / "model.pt").exists()
        _, runs = stage.runs()
        assert [r.info.status for r in runs] == ["KILLED"]

    result = stage.run()
    assert result.returncode == 0, result.stderr
    assert "resuming from checkpoints/train.pt" in result.stderr
    assert not (stage.root / "checkpoints" / "train.pt").exists()
    client, runs = stage.runs()
    assert [r.info.status for r in runs] == ["FINISHED"]  # the same run, continued twice
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")) == [1, 2, 3]

    whole = torch.load(three_epochs.root / "models" / "model.pt", weights_only=True)
    resumed = torch.load(stage.root / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    assert epoch_figures(stage) == epoch_figures(three_epochs)


def test_a_corrupt_checkpoint_is_refused(tmp_path, mnist_data):
    """(Checkpoints of other params or another version: tests/test_checkpoint.py.)"""
    stage = Stage(tmp_path, mnist_data)
    checkpoint = tmp_path / "checkpoints" / "train.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"PK\x03\x04 not really a checkpoint")
    result = stage.run()
    assert result.returncode == 2
    assert "checkpoints/train.pt is corrupt or not a checkpoint" in result.stderr
    assert "delete checkpoints/train.pt to train from the start" in result.stderr


def test_tracking_server_restart_mid_training_loses_no_epoch(tmp_path, mnist_data):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    (tmp_path / "work").mkdir()
    stage = Stage(tmp_path / "work", mnist_data, train={"epochs": 6})
    with start_mlflow_server(server_dir, port, f"sqlite:///{server_dir / 'mlflow.db'}", stage.env) as server:
        process = stage.start(MLFLOW_TRACKING_URI=uri)
        wait_for_epoch(stage, 1, process, uri)
        server.terminate()
        server.wait(timeout=30)
    time.sleep(2)  # epochs go by while the server is away
    with start_mlflow_server(server_dir, port, f"sqlite:///{server_dir / 'mlflow.db'}", stage.env):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        client, runs = stage.runs(uri)
        assert [r.info.status for r in runs] == ["FINISHED"]
        assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")) == list(range(1, 7))


# Injected into the train stage's interpreter (sitecustomize): the n-th write of
# checkpoints/train.pt gets half its bytes on disk, then the process is SIGKILLed.
KILL_DURING_CHECKPOINT_WRITE = """
import os, pathlib, signal
_write_bytes, _writes = pathlib.Path.write_bytes, []
def write_bytes(self, data):
    if self.name.startswith(".train.pt."):
        _writes.append(self)
        if len(_writes) == int(os.environ["KILL_ON_CHECKPOINT_WRITE"]):
            _write_bytes(self, data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    return _write_bytes(self, data)
pathlib.Path.write_bytes = write_bytes
"""


def checkpoint_epoch(root: Path) -> int | None:
    """The epoch that checkpoints/train.pt continues with, or None where there is none."""
    try:
        return torch.load(root / "checkpoints" / "train.pt", weights_only=True)["state"]["progress"]["epoch"]
    except FileNotFoundError:
        return None


def wait_for_checkpoint(root: Path, epoch: int, process: subprocess.Popen) -> None:
    """Until checkpoints/train.pt continues with `epoch`: the periodic checkpoint
    of the epoch before is written. Polled every 20 ms, a signal sent next lands
    early in `epoch`."""
    deadline = time.monotonic() + 120
    while checkpoint_epoch(root) != epoch:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)


def test_sigkill_mid_epoch_and_dvc_repro_resume_from_the_last_periodic_checkpoint(tmp_path, mnist_mirror, three_epochs):
    """The params of `three_epochs`, through `dvc repro`: killed in the third
    epoch, resumed from the end of the second, it ends with the same weights."""
    project = make_project(tmp_path, mnist_mirror, epochs=3)
    project.run("dvc", "repro", "download")
    repro = subprocess.Popen(
        ["dvc", "repro"], cwd=tmp_path, env=project.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline, seen = time.monotonic() + 300, {}
    while 3 not in seen:  # the checkpoint of the end of epoch 1 (epoch 2 next), then of epoch 2
        assert repro.poll() is None and time.monotonic() < deadline
        seen.setdefault(checkpoint_epoch(tmp_path), time.monotonic())
        time.sleep(0.02)
    time.sleep(0.4 * (seen[3] - seen[2]))  # 40% into epoch 3
    train = next(
        child
        for child in psutil.Process(repro.pid).children(recursive=True)
        if child.cmdline()[-1:] == ["stages/train.py"] and "python" in Path(child.cmdline()[0]).name
    )
    train.kill()  # SIGKILL: the stage's interpreter, as the OOM killer would
    assert repro.wait(timeout=120) != 0
    assert checkpoint_epoch(tmp_path) == 3
    client, _, runs = project.mlflow_runs()
    assert [r.info.status for r in runs] == ["RUNNING"]  # nothing could end it
    crashed = runs[0].info.run_id

    result = project.run("dvc", "repro")
    assert "resuming from checkpoints/train.pt at step 1876" in result.stdout + result.stderr  # the end of epoch 2
    client, _, runs = project.mlflow_runs()
    assert [(r.info.run_id, r.info.status) for r in runs] == [(crashed, "FINISHED")]  # the same run
    assert sorted(m.step for m in client.get_metric_history(crashed, "train_loss")) == [1, 2, 3]
    assert "test_accuracy" in runs[0].data.metrics
    whole = torch.load(three_epochs.root / "models" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


def test_a_checkpoint_torn_by_sigkill_is_never_loaded(tmp_path, mnist_data, three_epochs):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(KILL_DURING_CHECKPOINT_WRITE)
    (tmp_path / "stage").mkdir()
    stage = Stage(tmp_path / "stage", mnist_data, train={"epochs": 3})
    result = stage.run(PYTHONPATH=str(tmp_path / "inject"), KILL_ON_CHECKPOINT_WRITE="2")
    assert result.returncode == -signal.SIGKILL
    torn = list((stage.root / "checkpoints").glob(".train.pt.*.tmp"))
    assert len(torn) == 1 and torn[0].stat().st_size > 0  # half of the second checkpoint
    assert checkpoint_epoch(stage.root) == 2  # the first, whole

    result = stage.run()
    assert result.returncode == 0, result.stderr
    assert "resuming from checkpoints/train.pt at step 938" in result.stderr  # the end of epoch 1
    assert not list((stage.root / "checkpoints").glob(".train.pt.*"))
    whole = torch.load(three_epochs.root / "models" / "model.pt", weights_only=True)
    resumed = torch.load(stage.root / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


def test_a_run_left_running_by_a_dead_process_is_ended_killed(tmp_path, mnist_data):
    stage = Stage(tmp_path, mnist_data, train={"epochs": 2})
    process = stage.start()
    deadline = time.monotonic() + 120
    while True:  # the run exists: kill it before its first epoch ends (no checkpoint)
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        client, runs = stage.runs()
        if runs:
            break
        time.sleep(0.05)
    process.kill()
    process.communicate(timeout=60)
    assert checkpoint_epoch(stage.root) is None
    dead = runs[0].info.run_id
    elsewhere = client.create_run(
        runs[0].info.experiment_id,
        run_name="fp32-elsewhere",
        tags={"host": "another-host", "pid": "1", "process_start": "0"},
    ).info.run_id

    listed = subprocess.run([CLI, "runs", "--stale"], cwd=stage.root, env=stage.env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "2 run(s) of experiment 'mnist-precision'" in listed.stdout
    assert f"{dead}  fp32-workspace" in listed.stdout and "(its process is gone)" in listed.stdout
    assert f"{elsewhere}  fp32-elsewhere" in listed.stdout and "another host, or not recorded" in listed.stdout

    params = yaml.safe_load((stage.root / "params.yaml").read_text()) | {"seed": 1}
    params["train"]["max_steps"] = 10  # a new run that ends: what it learns is not the point
    (stage.root / "params.yaml").write_text(yaml.safe_dump(params))
    result = stage.run()
    assert result.returncode == 0, result.stderr
    assert (
        f"train: marked KILLED 1 run(s) left RUNNING by a process of this host that no longer exists: {dead}"
        in result.stderr
    )
    client, runs = stage.runs()
    status = {r.info.run_id: r.info.status for r in runs}
    assert status.pop(dead) == "KILLED" and status.pop(elsewhere) == "RUNNING"  # another host's: not touched
    assert list(status.values()) == ["FINISHED"]
    assert "hard crash" in client.get_run(dead).data.tags["killed_reason"]

    ended = subprocess.run(
        [CLI, "runs", "--mark-killed", elsewhere], cwd=stage.root, env=stage.env, capture_output=True, text=True
    )
    assert ended.returncode == 0 and f"{elsewhere}: KILLED" in ended.stdout
    assert "RUNNING" not in {r.info.status for r in stage.runs()[1]}
    again = subprocess.run(
        [CLI, "runs", "--mark-killed", elsewhere], cwd=stage.root, env=stage.env, capture_output=True, text=True
    )
    assert again.returncode == 2 and f"run {elsewhere} is KILLED, not RUNNING: nothing to end" in again.stderr


def file_size_limit(limit: int = 4 * 2**20):
    """A child's preexec: files past `limit` bytes cannot be written (EFBIG), as on a full disk."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_fails_the_run_and_keeps_the_previous_checkpoint(tmp_path, mnist_data):
    """No room for the next checkpoint (a 4 MB file-size limit; the checkpoint of
    this 2048-wide network is 6.5 MB): a clear message, the last one intact."""
    # Epochs of 150 steps: what counts is the checkpoint's size, not the training.
    stage = Stage(tmp_path, mnist_data, train={"epochs": 5, "hidden": [2048], "max_steps": 150})
    process = stage.start()
    wait_for_epoch(stage, 1, process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    checkpoint = tmp_path / "checkpoints" / "train.pt"
    before = checkpoint.read_bytes()
    assert len(before) > 4 * 2**20

    limited = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / "train.py")],
        cwd=tmp_path,
        env=stage.env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=file_size_limit(),
    )
    assert limited.returncode == 2, limited.stderr
    assert "resuming from checkpoints/train.pt" in limited.stderr
    assert "train: error: no room to write checkpoints/train.pt (File too large; " in limited.stderr
    assert "MiB free on its filesystem)" in limited.stderr and "Traceback" not in limited.stderr
    assert checkpoint.read_bytes() == before  # the previous checkpoint, whole
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["train.pt"]  # no torn temporary file
    assert not (tmp_path / "models").exists()
    _, runs = stage.runs()
    assert [r.info.status for r in runs] == ["FAILED"]


def test_a_full_disk_at_the_model_keeps_the_previous_outputs(tmp_path, mnist_data):
    """No room for the model of a second run (a 4 MB file-size limit, a 6.5 MB
    model): the first run's model and metrics stay as they were."""
    # 100 steps: the model's size is what counts here, not its training.
    stage = Stage(tmp_path, mnist_data, train={"hidden": [2048], "max_steps": 100})
    assert stage.run().returncode == 0
    kept = (
        tmp_path / "models" / "model.pt",
        tmp_path / "models" / "mlflow_run.json",
        tmp_path / "metrics" / "train.json",
    )
    outputs = {path: path.read_bytes() for path in kept}
    assert len(outputs[tmp_path / "models" / "model.pt"]) > 4 * 2**20

    params = tmp_path / "params.yaml"
    params.write_text(params.read_text().replace("seed: 0", "seed: 1"))
    limited = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / "train.py")],
        cwd=tmp_path,
        env=stage.env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=file_size_limit(),
    )
    assert limited.returncode == 2, limited.stderr
    assert "train: error: no room to write models/model.pt (File too large; " in limited.stderr
    assert "Traceback" not in limited.stderr
    assert {path: path.read_bytes() for path in outputs} == outputs
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["mlflow_run.json", "model.pt"]  # nothing torn
    _, runs = stage.runs()
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
