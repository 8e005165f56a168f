"""`mnist-precision server`: a team's MLflow tracking server, from real components.

    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=... \\
        mnist-precision server --data /srv/mlflow [--host 127.0.0.1] [--port 5000] \\
        [--artifacts-destination s3://bucket/prefix]

In the data folder: a PostgreSQL cluster (created on first use, reused
after; its password generated and kept there), MLflow's schema migrated once
before the server starts (two migrations at once on a fresh database fail:
MLflow issue 19299), then `mlflow server` on that database, serving the
artifacts (a folder of the data folder, or `--artifacts-destination`), behind
MLflow's basic-auth app. Its admin user is the one that MLflow's clients
read from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD. Ctrl-C or
SIGTERM stops the server, then PostgreSQL; a second server on the same data
folder is refused.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
DATABASES = ("mlflow", "mlflow_auth")  # runs and models; the auth app's users and permissions
STARTUP_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


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
    def db_password(self) -> Path:
        return self.root / "postgres-password"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def auth_config(self) -> Path:
        return self.root / "basic_auth.ini"

    @property
    def secret_key(self) -> Path:
        return self.root / "flask-secret-key"

    @property
    def lock(self) -> Path:
        return self.root / "server.lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, or where Debian's packages put it."""
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)), None)
    if not found:
        raise ServerError(f"PostgreSQL's `{name}` was not found: install PostgreSQL "
                          "(on Debian or Ubuntu: apt-get install postgresql)")
    return str(found)


def service_user() -> str | None:
    """PostgreSQL refuses to run as root: then it runs as the `postgres` user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError("PostgreSQL cannot run as root and there is no `postgres` user: "
                          "run the server as another user, or install PostgreSQL's package, which creates it") from None
    return "postgres"


@contextmanager
def exclusive(layout: Layout) -> Iterator[None]:
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServerError(f"a server is already running on the data folder {layout.root} "
                              f"(it holds {layout.lock}): stop it first, or give another --data") from None
        yield


def free_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Postgres:
    """A PostgreSQL cluster in the data folder, served on 127.0.0.1 while started."""

    def __init__(self, layout: Layout):
        self.layout, self.user = layout, service_user()
        self.port = free_tcp_port()
        self.process: subprocess.Popen | None = None

    def _as_service_user(self) -> dict:
        return {"user": self.user, "group": self.user, "extra_groups": []} if self.user else {}

    def _own(self, path: Path) -> None:
        if self.user:
            shutil.chown(path, self.user, self.user)

    def _check_reachable_by_service_user(self) -> None:
        """The `postgres` user must be able to reach its data folder through every parent."""
        if not self.user:
            return
        for folder in self.layout.root.parents:
            if not folder.stat().st_mode & 0o001:
                raise ServerError(f"PostgreSQL runs as the `{self.user}` user, which cannot enter {folder} "
                                  f"(on the way to {self.layout.root}): choose a --data folder it can reach "
                                  "(e.g. under /srv), or run the server as a user other than root")

    def initialize(self) -> None:
        """Create the cluster on first use, with a generated password for its superuser."""
        self._check_reachable_by_service_user()
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
            subprocess.run([postgres_bin("initdb"), "-D", str(self.layout.pgdata), "-U", "mlflow",
                            "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--no-instructions"],
                           check=True, capture_output=True, text=True, **self._as_service_user())
        except subprocess.CalledProcessError as error:
            shutil.rmtree(self.layout.pgdata, ignore_errors=True)
            raise ServerError(f"initdb failed: {error.stderr.strip()}") from None
        finally:
            pwfile.unlink(missing_ok=True)
        self.layout.db_password.write_text(password + "\n")
        self.layout.db_password.chmod(0o600)

    def uri(self, database: str) -> str:
        password = self.layout.db_password.read_text().strip()
        return f"postgresql+psycopg2://mlflow:{password}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self.layout.logs.mkdir(exist_ok=True)
        log = open(self.layout.logs / "postgres.log", "a")
        self._own(self.layout.logs / "postgres.log")
        self.process = subprocess.Popen(
            [postgres_bin("postgres"), "-D", str(self.layout.pgdata), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.layout.pgdata}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._as_service_user())
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._accepts_connections():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServerError(f"PostgreSQL did not start; see {self.layout.logs / 'postgres.log'}")
            time.sleep(0.2)

    def _accepts_connections(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(self.uri("postgres").replace("postgresql+psycopg2", "postgresql"), connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def create_databases(self) -> None:
        import psycopg2

        connection = psycopg2.connect(self.uri("postgres").replace("postgresql+psycopg2", "postgresql"))
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with connection.cursor() as cursor:
                for name in DATABASES:
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cursor.fetchone() is None:
                        cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()

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


def migrate(uri: str) -> None:
    """MLflow's schema migrations, once, before any server process exists."""
    result = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri], capture_output=True, text=True)
    if result.returncode != 0:
        raise ServerError(f"mlflow db upgrade failed: {result.stderr.strip()[-2000:]}")


def start_mlflow(layout: Layout, postgres: Postgres, host: str, port: int, artifacts: str) -> subprocess.Popen:
    layout.auth_config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {postgres.uri('mlflow_auth')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n")
    layout.auth_config.chmod(0o600)  # it holds the database password
    if not layout.secret_key.exists():  # signs the UI's CSRF tokens; kept, so sessions survive a restart
        layout.secret_key.touch(mode=0o600)
        layout.secret_key.write_text(secrets.token_hex(32))
    username, password = (os.environ[name] for name in CREDENTIALS)
    env = os.environ | {"MLFLOW_AUTH_CONFIG_PATH": str(layout.auth_config), "MLFLOW_AUTH_ADMIN_USERNAME": username,
                        "MLFLOW_AUTH_ADMIN_PASSWORD": password, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                        "MLFLOW_FLASK_SERVER_SECRET_KEY": layout.secret_key.read_text().strip()}
    log = open(layout.logs / "mlflow-server.log", "a")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres.uri("mlflow"),
         "--serve-artifacts", "--artifacts-destination", artifacts, "--app-name", "basic-auth",
         "--host", host, "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process, signal.SIGTERM)
                tail = (layout.logs / "mlflow-server.log").read_text()[-2000:]
                raise ServerError(f"mlflow server did not start; see {layout.logs / 'mlflow-server.log'}:\n{tail}")
            time.sleep(0.5)


def serve(data: Path, host: str, port: int, artifacts_destination: str | None) -> None:
    missing = [name for name in CREDENTIALS if not os.environ.get(name)]
    if missing:
        raise ServerError(f"set {' and '.join(missing)} in the server's environment: they become the admin "
                          "user of MLflow's basic-auth app (the same variables MLflow's clients read)")
    layout = Layout(data.resolve())
    stop = []
    previous = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with exclusive(layout):
            postgres = Postgres(layout)
            postgres.initialize()
            mlflow_server = None
            try:
                postgres.start()
                postgres.create_databases()
                migrate(postgres.uri("mlflow"))
                layout.artifacts.mkdir(exist_ok=True)
                mlflow_server = start_mlflow(layout, postgres, host, port, artifacts_destination or str(layout.artifacts))
                print(f"MLflow tracking server ready: export MLFLOW_TRACKING_URI=http://{host}:{port} "
                      f"(with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD); Ctrl-C stops it", flush=True)
                while not stop:
                    if mlflow_server.poll() is not None or postgres.process.poll() is not None:
                        raise ServerError(f"a component stopped unexpectedly; see the logs in {layout.logs}")
                    time.sleep(0.5)
            finally:
                stop_process(mlflow_server, signal.SIGTERM)
                postgres.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("MLflow tracking server and PostgreSQL stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mnist-precision server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the folder for the database, artifacts and logs")
    parser.add_argument("--host", default="127.0.0.1", help="the address to serve on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--artifacts-destination", help="where artifacts go (default: <data>/artifacts; or s3://...)")
    args = parser.parse_args(argv)
    serve(args.data, args.host, args.port, args.artifacts_destination)
