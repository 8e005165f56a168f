"""`mnist-precision server`: a team's MLflow tracking server, from real components.

    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=... \\
        mnist-precision server --data /srv/mlflow [--host 127.0.0.1] [--port 5000] \\
        [--artifacts-destination s3://bucket/prefix] [--tls-cert FILE --tls-key FILE] \\
        [--allowed-host NAME] [--insecure-http] [--cors-origin ORIGIN] [--service-user NAME]

In the data folder: a PostgreSQL cluster (created on first use, reused
after; its password generated and kept there), MLflow's schema migrated once
before the server starts (two migrations at once on a fresh database fail:
MLflow issue 19299), then `mlflow server` on that database, serving the
artifacts (a folder of the data folder, or `--artifacts-destination`), behind
the project's guard around MLflow's basic-auth app (server_app.py). Its admin
user is the one that MLflow's clients read from MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD: written into the auth database here, before the
server starts, and never passed on to it. Started as root, PostgreSQL runs as
`postgres` and MLflow as the service user (`mlflow`). Ctrl-C or
SIGTERM stops the server, then PostgreSQL; a second server on the same data
folder is refused. Beyond loopback it serves HTTPS (uvicorn's TLS, through
`--uvicorn-opts`) or, with `--insecure-http`, plain HTTP with a warning; it
answers only the Host names it is told (MLflow's `--allowed-hosts`).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mnist_precision.base.atomic import atomic_path
from mnist_precision.base.errors import UserError
from mnist_precision.base.interrupts import handling

CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# Secrets the MLflow server process must not hold: a command it were made to
# run would read them from its environment.
NOT_FOR_THE_SERVER = (
    *CREDENTIALS,
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "PGPASSWORD",
    "PGPASSFILE",
)
APP_NAME = "mnist-precision"  # the `mlflow.app` entry point of pyproject.toml
SERVICE_USER = "mlflow"
DATABASES = ("mlflow", "mlflow_auth")  # runs and models; the auth app's users and permissions
STARTUP_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30
GRACEFUL_SHUTDOWN_S = 5  # uvicorn's wait for open connections when stopped
# How long MLflow's auth app trusts a username and password it has checked
# (--auth-cache-seconds). Without it every request pays a scrypt hash
# (werkzeug's default, slow on purpose), and the hundreds of requests of a
# training run cost the server more CPU than the run itself
# (benchmarks/results/server_auth.md). Wrong passwords are never cached; a
# password changed through the API is dropped from it at once (one worker).
AUTH_CACHE_S = 60


class ServerError(UserError):
    """The server cannot start: missing credentials, a busy data folder, a component that fails."""


@dataclass(frozen=True)
class Layout:
    """Where each component keeps its files inside the data folder."""

    root: Path

    @property
    def pgdata(self) -> Path:
        return self.root / "postgres"

    @property
    def secrets(self) -> Path:
        """The files that hold a secret: a folder only the server's user enters."""
        return self.root / "secrets"

    @property
    def db_password(self) -> Path:
        return self.secrets / "postgres-password"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def service(self) -> Path:
        """The MLflow server's own folder (its home): the files it reads, owned by its user, mode 0700."""
        return self.root / "service"

    @property
    def auth_config(self) -> Path:
        return self.service / "basic_auth.ini"

    @property
    def pgpass(self) -> Path:
        """PostgreSQL's password, where libpq reads it (PGPASSFILE), instead of the environment."""
        return self.service / "pgpass"

    @property
    def secret_key(self) -> Path:
        return self.secrets / "flask-secret-key"

    def prepare_secrets(self) -> None:
        """The secrets folder, at mode 0700."""
        self.secrets.mkdir(mode=0o700, exist_ok=True)
        self.secrets.chmod(0o700)

    @property
    def lock(self) -> Path:
        return self.root / "server.lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, or where Debian's packages put it."""
    found = shutil.which(name) or next(
        iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)), None
    )
    if not found:
        raise ServerError(
            f"PostgreSQL's `{name}` was not found: install PostgreSQL (on Debian or Ubuntu: apt-get install postgresql)"
        )
    return str(found)


def service_user(name: str, why: str) -> str | None:
    """Started as root, a component runs as its own unprivileged user; otherwise as the caller."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ServerError(
            f"{why}, and there is no `{name}` user: run the server as another user, or create it "
            f"(useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin {name})"
        ) from None
    return name


def as_user(user: str | None) -> dict:
    """Popen's arguments that run a child as `user` (none where the server is not root)."""
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []} if user else {}


def own(path: Path, user: str | None) -> None:
    if user:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def check_reachable(user: str | None, paths: tuple[Path, ...]) -> None:
    """A service user must be able to enter every folder above the paths it uses."""
    if not user:
        return
    for path in paths:
        for folder in path.parents:
            if not folder.stat().st_mode & 0o001:
                raise ServerError(
                    f"the server runs a component as the `{user}` user, which cannot enter {folder} "
                    f"(on the way to {path}): choose folders it can reach (e.g. under /srv, and a "
                    "virtual environment outside /root), or run the server as a user other than root"
                )


@contextmanager
def exclusive(layout: Layout) -> Iterator[None]:
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServerError(
                f"a server is already running on the data folder {layout.root} "
                f"(it holds {layout.lock}): stop it first, or give another --data"
            ) from None
        yield


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Postgres:
    """A PostgreSQL cluster in the data folder, served on 127.0.0.1 while started."""

    def __init__(self, layout: Layout):
        self.layout, self.user = layout, service_user("postgres", "PostgreSQL cannot run as root")
        self.port = free_tcp_port()
        self.process: subprocess.Popen | None = None

    def _as_service_user(self) -> dict:
        return as_user(self.user)

    def _own(self, path: Path) -> None:
        own(path, self.user)

    def initialize(self) -> None:
        """Create the cluster on first use, with a generated password for its superuser."""
        check_reachable(self.user, (self.layout.root,))
        if (self.layout.pgdata / "PG_VERSION").exists():
            return
        self.layout.pgdata.mkdir(mode=0o700, exist_ok=True)
        self._own(self.layout.pgdata)
        password = secrets.token_urlsafe(24)
        pwfile = self.layout.root / ".initdb-password"  # initdb wants its data folder empty
        pwfile.touch(mode=0o600)
        pwfile.write_text(password + "\n")
        self._own(pwfile)
        try:
            subprocess.run(
                [
                    postgres_bin("initdb"),
                    "-D",
                    str(self.layout.pgdata),
                    "-U",
                    "mlflow",
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                capture_output=True,
                text=True,
                **self._as_service_user(),
            )
        except subprocess.CalledProcessError as error:
            shutil.rmtree(self.layout.pgdata, ignore_errors=True)
            raise ServerError(f"initdb failed: {error.stderr.strip()}") from None
        finally:
            pwfile.unlink(missing_ok=True)
        self.layout.db_password.write_text(password + "\n")
        self.layout.db_password.chmod(0o600)

    def uri(self, database: str) -> str:
        """The database's URI, without its password: a command line is visible
        to every user (`ps`), so a child process reads it from the pgpass file."""
        return f"postgresql+psycopg2://mlflow@127.0.0.1:{self.port}/{database}"

    def password(self) -> str:
        return self.layout.db_password.read_text().strip()

    def write_pgpass(self, user: str | None) -> None:
        """The password in libpq's pgpass format, readable by `user` alone (libpq refuses a looser file)."""
        write_private(self.layout.pgpass, f"127.0.0.1:*:*:mlflow:{self.password()}\n", user)

    def env(self) -> dict[str, str]:
        """What a child process needs to log in: libpq reads the pgpass file."""
        return {"PGPASSFILE": str(self.layout.pgpass)}

    def connect(self, database: str, **options):
        import psycopg2

        return psycopg2.connect(
            self.uri(database).replace("postgresql+psycopg2", "postgresql"), password=self.password(), **options
        )

    def start(self) -> None:
        log = open(self.layout.logs / "postgres.log", "a")
        (self.layout.logs / "postgres.log").chmod(0o600)
        self.process = subprocess.Popen(
            [
                postgres_bin("postgres"),
                "-D",
                str(self.layout.pgdata),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.layout.pgdata}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._as_service_user(),
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._accepts_connections():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServerError(f"PostgreSQL did not start; see {self.layout.logs / 'postgres.log'}")
            time.sleep(0.2)

    def _accepts_connections(self) -> bool:
        import psycopg2

        try:
            self.connect("postgres", connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def create_databases(self) -> None:
        connection = self.connect("postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with connection.cursor() as cursor:
                for name in DATABASES:
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cursor.fetchone() is None:
                        cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, then exit cleanly.
        stop_process(self.process, signal.SIGINT)


def stop_process(process: subprocess.Popen | None, signum: int) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def migrate(postgres: Postgres) -> None:
    """MLflow's schema migrations, once, before any server process exists."""
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", postgres.uri("mlflow")],
        env=without_secrets(os.environ) | postgres.env(),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ServerError(f"mlflow db upgrade failed: {result.stderr.strip()[-2000:]}")


def create_admin(postgres: Postgres) -> None:
    """The admin user in the auth app's database, written by a child process once
    before the server starts: its password never reaches the server's environment,
    and it travels on the child's standard input, not its command line."""
    username, password = (os.environ[name] for name in CREDENTIALS)
    uri = postgres.uri("mlflow_auth").replace("mlflow@", f"mlflow:{postgres.password()}@")
    result = subprocess.run(
        [sys.executable, "-m", "mnist_precision.operations.server_app"],
        capture_output=True,
        text=True,
        input=json.dumps({"uri": uri, "username": username, "password": password}),
        env=without_secrets(os.environ),
    )
    if result.returncode != 0:
        raise ServerError(f"the admin user {username!r} could not be created: {result.stderr.strip()[-2000:]}")


def without_secrets(env: os._Environ | dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name not in NOT_FOR_THE_SERVER}


@dataclass(frozen=True)
class Network:
    """Where the server listens, over what, and which Host names it answers."""

    host: str
    port: int
    tls_cert: Path | None = None
    tls_key: Path | None = None
    extra_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def allowed_hosts(self) -> str:
        """MLflow's --allowed-hosts (its guard against DNS rebinding): the
        address served, loopback's names, this machine's names when every
        interface is served, and the names given with --allowed-host; each
        with and without the port."""
        names = {self.host, *self.extra_hosts}
        if self.host in ("0.0.0.0", "::"):
            names |= {socket.gethostname(), socket.getfqdn()}
        if is_loopback(self.host) or self.host in ("0.0.0.0", "::"):
            names |= {"localhost", "127.0.0.1", "[::1]"}
        names.discard("0.0.0.0")
        names.discard("::")
        return ",".join(sorted(name for base in names for name in (base, f"{base}:{self.port}")))

    def uvicorn_options(self) -> list[str]:
        """uvicorn's TLS options; no X-Forwarded-For trusted (clients reach the
        server directly, and a local process could otherwise name any address to
        the login throttle); and a bound on its graceful shutdown: without
        one it waits for every client's keep-alive connection to close (a
        browser on the UI, an MLflow client), and the stop ended in SIGKILL
        after STOP_TIMEOUT_S with one client connected)."""
        options = f"--no-proxy-headers --timeout-graceful-shutdown {GRACEFUL_SHUTDOWN_S}"
        if self.tls_cert:
            options += f" --ssl-certfile {self.tls_cert} --ssl-keyfile {self.tls_key}"
        return ["--uvicorn-opts", options]


def mlflow_server_command(store_uri: str, net: Network, *options: str) -> list[str]:
    """`mlflow server` on a store, at the network's address, in one worker process."""
    address = ["--host", net.host, "--port", str(net.port), "--workers", "1"]
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri, *address, *options]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def network(
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure_http: bool,
    extra_hosts: tuple[str, ...] = (),
    cors_origins: tuple[str, ...] = (),
) -> Network:
    """The server's network settings, or a refusal: plain HTTP beyond loopback
    sends every password in the clear, so it needs TLS or --insecure-http."""
    if (tls_cert is None) != (tls_key is None):
        raise ServerError(
            "give both --tls-cert FILE and --tls-key FILE (the certificate and its private key), or neither"
        )
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise ServerError(f"{path} is not a readable file: --tls-cert and --tls-key take PEM files")
    if not tls_cert and not is_loopback(host):
        if not insecure_http:
            raise ServerError(
                f"refusing to serve on {host} over plain HTTP: every client would send its password "
                "in the clear on each request. Give --tls-cert FILE --tls-key FILE to serve HTTPS, "
                "or --insecure-http on a network you trust"
            )
        print(
            f"warning: serving on {host} over plain HTTP (--insecure-http): passwords cross the network in the clear",
            file=sys.stderr,
            flush=True,
        )
    for origin in cors_origins:
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ServerError(
                f"--cors-origin takes an origin such as https://dashboard.team.example:8443 "
                f"(a scheme, a host and an optional port, no path): not {origin!r}"
            )
    return Network(
        host,
        port,
        tls_cert.resolve() if tls_cert else None,
        tls_key.resolve() if tls_key else None,
        extra_hosts,
        cors_origins,
    )


def wait_healthy(net: Network, process: subprocess.Popen, log: Path) -> None:
    """Until the server answers on this machine. Over TLS the certificate is
    not verified here: it names the host clients reach (not 127.0.0.1) and may
    be signed by a CA this process does not know; the probe asks only whether
    our own child answers."""
    context = None
    if net.tls_cert:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{net.url}/health", timeout=2, context=context):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process, signal.SIGTERM)
                raise ServerError(f"mlflow server did not start; see {log}:\n{log.read_text()[-2000:]}") from None
            time.sleep(0.5)


@dataclass(frozen=True)
class Logins:
    """The guard's login throttle: this many failures of one user from one address refuse it for a while."""

    failures: int = 10
    window_s: float = 300.0
    lockout_s: float = 300.0


def write_private(path: Path, text: str, user: str | None) -> None:
    """A file only `user` reads, written whole or not at all (closed before the secret is in it)."""
    with atomic_path(path) as temporary:
        temporary.chmod(0o600)
        own(temporary, user)
        temporary.write_text(text)


def auth_ini(postgres: Postgres, net: Network, auth_cache_seconds: int, logins: Logins) -> str:
    """MLflow's auth app settings, and the guard's in a section of their own (server_app.Settings)."""
    return (
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = {postgres.uri('mlflow_auth')}\n"
        f"admin_username = {os.environ[CREDENTIALS[0]].replace('%', '%%')}\n"  # configparser's escape
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        f"auth_cache_ttl_seconds = {auth_cache_seconds}\n"
        f"\n[{APP_NAME}]\n"
        f"cors_origins = {' '.join(net.cors_origins)}\n"
        f"login_failures = {logins.failures}\n"
        f"login_window_seconds = {logins.window_s}\n"
        f"login_lockout_seconds = {logins.lockout_s}\n"
    )


def prepare_service_folders(layout: Layout, user: str | None, artifacts: str) -> None:
    """The server's home and local artifacts: its user's alone (mode 0700), also after an older layout."""
    for folder in (layout.service, *([Path(artifacts)] if "://" not in artifacts else [])):
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)
        if user and folder.stat().st_uid != pwd.getpwnam(user).pw_uid:
            for path in (folder, *folder.rglob("*")):
                own(path, user)


def service_copy_of_tls(layout: Layout, net: Network, user: str | None) -> Network:
    """The certificate and key, copied (at each start) where the service user alone reads
    them: a key is commonly root's (0600, or 0640 for a group the service user is not in)."""
    if not net.tls_cert or not net.tls_key:
        return net
    cert, key = layout.service / "tls-cert.pem", layout.service / "tls-key.pem"
    write_private(cert, net.tls_cert.read_text(), user)
    write_private(key, net.tls_key.read_text(), user)
    return dataclasses.replace(net, tls_cert=cert, tls_key=key)


def start_mlflow(
    layout: Layout,
    postgres: Postgres,
    net: Network,
    artifacts: str,
    auth_cache_seconds: int,
    logins: Logins,
    user: str | None,
) -> subprocess.Popen:
    write_private(layout.auth_config, auth_ini(postgres, net, auth_cache_seconds, logins), user)
    if not layout.secret_key.exists():  # signs the UI's CSRF tokens; kept, so sessions survive a restart
        write_private(layout.secret_key, secrets.token_hex(32), None)
    home = {"HOME": str(layout.service), **({"USER": user, "LOGNAME": user} if user else {})}
    env = (
        without_secrets(os.environ)
        | postgres.env()
        | home
        | {
            "MLFLOW_AUTH_CONFIG_PATH": str(layout.auth_config),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_FLASK_SERVER_SECRET_KEY": layout.secret_key.read_text().strip(),
        }
    )
    cors = ["--cors-allowed-origins", ",".join(net.cors_origins)] if net.cors_origins else []
    served = service_copy_of_tls(layout, net, user)
    log_path = layout.logs / "mlflow-server.log"
    log = open(log_path, "a")
    log_path.chmod(0o600)
    serving = ["--serve-artifacts", "--artifacts-destination", artifacts, "--app-name", APP_NAME]
    guards = ["--allowed-hosts", net.allowed_hosts(), *cors, *served.uvicorn_options()]
    process = subprocess.Popen(
        mlflow_server_command(postgres.uri("mlflow"), net, *serving, *guards),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=layout.service,
        **as_user(user),
    )
    wait_healthy(net, process, log_path)
    return process


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """SIGINT and SIGTERM, recorded in the list yielded instead of raised,
    so that the servers this process started are stopped in order."""
    stop: list[int] = []
    with handling(lambda signum, frame: stop.append(signum)):
        yield stop


def serve(
    data: Path,
    net: Network,
    artifacts_destination: str | None,
    auth_cache_seconds: int,
    logins: Logins = Logins(),
    user_name: str = SERVICE_USER,
) -> None:
    missing = [name for name in CREDENTIALS if not os.environ.get(name)]
    if missing:
        raise ServerError(
            f"set {' and '.join(missing)} in the server's environment: they become the admin "
            "user of MLflow's basic-auth app (the same variables MLflow's clients read)"
        )
    layout = Layout(data.resolve())
    user = service_user(user_name, "the MLflow server runs as an unprivileged user when started as root")
    with stop_requests() as stop, exclusive(layout):
        layout.root.chmod(0o711)  # the service users pass through; nobody else lists it
        layout.prepare_secrets()
        check_reachable(user, (layout.root, Path(sys.prefix), Path(__file__)))
        postgres = Postgres(layout)
        postgres.initialize()
        mlflow_server = None
        try:
            layout.logs.mkdir(mode=0o700, exist_ok=True)
            layout.logs.chmod(0o700)
            postgres.start()
            postgres.create_databases()
            artifacts = artifacts_destination or str(layout.artifacts)
            prepare_service_folders(layout, user, artifacts)
            postgres.write_pgpass(user)
            migrate(postgres)
            create_admin(postgres)
            mlflow_server = start_mlflow(layout, postgres, net, artifacts, auth_cache_seconds, logins, user)
            trust = (
                f", and MLFLOW_TRACKING_SERVER_CERT_PATH={net.tls_cert} where its CA is private" if net.tls_cert else ""
            )
            print(
                f"MLflow tracking server ready: export MLFLOW_TRACKING_URI={net.url} "
                f"(with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD{trust}); Ctrl-C stops it",
                flush=True,
            )
            while not stop:
                if mlflow_server.poll() is not None or postgres.exited():
                    raise ServerError(f"a component stopped unexpectedly; see the logs in {layout.logs}")
                time.sleep(0.5)
        finally:
            stop_process(mlflow_server, signal.SIGTERM)
            postgres.stop()
    print("MLflow tracking server and PostgreSQL stopped", flush=True)


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-precision server",
        description=__doc__.split("\n\n")[0],
        epilog="mnist-precision server users add|grant ...: the server's users",
    )
    parser.add_argument("--data", type=Path, required=True, help="the folder for the database, artifacts and logs")
    parser.add_argument("--host", default="127.0.0.1", help="the address to serve on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--artifacts-destination", help="where artifacts go (default: <data>/artifacts; or s3://...)")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM; with --tls-key)")
    parser.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    parser.add_argument(
        "--insecure-http",
        action="store_true",
        help="serve plain HTTP on an address other than loopback (passwords in the clear)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another Host name clients reach the server by (repeatable); the --host address, "
        "loopback's names and, on 0.0.0.0, this machine's names are allowed already",
    )
    login_arguments(parser)
    parser.add_argument(
        "--service-user",
        default=SERVICE_USER,
        metavar="NAME",
        help=f"the unprivileged user the MLflow server runs as when started as root (default: {SERVICE_USER})",
    )
    return parser


def login_arguments(parser: argparse.ArgumentParser) -> None:
    """What the server's guard does with browsers and logins."""
    parser.add_argument(
        "--auth-cache-seconds",
        type=int,
        default=AUTH_CACHE_S,
        metavar="S",
        help=f"how long a checked password is trusted without checking it again (default: "
        f"{AUTH_CACHE_S}; 0: every request)",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another origin whose pages may call the server from a browser (repeatable; "
        "default: the server's own origin only)",
    )
    parser.add_argument(
        "--login-failures",
        type=int,
        default=Logins.failures,
        metavar="N",
        help=f"failed logins of one user from one address within {Logins.window_s:.0f} s that "
        f"refuse its logins for a while (default: {Logins.failures})",
    )
    parser.add_argument(
        "--login-lockout-seconds",
        type=float,
        default=Logins.lockout_s,
        metavar="S",
        help=f"how long such a user and address are refused (default: {Logins.lockout_s:.0f})",
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["users"]:
        from mnist_precision.operations.users import main as users

        return users(argv[1:])
    parser = arguments()
    args = parser.parse_args(argv)
    if args.auth_cache_seconds < 0:
        parser.error("--auth-cache-seconds takes 0 (check every request) or more seconds")
    if args.login_failures < 1 or args.login_lockout_seconds < 0:
        parser.error("--login-failures takes 1 or more, --login-lockout-seconds 0 or more")
    net = network(
        args.host,
        args.port,
        args.tls_cert,
        args.tls_key,
        args.insecure_http,
        tuple(args.allowed_host),
        tuple(args.cors_origin),
    )
    serve(
        args.data,
        net,
        args.artifacts_destination,
        args.auth_cache_seconds,
        Logins(args.login_failures, Logins.window_s, args.login_lockout_seconds),
        args.service_user,
    )
