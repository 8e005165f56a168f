"""`mnist-precision server`: real PostgreSQL, real MLflow server with basic auth, on 127.0.0.1;
and the pipeline as its client."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import torch

from mnist_precision.core.data import load_split, read_pixels
from mnist_precision.core.model import build_mlp

from helpers import ADMIN, CLI, S3_KEYS, Server, Stage, clean_env, free_port, moto_s3, served, wait_for_epoch

pytestmark = [pytest.mark.slow, pytest.mark.needs_postgres]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_s3(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def server(s3):
    """The file's one team server, its artifacts on S3 (moto) as a team in a cloud keeps them."""
    url, _ = s3
    with served(
        "mnist-precision-team-",
        lambda folder: ("--artifacts-destination", "s3://mlflow-e2e/team"),
        env=clean_env() | ADMIN | S3_KEYS | {"MLFLOW_S3_ENDPOINT_URL": url},
    ) as running:
        yield running


def no_postgres_of(data: Path) -> bool:
    return not [
        p for p in psutil.process_iter(["cmdline"]) if str(data / "postgres") in " ".join(p.info["cmdline"] or [])
    ]


def test_without_credentials_the_server_refuses_to_start(tmp_path):
    result = subprocess.run(
        [CLI, "server", "--data", str(tmp_path / "data")], env=clean_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the server's environment" in result.stderr
    assert not (tmp_path / "data" / "postgres").exists()


def test_a_second_server_on_the_same_data_is_refused(server):
    data = Path(server.log.parent) / "data"
    result = subprocess.run(
        [CLI, "server", "--data", str(data), "--port", str(free_port())],
        env=clean_env() | ADMIN,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"a server is already running on the data folder {data}" in result.stderr


def test_the_server_requires_the_admin_credentials(server):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    env = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MLFLOW_TRACKING_")}
    try:
        with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
            MlflowClient(server.uri).search_experiments()
        os.environ.update(ADMIN)
        assert [e.name for e in MlflowClient(server.uri).search_experiments()] == ["Default"]
    finally:
        for name in ADMIN:
            os.environ.pop(name, None)
        os.environ.update(env)


def test_the_train_stage_logs_through_the_server_and_its_artifacts_land_on_s3(
    server, s3, tmp_path, mnist_data, monkeypatch
):
    import mlflow

    stage = Stage(tmp_path, mnist_data)
    result = stage.run(MLFLOW_TRACKING_URI=server.uri, **ADMIN)  # the client has no S3 keys
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store
    for name, value in ADMIN.items():
        monkeypatch.setenv(name, value)
    client, runs = stage.runs(server.uri)
    [run] = runs
    assert run.info.status == "FINISHED"
    assert run.data.tags["host"]
    assert run.data.params["precision"] == "fp32"
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert {"params.yaml", "metrics", "plots"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server, not a client path
    [logged] = client.search_logged_models([run.info.experiment_id])
    assert logged.name == "model"

    _, bucket = s3
    keys = [item["Key"] for item in bucket.list_objects_v2(Bucket="mlflow-e2e", Prefix="team/")["Contents"]]
    assert any(key.endswith("/params.yaml") for key in keys), keys
    assert any("/model" in key for key in keys), keys
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    mlflow.set_tracking_uri(server.uri)
    model = mlflow.pytorch.load_model(f"models:/{logged.model_id}")  # through the server, not S3 keys
    local = build_mlp([256])
    local.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
    test = load_split(mnist_data, "test")
    pixels = read_pixels(mnist_data, "test")  # the logged model takes raw pixels
    with torch.no_grad():
        predicted = torch.cat([model(images).argmax(dim=1) for images in pixels.split(1000)])
        expected = local(test.images).argmax(dim=1)
    assert torch.equal(predicted, expected)


@pytest.mark.parametrize(
    "credentials",
    [{}, {"MLFLOW_TRACKING_USERNAME": "team-admin", "MLFLOW_TRACKING_PASSWORD": "not-the-password-at-all"}],
)
def test_wrong_or_missing_credentials_fail_before_training(server, tmp_path, mnist_data, credentials):
    result = Stage(tmp_path, mnist_data).run(MLFLOW_TRACKING_URI=server.uri, **credentials)
    assert result.returncode == 2
    assert f"the MLflow tracking server at {server.uri} refused the credentials" in result.stderr
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in result.stderr
    assert "epoch" not in result.stderr and "Traceback" not in result.stderr


def test_sigterm_stops_every_component(server):
    """The last test of the shared server. (A restart on a stopped server's data: the next test, on its own server.)"""
    data = server.log.parent / "data"
    assert len(server.descendants()) >= 2  # postgres (and its workers), the MLflow server
    assert server.stop(signal.SIGTERM) == 0
    assert no_postgres_of(data)
    assert "MLflow tracking server and PostgreSQL stopped" in server.log.read_text()


def test_postgresql_stopped_mid_run_fails_the_stage_naming_the_server(reachable_tmp, tmp_path, mnist_data, monkeypatch):
    """The database goes away under a running stage: the stage fails with a
    message that names the tracking server, and no run claims FINISHED. A
    restart on the same data serves that run (the same cluster, database and
    admin user); SIGINT stops it as SIGTERM does."""
    port = free_port()
    server = Server(reachable_tmp / "data", port).wait_ready()
    for name, value in ADMIN.items():
        monkeypatch.setenv(name, value)
    stage = Stage(tmp_path, mnist_data, train={"epochs": 20})
    # One retry instead of seven: the same path, minutes sooner.
    process = stage.start(MLFLOW_TRACKING_URI=server.uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", **ADMIN)
    try:
        wait_for_epoch(stage, 1, process, server.uri)
        [postmaster] = [
            p
            for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [])[:1]
            and p.info["cmdline"][0].endswith("postgres")
            and str(reachable_tmp / "data" / "postgres") in p.info["cmdline"]
        ]
        postmaster.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
        out, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2, err
    assert f"train: error: the MLflow tracking server at {server.uri} failed" in err
    assert "Traceback" not in err
    assert server.stop() == 2  # it stopped itself when its database went away
    assert "a component stopped unexpectedly" in server.log.read_text()

    again = Server(reachable_tmp / "data", port).wait_ready()
    try:
        _, runs = stage.runs(again.uri)
        assert len(runs) == 1 and runs[0].info.status != "FINISHED"
    finally:
        assert again.stop(signal.SIGINT) == 0
    assert no_postgres_of(reachable_tmp / "data")
