"""The team server against a user who attacks it: the Assistant exploit, the
permission maps, CORS, odd credentials, password guessing, and every route
without credentials. One server (PostgreSQL, the project's app over plain
HTTP on loopback, as users reach it through a tunnel) with a short login lockout.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import re
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

from mnist_precision.operations.server_app import ROUTES_FILE, read_classification

from helpers import ADMIN, served

pytestmark = [pytest.mark.slow, pytest.mark.needs_postgres]

ADMIN_USER = (ADMIN["MLFLOW_TRACKING_USERNAME"], ADMIN["MLFLOW_TRACKING_PASSWORD"])
EVE = ("eve", "eves-own-password-5512")
LOCKOUT_S = 3.0
FAILURES = 6


@pytest.fixture(scope="module")
def server():
    options = (
        "--login-failures",
        str(FAILURES),
        "--login-lockout-seconds",
        str(LOCKOUT_S),
        "--cors-origin",
        "https://dashboard.team.example",
    )
    with served("mnist-precision-guard-", lambda folder: options) as running:
        status, _, _ = call(
            running, "POST", "/api/2.0/mlflow/users/create", ADMIN_USER, {"username": EVE[0], "password": EVE[1]}
        )
        assert status == 200
        yield running


def call(
    server,
    method: str,
    path: str,
    user: tuple[str, str] | None = None,
    body: dict | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, Message, str]:
    """The status, the headers (names in any case) and the text of one request."""
    headers = dict(headers or {})
    if user:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(user).encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(server.uri + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode(errors="replace")


def sse_frame(payload: dict | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


@contextlib.contextmanager
def fake_model(marker: Path) -> Iterator[tuple[str, list[str]]]:
    """An OpenAI-compatible endpoint on loopback, as Ollama serves: its first answer
    is a `Bash` tool call that would create `marker`, its next one plain text."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # the test's output stays quiet
            pass

        def do_GET(self):  # Ollama's model list
            requests.append(self.path)
            self.answer("application/json", json.dumps({"models": [{"model": "fake"}]}).encode())

        def do_POST(self):
            requests.append(self.path)
            sent = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if any(message.get("role") == "tool" for message in sent["messages"]):
                frames = [sse_frame({"choices": [{"delta": {"content": "done"}, "finish_reason": "stop"}]})]
            else:
                call = {
                    "index": 0,
                    "id": "call-1",
                    "function": {"name": "Bash", "arguments": json.dumps({"command": f"id > {marker}"})},
                }
                frames = [
                    sse_frame({"choices": [{"delta": {"tool_calls": [call]}}]}),
                    sse_frame({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}),
                ]
            self.answer("text/event-stream", b"".join(frames) + sse_frame("[DONE]"))

        def answer(self, kind: str, body: bytes):
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    endpoint = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{endpoint.server_address[1]}", requests
    finally:
        endpoint.shutdown()
        endpoint.server_close()


ASSISTANT = "/ajax-api/3.0/mlflow/assistant"


@pytest.mark.parametrize("full_access", [True, False])
def test_a_user_with_no_grants_cannot_make_the_server_run_a_command(server, reachable_tmp, full_access):
    """The published exploit, step by step: each step is refused, nothing runs, nothing is written."""
    marker, skills = reachable_tmp / "owned", reachable_tmp / "skills"
    with fake_model(marker) as (url, requests):
        config = {
            "providers": {
                "ollama": {
                    "model": "fake",
                    "selected": True,
                    "base_url": url,
                    "permissions": {"full_access": full_access},
                }
            }
        }
        answers = [call(server, "PUT", f"{ASSISTANT}/config", EVE, config)]
        answers.append(call(server, "POST", f"{ASSISTANT}/message", EVE, {"message": "run id"}))
        session = json.loads(answers[-1][2]).get("session_id", "none") if answers[-1][0] == 200 else "none"
        answers.append(call(server, "GET", f"{ASSISTANT}/sessions/{session}/stream", EVE))
        answers.append(
            call(
                server,
                "POST",
                f"{ASSISTANT}/sessions/{session}/permission",
                EVE,
                {"request_id": "call-1", "decision": "allow"},
            )
        )
        answers.append(call(server, "GET", f"{ASSISTANT}/sessions/{session}/stream", EVE))
        answers.append(
            call(server, "POST", f"{ASSISTANT}/skills/install", EVE, {"type": "custom", "custom_path": str(skills)})
        )
    assert not marker.exists() and not skills.exists()
    assert requests == []  # the server never reached the endpoint she named
    assert [status for status, _, _ in answers] == [403] * 6
    assert "refuses PUT /ajax-api/3.0/mlflow/assistant/config to every user" in answers[0][2]
    assert call(server, "PUT", f"{ASSISTANT}/config", ADMIN_USER, config)[0] == 403  # admins too


def test_the_user_list_and_permission_maps_are_for_admins_only(server):
    for path in (
        "/api/2.0/mlflow/users/list",
        "/api/3.0/mlflow/users/permissions/list?username=team-admin",
        f"/api/2.0/mlflow/users/get?username={ADMIN_USER[0]}",
        "/api/3.0/mlflow/roles/list",
    ):
        status, _, text = call(server, "GET", path, EVE)
        assert status == 403 and "for the server's admins only" in text, path
    status, _, text = call(server, "GET", "/api/2.0/mlflow/users/list", ADMIN_USER)
    assert status == 200 and {user["username"] for user in json.loads(text)["users"]} >= {"eve", ADMIN_USER[0]}
    assert call(server, "GET", "/api/2.0/mlflow/users/current", EVE)[0] == 200  # her own account


def test_cors_grants_only_the_servers_own_origin_and_the_named_one(server):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    search = "/api/2.0/mlflow/experiments/search"
    local_page = {"Origin": "http://localhost:3000"}
    status, headers, _ = call(server, "OPTIONS", search, headers=local_page | preflight)
    assert status == 403 and not [name for name in headers if name.lower().startswith("access-control-")]
    status, headers, _ = call(server, "POST", search, EVE, {"max_results": 1}, headers=local_page)
    assert status == 403 and "access-control-allow-origin" not in headers
    status, headers, _ = call(server, "GET", search + "?max_results=1", EVE, headers=local_page)
    assert status == 200 and "access-control-allow-origin" not in headers
    named = {"Origin": "https://dashboard.team.example"}
    status, headers, _ = call(server, "OPTIONS", search, headers=named | preflight)
    assert status in (200, 204) and headers.get("access-control-allow-origin") == "https://dashboard.team.example"
    own = {"Origin": server.uri}
    assert call(server, "POST", search, EVE, {"max_results": 1}, headers=own)[0] == 200


def test_a_bearer_header_is_answered_401_not_a_server_error(server):
    status, headers, text = call(
        server, "GET", "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Authorization": "Bearer x"}
    )
    assert status == 401 and headers.get("WWW-Authenticate") == 'Basic realm="mlflow"'
    assert "basic authentication only" in text
    assert "Traceback" not in server.log.read_text()


def wrong_login_seconds(server, name: str) -> float:
    times = []
    for attempt in range(5):
        started = time.perf_counter()
        status, _, _ = call(
            server, "GET", "/api/2.0/mlflow/experiments/search?max_results=1", (name, f"wrong-password-{attempt}")
        )
        times.append(time.perf_counter() - started)
        assert status == 401
    return statistics.median(times)


def test_a_wrong_password_costs_the_same_whether_the_user_exists_or_not(server):
    known, unknown = wrong_login_seconds(server, EVE[0]), wrong_login_seconds(server, "nobody-here")
    assert 0.5 < known / unknown < 2.0, (known, unknown)


def test_repeated_failures_are_refused_for_a_while_then_the_right_password_works(server):
    user = ("guessed", "the-right-password-3321")
    assert (
        call(server, "POST", "/api/2.0/mlflow/users/create", ADMIN_USER, {"username": user[0], "password": user[1]})[0]
        == 200
    )
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    codes = [call(server, "GET", search, (user[0], f"guess-{n}"))[0] for n in range(FAILURES + 1)]
    assert codes == [401] * FAILURES + [429]
    status, headers, text = call(server, "GET", search, user)  # even the right password, while locked
    assert status == 429 and "too many failed logins for user 'guessed' from 127.0.0.1" in text
    assert int(headers["Retry-After"]) <= LOCKOUT_S
    assert call(server, "GET", search, EVE)[0] == 200  # another user from the same address is not locked
    time.sleep(LOCKOUT_S + 0.5)
    assert call(server, "GET", search, user)[0] == 200


def concrete(path: str) -> str:
    """A request path for a route template: each parameter filled with a placeholder."""
    return re.sub(r"\{\w+(?::\w+)?\}|<(?:\w+:)?\w+>", "x1", path)


def test_every_route_answers_without_credentials_as_classified(server):
    """The unauthenticated sweep: every route MLflow serves (tests/test_server_routes.py
    holds the classification to the running app's routes) refuses or challenges."""
    wrong = []
    for route, access in read_classification(ROUTES_FILE.read_text()).items():
        body = {} if route.method in ("POST", "PUT", "PATCH") else None
        status, _, _ = call(server, route.method, concrete(route.path), body=body)
        expected = {"public": status not in (401, 403), "refused": status == 403}.get(access, status == 401)
        if not expected or status >= 500:
            wrong.append(f"{route} ({access}): {status}")
    assert wrong == []


def test_an_experiment_cannot_point_the_server_at_files_of_its_creators_choosing(server, reachable_tmp):
    """With an artifact location of her own, a user had the server write (upload-artifact) and read files there."""
    target = reachable_tmp / "elsewhere"
    status, _, text = call(
        server,
        "POST",
        "/api/2.0/mlflow/experiments/create",
        EVE,
        {"name": "eves-experiment", "artifact_location": f"file://{target}"},
    )
    assert status == 403 and "create it without artifact_location" in text
    status, _, text = call(server, "POST", "/api/2.0/mlflow/experiments/create", EVE, {"name": "eves-experiment"})
    assert status == 200
    experiment = json.loads(text)["experiment_id"]
    status, _, text = call(server, "GET", f"/api/2.0/mlflow/experiments/get?experiment_id={experiment}", EVE)
    assert json.loads(text)["experiment"]["artifact_location"].startswith("mlflow-artifacts:")
    assert not target.exists()
