"""The team server's network settings, decided before anything starts: TLS, plain HTTP, Host names."""

from __future__ import annotations

import pytest

from mnist_precision.operations.server import ServerError, main, network, service_user


def test_plain_http_beyond_loopback_is_refused_unless_the_network_is_trusted(capsys):
    with pytest.raises(ServerError, match="refusing to serve on 10.0.0.5 over plain HTTP") as refused:
        network("10.0.0.5", 5000, None, None, insecure_http=False)
    assert "--tls-cert FILE --tls-key FILE" in str(refused.value) and "--insecure-http" in str(refused.value)
    trusted = network("10.0.0.5", 5000, None, None, insecure_http=True)
    assert trusted.url == "http://10.0.0.5:5000"
    assert "passwords cross the network in the clear" in capsys.readouterr().err
    for loopback in ("127.0.0.1", "localhost", "::1"):
        assert network(loopback, 5000, None, None, insecure_http=False).scheme == "http"


def test_tls_takes_a_certificate_and_its_key(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    with pytest.raises(ServerError, match="give both --tls-cert FILE and --tls-key FILE"):
        network("0.0.0.0", 5000, cert, None, insecure_http=False)
    with pytest.raises(ServerError, match="cert.pem is not a readable file"):
        network("0.0.0.0", 5000, cert, key, insecure_http=False)
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    served = network("0.0.0.0", 5443, cert, key, insecure_http=False)
    assert served.url == "https://127.0.0.1:5443"
    assert served.uvicorn_options() == [
        "--uvicorn-opts",
        f"--no-proxy-headers --timeout-graceful-shutdown 5 --ssl-certfile {cert} --ssl-keyfile {key}",
    ]


def test_the_allowed_host_names_follow_the_address_served():
    local = network("127.0.0.1", 5000, None, None, insecure_http=False).allowed_hosts().split(",")
    assert {"127.0.0.1", "127.0.0.1:5000", "localhost:5000", "[::1]:5000"} <= set(local)
    assert not [name for name in local if "example" in name or name.startswith("0.0.0.0")]
    named = network("10.0.0.5", 5000, None, None, insecure_http=True, extra_hosts=("mlflow.team.example",))
    names = set(named.allowed_hosts().split(","))
    assert {"10.0.0.5:5000", "mlflow.team.example", "mlflow.team.example:5000"} <= names
    assert "localhost" not in names  # served on one address: its name, not loopback's


def test_a_negative_auth_cache_is_refused_before_anything_starts(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["--data", str(tmp_path / "data"), "--auth-cache-seconds", "-1"])
    assert refused.value.code == 2
    assert "--auth-cache-seconds takes 0 (check every request) or more seconds" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_other_cors_origins_are_origins_not_urls():
    named = network(
        "127.0.0.1", 5000, None, None, insecure_http=False, cors_origins=("https://dashboard.team.example:8443",)
    )
    assert named.cors_origins == ("https://dashboard.team.example:8443",)
    with pytest.raises(
        ServerError,
        match=r"--cors-origin takes an origin such as https://dashboard.team.example"
        r":8443 \(a scheme, a host and an optional port, no path\): not "
        r"'https://dashboard.team.example/page'",
    ):
        network(
            "127.0.0.1", 5000, None, None, insecure_http=False, cors_origins=("https://dashboard.team.example/page",)
        )


def test_started_as_root_without_the_service_user_the_server_names_the_command_that_creates_it(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    with pytest.raises(
        ServerError,
        match=r"there is no `no-such-service-user` user: run the server as another user, "
        r"or create it \(useradd --system --home-dir /nonexistent --shell "
        r"/usr/sbin/nologin no-such-service-user\)",
    ):
        service_user("no-such-service-user", "the MLflow server runs as an unprivileged user when started as root")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert service_user("no-such-service-user", "unused") is None  # not root: it runs as the caller
