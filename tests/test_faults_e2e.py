"""Faults a user will meet, provoked for real on the train stage: a clear message,
the right exit code, no half-written output, and no MLflow run left RUNNING."""

from __future__ import annotations

import signal
import time

import pytest
import torch
import yaml

from helpers import Stage, free_port, start_mlflow_server, wait_for_epoch

pytestmark = pytest.mark.e2e


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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupt_checkpoints_and_a_rerun_resumes_bitwise_identically(tmp_path, mnist_data, signum):
    (tmp_path / "whole").mkdir()
    (tmp_path / "stopped").mkdir()
    uninterrupted = Stage(tmp_path / "whole", mnist_data, train={"epochs": 3})
    assert uninterrupted.run().returncode == 0

    stage = Stage(tmp_path / "stopped", mnist_data, train={"epochs": 3})
    process = stage.start()
    wait_for_epoch(stage, 1, process)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert "checkpoint written to checkpoints/train.pt" in err and "run the stage again" in err
    assert (stage.root / "checkpoints" / "train.pt").is_file()
    assert not (stage.root / "models" / "model.pt").exists()
    _, runs = stage.runs()
    assert [r.info.status for r in runs] == ["KILLED"]

    result = stage.run()
    assert result.returncode == 0, result.stderr
    assert "resuming from checkpoints/train.pt" in result.stderr
    assert not (stage.root / "checkpoints" / "train.pt").exists()
    client, runs = stage.runs()
    assert [r.info.status for r in runs] == ["FINISHED"]  # the same run, continued
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")) == [1, 2, 3]

    whole = torch.load(uninterrupted.root / "models" / "model.pt", weights_only=True)
    resumed = torch.load(stage.root / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


def test_corrupt_or_mismatched_checkpoint_is_refused(tmp_path, mnist_data):
    stage = Stage(tmp_path, mnist_data)
    checkpoint = tmp_path / "checkpoints" / "train.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"PK\x03\x04 not really a checkpoint")
    result = stage.run()
    assert result.returncode == 2
    assert "checkpoints/train.pt is corrupt or not a checkpoint" in result.stderr
    assert "delete checkpoints/train.pt to train from the start" in result.stderr

    from mnist_precision import checkpoint as ckpt
    from mnist_precision.params import load

    params = load(tmp_path / "params.yaml")
    written = ckpt.fingerprint(params, torch.device("cpu")) | {"precision": "fp16"}
    ckpt.save(checkpoint, {"progress": {"epoch": 1}}, written, "run-id")
    result = stage.run()
    assert result.returncode == 2
    assert "was written for other params (precision was 'fp16', params say 'fp32')" in result.stderr

    older = torch.load(checkpoint, weights_only=True) | {"format": "mnist-precision-checkpoint/1"}
    torch.save(older, checkpoint)
    result = stage.run()
    assert result.returncode == 2
    assert ("was written by another version of this project (format mnist-precision-checkpoint/1, "
            f"this one reads {ckpt.FORMAT}); delete checkpoints/train.pt") in result.stderr


def test_two_fp32_cpu_runs_give_identical_metrics_and_weights(tmp_path, mnist_data):
    stages = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        stages.append(Stage(tmp_path / name, mnist_data))
        assert stages[-1].run().returncode == 0
    a, b = (torch.load(s.root / "models" / "model.pt", weights_only=True) for s in stages)
    assert all(torch.equal(a[name], b[name]) for name in a)
    plot_a, plot_b = (yaml.safe_load((s.root / "plots" / "train_epochs.json").read_text()) for s in stages)
    assert [(e["loss"], e["accuracy"]) for e in plot_a] == [(e["loss"], e["accuracy"]) for e in plot_b]


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
