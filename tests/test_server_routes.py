"""The team server's guard (mnist_precision.operations.server_app) in one process: every
route of the installed MLflow classified, and the guard's parts on their own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mnist_precision.operations.server_app import (
    ROUTES_FILE,
    LoginThrottle,
    Route,
    RouteTable,
    Settings,
    UnclassifiedRoutes,
    basic_credentials,
    read_classification,
    template_pattern,
)

# The app `mlflow server --app-name mnist-precision` runs, built in a process of
# its own (MLflow's Flask app is a module global) on a throwaway SQLite auth store.
PROBE = """
import json, os, secrets, sys
folder = sys.argv[1]
with open(os.path.join(folder, "auth.ini"), "w") as ini:
    ini.write(f"[mlflow]\\ndatabase_uri = sqlite:///{folder}/auth.db\\nadmin_username = admin\\n"
              "default_permission = NO_PERMISSIONS\\n"
              "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\\n")
os.environ.update(MLFLOW_AUTH_CONFIG_PATH=os.path.join(folder, "auth.ini"), MLFLOW_FLASK_SERVER_SECRET_KEY="k",
                  MLFLOW_AUTH_ADMIN_PASSWORD=secrets.token_urlsafe(16), _MLFLOW_SGI_NAME="uvicorn",
                  MLFLOW_TRACKING_URI=f"sqlite:///{folder}/mlflow.db")
from mlflow.server import auth
from mnist_precision.operations.server_app import served_routes
print(json.dumps([[route.method, route.path] for route in served_routes(auth.create_app())]))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> list[Route]:
    folder = tmp_path_factory.mktemp("routes")
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PROBE, str(folder)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [Route(method, path) for method, path in json.loads(result.stdout.splitlines()[-1])]


def test_every_route_the_installed_mlflow_serves_has_an_access_class(served):
    classes = read_classification(ROUTES_FILE.read_text())
    unclassified = [str(route) for route in served if route not in classes]
    assert unclassified == [], f"decide public, user, admin or refused in {ROUTES_FILE.name} for: {unclassified}"
    gone = [str(route) for route in classes if route not in set(served)]
    assert gone == [], f"{ROUTES_FILE.name} lists routes MLflow no longer serves: {gone}"
    assert len(served) > 400  # the listing found MLflow's routes, native and Flask's


def test_the_routes_that_act_on_the_server_or_show_other_users_are_classified_strictly(served):
    table = RouteTable.build(served, read_classification(ROUTES_FILE.read_text()))
    assert table.access("PUT", "/ajax-api/3.0/mlflow/assistant/config") == "refused"
    assert table.access("POST", "/ajax-api/3.0/mlflow/assistant/skills/install") == "refused"
    assert table.access("POST", "/ajax-api/3.0/mlflow/demo/generate") == "refused"
    assert table.access("POST", "/ajax-api/2.0/mlflow/webhooks/7/test") == "refused"
    assert table.access("POST", "/gateway/openai/v1/chat/completions") == "refused"
    assert table.access("GET", "/api/2.0/mlflow/users/list") == "admin"
    assert table.access("GET", "/api/3.0/mlflow/users/permissions/list") == "admin"
    assert table.access("POST", "/api/2.0/mlflow/runs/log-batch") == "user"
    assert table.access("PUT", "/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/model/MLmodel") == "user"
    assert table.access("HEAD", "/health") == "public"
    assert table.access("GET", "/no/such/route") is None


def test_a_route_without_a_class_stops_the_server_naming_it():
    served = [Route("GET", "/health"), Route("POST", "/ajax-api/3.0/mlflow/new-feature/<thing_id>")]
    with pytest.raises(UnclassifiedRoutes, match=r"POST /ajax-api/3.0/mlflow/new-feature/<thing_id>"):
        RouteTable.build(served, {Route("GET", "/health"): "public"})
    with pytest.raises(ValueError, match=r"'everyone' is not one of public, user, admin, refused"):
        read_classification("everyone GET /health")


def test_templates_match_their_parameters_as_their_frameworks_do():
    assert template_pattern("/ajax-api/2.0/mlflow-artifacts/artifacts/<path:artifact_path>").fullmatch(
        "/ajax-api/2.0/mlflow-artifacts/artifacts/a/b/c"
    )
    assert (
        template_pattern("/ajax-api/2.0/mlflow/webhooks/<webhook_id>").fullmatch("/ajax-api/2.0/mlflow/webhooks/a/b")
        is None
    )
    assert template_pattern("/gateway/gemini/v1beta/models/{endpoint_name}:generateContent").fullmatch(
        "/gateway/gemini/v1beta/models/m1:generateContent"
    )
    assert template_pattern("/gateway/proxy/{endpoint_name}/{path:path}").fullmatch("/gateway/proxy/e/a/b")


def test_the_throttle_locks_one_user_from_one_address_for_a_while():
    throttle = LoginThrottle(Settings(login_failures=3, login_window_s=60, login_lockout_s=30))
    key, other = ("10.0.0.1", "eve"), ("10.0.0.2", "eve")
    for second in range(3):
        assert throttle.seconds_locked(key, now=second) == 0
        throttle.failed(key, now=second)
    assert throttle.seconds_locked(key, now=3) == 29 and throttle.seconds_locked(other, now=3) == 0
    assert throttle.seconds_locked(key, now=33) == 0  # the lockout ends
    throttle.failed(key, now=100)
    throttle.succeeded(key)
    throttle.failed(key, now=101)
    throttle.failed(key, now=102)
    assert throttle.seconds_locked(key, now=103) == 0  # a success starts the count again


def test_the_throttle_forgets_old_failures_when_it_holds_too_many_names():
    throttle = LoginThrottle(Settings(login_failures=3, login_window_s=60, login_lockout_s=30), max_keys=100)
    for name in range(100):
        throttle.failed(("10.0.0.1", f"made-up-{name}"), now=0)
    throttle.failed(("10.0.0.1", "eve"), now=61)
    assert list(throttle.failures) == [("10.0.0.1", "eve")]


def test_credentials_are_basic_or_none():
    assert basic_credentials("Basic ZXZlOnMzY3I6ZXQ=") == ("eve", "s3cr:et")
    assert basic_credentials("Bearer x") is None and basic_credentials("Basic !!!") is None


def test_the_settings_come_from_the_auth_ini(tmp_path):
    ini = tmp_path / "auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n\n[mnist-precision]\n"
        "cors_origins = https://a.example https://b.example:8443\nlogin_failures = 4\n"
        "login_window_seconds = 60\nlogin_lockout_seconds = 9\n"
    )
    assert Settings.from_ini(str(ini)) == Settings(("https://a.example", "https://b.example:8443"), 4, 60.0, 9.0)
    assert Settings.from_ini(None) == Settings()
