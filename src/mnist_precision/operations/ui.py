"""The MLflow UI on the project's runs, opened on the runs table.

    mnist-precision ui [--port 5000]

Saves the project's view of the runs table in the experiment (each run's
precision, optimizer, seed and test accuracy; each variant's verdict, once
`mnist-precision report` has made its parent runs), starts `mlflow server` on
127.0.0.1 against the repository's store, and prints the view's address:
MLflow alone opens an experiment on its GenAI overview, a click and a tab
away from the runs. With MLFLOW_TRACKING_URI set to a tracking server, it
starts nothing and prints that server's address of the view. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mnist_precision.base.params import experiment_name
from mnist_precision.base.paths import repo_root
from mnist_precision.operations.server import (
    Network,
    ServerError,
    mlflow_server_command,
    stop_process,
    stop_requests,
    wait_healthy,
)
from mnist_precision.tracking.lifecycle import forbidden
from mnist_precision.tracking.store import configure, get_or_create_experiment
from mnist_precision.tracking.view import runs_table_address, save_view


def start_ui(uri: str, net: Network, log: Path) -> subprocess.Popen:
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            mlflow_server_command(uri, net),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_healthy(net, process, log)
    return process


def serve_until_stopped(process: subprocess.Popen, log: Path) -> None:
    with stop_requests() as stop:
        try:
            while not stop:
                if process.poll() is not None:
                    raise ServerError(f"mlflow server stopped unexpectedly; see {log}")
                time.sleep(0.5)
        finally:
            stop_process(process, signal.SIGTERM)


def refuse_a_taken_port(net: Network) -> None:
    """Another server on the port would answer the health probe in place of ours."""
    with socket.socket() as probe:
        if probe.connect_ex((net.host, net.port)) == 0:
            raise ServerError(
                f"port {net.port} on {net.host} is taken (another MLflow UI?): choose another with --port"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mnist-precision ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=5000, help="the port on 127.0.0.1 (default: 5000)")
    parser.add_argument("--experiment", help="the MLflow experiment (default: mlflow.experiment of params.yaml)")
    args = parser.parse_args(argv)
    name = experiment_name(args.experiment)
    store = configure()
    experiment_id = get_or_create_experiment(name, store)
    try:
        save_view(MlflowClient(), experiment_id)
    except MlflowException as error:
        if not forbidden(error):
            raise
        print(
            f"ui: warning: the view was not saved: saving it needs EDIT on {name!r} (the report saves it too); "
            "the address below opens it once it is",
            file=sys.stderr,
        )
    if store.uri.startswith(("http://", "https://")):
        print(f"The runs of {name!r}: {runs_table_address(store.uri, experiment_id)}", flush=True)
        return
    net, log = Network("127.0.0.1", args.port), repo_root() / "mlflow-ui.log"
    refuse_a_taken_port(net)
    process = start_ui(store.uri, net, log)
    print(
        f"MLflow UI on {store.uri.split('?')[0]}; the runs of {name!r}, with each run's precision and each "
        f"variant's verdict: {runs_table_address(net.url, experiment_id)}  (Ctrl-C stops it)",
        flush=True,
    )
    serve_until_stopped(process, log)
