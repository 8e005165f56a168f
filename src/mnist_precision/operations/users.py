"""`mnist-precision server users add NAME` and `... users grant NAME EXPERIMENT READ|EDIT|MANAGE`.

The team server's users and their permissions, through MLflow's own auth
client (`mlflow.server.auth.client.AuthServiceClient`), run against a started
server (MLFLOW_TRACKING_URI) as its admin (MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD). The server's default permission is NO_PERMISSIONS:
a user sees an experiment only once granted it (its creator manages it).

A new user's password is read from standard input (its first line) or asked
for at a prompt, never taken as an argument: a command line is visible to
every user of the machine (`ps`).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from mnist_precision.base.errors import UserError

PERMISSIONS = ("READ", "EDIT", "MANAGE")
MIN_PASSWORD = 12


class UsersError(UserError):
    """A user or a grant the server refused, or a password not given."""


def read_password(name: str) -> str:
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("the same again: ") != password:
            raise UsersError("the two passwords differ; nothing was changed")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < MIN_PASSWORD:
        raise UsersError(
            f"the password must have at least {MIN_PASSWORD} characters (from standard input or the "
            "prompt); nothing was changed"
        )
    return password


def server_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise UsersError(
            "set MLFLOW_TRACKING_URI to the team server (and MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD to its admin): users live on the server"
        )
    return uri


def refused(action: str, error: Exception) -> UsersError:
    return UsersError(f"the server refused to {action}: {getattr(error, 'message', error)}")


def add(name: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    password = read_password(name)
    try:
        AuthServiceClient(server_uri()).create_user(name, password)
    except MlflowException as error:
        raise refused(f"add the user {name!r}", error) from None
    print(
        f"user {name!r} added; it sees no experiment until granted one "
        f"(mnist-precision server users grant {name} EXPERIMENT READ)"
    )


def grant(name: str, experiment: str, permission: str) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    uri = server_uri()
    found = MlflowClient(uri).get_experiment_by_name(experiment)
    if found is None:
        raise UsersError(
            f"no experiment named {experiment!r} on {uri}: it is created by the first pipeline run "
            "(whose user then manages it)"
        )
    auth = AuthServiceClient(uri)
    try:
        try:
            auth.grant_user_permission(name, "experiment", found.experiment_id, permission)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # A grant replaces the user's earlier one: MLflow's client has no update call.
            auth.revoke_user_permission(name, "experiment", found.experiment_id)
            auth.grant_user_permission(name, "experiment", found.experiment_id, permission)
    except MlflowException as error:
        raise refused(f"grant {permission} on {experiment!r} to {name!r}", error) from None
    print(f"user {name!r} may now {permission} experiment {experiment!r}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="mnist-precision server users", description=__doc__.split("\n\n")[0])
    actions = parser.add_subparsers(dest="action", required=True)
    adding = actions.add_parser("add", help="a new user; its password from standard input or a prompt")
    adding.add_argument("name")
    granting = actions.add_parser("grant", help="a user's permission on an experiment")
    granting.add_argument("name")
    granting.add_argument("experiment")
    granting.add_argument("permission", choices=PERMISSIONS, type=str.upper)
    args = parser.parse_args(argv)
    if args.action == "add":
        add(args.name)
    else:
        grant(args.name, args.experiment, args.permission)
