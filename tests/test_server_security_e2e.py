"""`mnist-precision server` on a network: HTTPS, Host names, least privilege, no secret where it does not belong.

One server over TLS (a certificate made here with openssl) on real PostgreSQL,
and the real train stage as its client.
"""

from __future__ import annotations

import base64
import pwd
import ssl
import subprocess
import urllib.error
import urllib.request
import urllib.response
from pathlib import Path

import psutil
import pytest

from helpers import ADMIN, CLI, REPO_ROOT, Stage, clean_env, served

pytestmark = [pytest.mark.slow, pytest.mark.needs_postgres]

READER = ("reader", "a-readers-password-7781")
STRANGER = ("stranger", "a-strangers-password-3390")


def make_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_server():
    certificates = []

    def tls_options(folder: Path) -> tuple[str, ...]:
        certificates.extend(make_certificate(folder))
        return "--tls-cert", str(certificates[0]), "--tls-key", str(certificates[1])

    with served("mnist-precision-tls-", tls_options) as running:
        running.uri = running.uri.replace("http://", "https://")
        running.cert = certificates[0]
        yield running


def as_user(user: tuple[str, str], server) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": server.uri,
        "MLFLOW_TRACKING_USERNAME": user[0],
        "MLFLOW_TRACKING_PASSWORD": user[1],
        "MLFLOW_TRACKING_SERVER_CERT_PATH": str(server.cert),
    }


def client_as(user: tuple[str, str], server, monkeypatch):
    from mlflow import MlflowClient

    for name, value in as_user(user, server).items():
        monkeypatch.setenv(name, value)
    return MlflowClient(server.uri)


def users(server, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, "server", "users", *args],
        input=f"{password}\n" if password else "",
        env=clean_env() | as_user(tuple(ADMIN.values()), server),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plain_http_beyond_loopback_is_refused_naming_both_ways_out(tmp_path):
    result = subprocess.run(
        [CLI, "server", "--data", str(tmp_path / "data"), "--host", "0.0.0.0"],
        env=clean_env() | ADMIN,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0 over plain HTTP" in result.stderr and "in the clear" in result.stderr
    assert "--tls-cert FILE --tls-key FILE" in result.stderr and "--insecure-http" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_a_pipeline_run_through_https_finishes(tls_server, tmp_path, mnist_data, monkeypatch):
    stage = Stage(tmp_path, mnist_data, train={"max_steps": 50})
    result = stage.run(**as_user(tuple(ADMIN.values()), tls_server))
    assert result.returncode == 0, result.stderr
    client = client_as(tuple(ADMIN.values()), tls_server, monkeypatch)
    [run] = client.search_runs([client.get_experiment_by_name("mnist-precision").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["train_accuracy"] > 0.5


def test_a_client_without_the_ca_fails_before_training_naming_the_variable(tls_server, tmp_path, mnist_data):
    env = as_user(tuple(ADMIN.values()), tls_server)
    del env["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    result = Stage(tmp_path, mnist_data).run(**env)
    assert result.returncode == 2
    assert "presented a certificate this client does not trust" in result.stderr
    assert "set MLFLOW_TRACKING_SERVER_CERT_PATH to the file of the CA" in result.stderr
    assert "epoch" not in result.stderr and "Traceback" not in result.stderr


def test_a_reader_reads_and_is_refused_logging_and_a_stranger_sees_nothing(
    tls_server, tmp_path, mnist_data, monkeypatch
):
    for name, password in (READER, STRANGER):
        added = users(tls_server, "add", name, password=password)
        assert added.returncode == 0, added.stderr
    granted = users(tls_server, "grant", READER[0], "mnist-precision", "read")
    assert granted.returncode == 0, granted.stderr
    assert users(tls_server, "add", "weak", password="short").returncode == 2  # too short: refused, not created

    reader = client_as(READER, tls_server, monkeypatch)
    experiment = reader.get_experiment_by_name("mnist-precision")
    assert experiment is not None and reader.search_runs([experiment.experiment_id])  # READ: it sees the runs
    result = Stage(tmp_path, mnist_data, train={"max_steps": 5}).run(**as_user(READER, tls_server))
    assert result.returncode == 2
    assert (
        "refused user 'reader' (HTTP 403): logging a run needs the EDIT permission on 'mnist-precision'"
        in result.stderr
    )
    assert "mnist-precision server users grant reader mnist-precision EDIT" in result.stderr
    # With EDIT on the experiment the run is logged; the registered model is the
    # admin's (its first run made it): the model stays on the run, with a warning.
    assert users(tls_server, "grant", READER[0], "mnist-precision", "edit").returncode == 0
    (tmp_path / "edit").mkdir()
    result = Stage(tmp_path / "edit", mnist_data, train={"max_steps": 5}).run(**as_user(READER, tls_server))
    assert result.returncode == 0, result.stderr
    assert "refused user 'reader' to add a version to registered model 'mnist-precision'" in result.stderr
    assert "the model stays logged on its run" in result.stderr and "Traceback" not in result.stderr

    stranger = client_as(STRANGER, tls_server, monkeypatch)
    assert "mnist-precision" not in [e.name for e in stranger.search_experiments()]  # no grant: not visible


def request(
    server, path: str, host: str | None = None, user: tuple[str, str] = tuple(ADMIN.values())
) -> urllib.response.addinfourl | urllib.error.HTTPError:
    headers = {"Authorization": "Basic " + base64.b64encode(":".join(user).encode()).decode()}
    if host:
        headers["Host"] = host
    try:
        return urllib.request.urlopen(
            urllib.request.Request(server.uri + path, headers=headers),
            timeout=10,
            context=ssl.create_default_context(cafile=str(server.cert)),
        )
    except urllib.error.HTTPError as error:
        return error


def test_a_foreign_host_header_and_wrong_credentials_are_refused_and_tls_sends_hsts(tls_server):
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    answer = request(tls_server, search)
    assert answer.status == 200 and answer.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert request(tls_server, search, host="rebinding.example.com").status in (400, 403)
    # Below the login throttle's default of 10 failures (test_server_guard_e2e.py tests the throttle).
    codes = {request(tls_server, search, user=("wrong-user", f"wrong-password-{i}")).status for i in range(6)}
    assert codes == {401}


def test_no_secret_where_it_does_not_belong(tls_server, monkeypatch):
    data = tls_server.log.parent / "data"
    secrets = [
        ADMIN["MLFLOW_TRACKING_PASSWORD"],
        READER[1],
        STRANGER[1],
        (data / "secrets" / "postgres-password").read_text().strip(),
    ]
    command_lines = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
    assert not [line for line in command_lines for secret in secrets if secret in line]  # `ps`
    logs = [path.read_text(errors="replace") for path in (data / "logs").iterdir()] + [tls_server.log.read_text()]
    assert not [secret for secret in secrets for log in logs if secret in log]
    assert not [secret for secret in secrets if secret in (REPO_ROOT / "params.yaml").read_text()]
    tracked = subprocess.run(["git", "grep", "-l", "-F", secrets[-1]], cwd=REPO_ROOT, capture_output=True, text=True)
    assert tracked.stdout == ""
    assert (data / "secrets").stat().st_mode & 0o777 == 0o700
    for path in (data / "secrets").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert [path.name for path in data.iterdir() if path.is_file()] == ["server.lock"]  # every secret in a folder
    # Least privilege: MLflow runs as its service user, with no secret it does not need in its environment,
    # and what it keeps (artifacts, its home with the pgpass file) and the logs are closed to other accounts.
    service = pwd.getpwnam("mlflow")
    mlflow_processes = [
        process
        for process in tls_server.descendants()
        if "mlflow" in " ".join(process.cmdline()) and process.username() != "postgres"
    ]
    assert mlflow_processes and {process.uids().effective for process in mlflow_processes} == {service.pw_uid}
    for process in mlflow_processes:
        environment = Path(f"/proc/{process.pid}/environ").read_bytes().decode(errors="replace")
        assert not [secret for secret in secrets if secret in environment], process.cmdline()
        assert "PGPASSWORD" not in environment and "MLFLOW_TRACKING_PASSWORD" not in environment
    for folder in ("artifacts", "service", "logs", "secrets"):
        assert (data / folder).stat().st_mode & 0o077 == 0, folder
    assert (data / "service" / "pgpass").stat().st_uid == service.pw_uid
    assert (data / "service" / "pgpass").stat().st_mode & 0o777 == 0o600
    assert (data / "artifacts").stat().st_uid == service.pw_uid
    for log in (data / "logs").iterdir():
        assert log.stat().st_mode & 0o077 == 0, log
    client = client_as(tuple(ADMIN.values()), tls_server, monkeypatch)
    for run in client.search_runs([client.get_experiment_by_name("mnist-precision").experiment_id]):
        logged = " ".join(f"{k}={v}" for k, v in (run.data.params | run.data.tags).items())
        assert not [secret for secret in secrets if secret in logged]
