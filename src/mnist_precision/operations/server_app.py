"""The team server's MLflow app: MLflow's basic-auth app behind the project's guard.

`mlflow server --app-name mnist-precision` selects it (the `mlflow.app` entry
point in pyproject.toml); `mnist-precision server` passes that name. MLflow's
basic-auth app still authenticates every request and checks each user's
permissions; the guard, an ASGI layer around it, adds what that app lacks:

- every route MLflow serves has an access class in `server_routes.txt`:
  `public` (no login), `user` (MLflow's own permission checks), `admin` (the
  server's admins only) or `refused` (nobody: the routes that run commands,
  write files outside the artifact store, reach URLs a user names, or make
  shared demo content). A route without a class refuses the server's start;
- an experiment's artifact location is the server's artifact store: one a
  user names would have the server read and write files wherever it points;
- wrong passwords cost the same time whether the user exists or not, and one
  client's repeated failures for one user are refused for a while;
- CORS for the server's own origin and the origins named in its config only,
  HSTS over TLS, and a 401 (not a 500) for a non-basic Authorization header.

Its settings come from the `[mnist-precision]` section of the auth app's ini
(MLFLOW_AUTH_CONFIG_PATH), which `mnist-precision server` writes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import configparser
import json
import os
import re
import secrets
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROUTES_FILE = Path(__file__).with_name("server_routes.txt")
ACCESS = ("public", "user", "admin", "refused")  # from the most open to the strictest
SECTION = "mnist-precision"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class UnclassifiedRoutes(RuntimeError):
    """MLflow serves a route that server_routes.txt does not classify."""


@dataclass(frozen=True)
class Route:
    """One method of one path template, as MLflow declares it."""

    method: str
    path: str

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def read_classification(text: str) -> dict[Route, str]:
    """`ACCESS METHOD[,METHOD] PATH` per line; `#` starts a comment."""
    classes: dict[Route, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        access, methods, path = line.split(maxsplit=2)
        if access not in ACCESS:
            raise ValueError(f"{ROUTES_FILE.name}:{number}: {access!r} is not one of {', '.join(ACCESS)}")
        for method in methods.split(","):
            classes[Route(method, path)] = access
    return classes


def served_routes(app: Any) -> Iterator[Route]:
    """Every (method, path template) the FastAPI app and its mounted Flask app serve."""
    yield from _native_routes(app.routes, "")
    from mlflow.server import app as flask_app

    for rule in flask_app.url_map.iter_rules():
        for method in sorted(set(rule.methods or ()) - {"HEAD", "OPTIONS"}):
            yield Route(method, rule.rule)


def _native_routes(routes: Iterable[Any], prefix: str) -> Iterator[Route]:
    from starlette.routing import Mount

    for route in routes:
        if hasattr(route, "original_router"):  # a router FastAPI includes lazily
            yield from _native_routes(route.original_router.routes, prefix + (route.include_context.prefix or ""))
        elif isinstance(route, Mount):  # the Flask app at "/": its rules come from its url_map
            continue
        elif hasattr(route, "methods") and hasattr(route, "path"):
            for method in sorted(set(route.methods or ()) - {"HEAD", "OPTIONS"}):
                yield Route(method, prefix + route.path)
        else:
            raise UnclassifiedRoutes(f"a route of a kind the guard cannot read: {route!r}")


_PARAMETER = re.compile(r"\{(\w+)(?::(\w+))?\}|<(?:(\w+):)?(\w+)>")


def template_pattern(path: str) -> re.Pattern[str]:
    """The regular expression of a Starlette (`{name:path}`) or Werkzeug (`<path:name>`) template."""
    pattern, end = "", 0
    for match in _PARAMETER.finditer(path):
        converter = match.group(2) or match.group(3)
        pattern += re.escape(path[end : match.start()]) + (".+" if converter == "path" else "[^/]+")
        end = match.end()
    return re.compile(pattern + re.escape(path[end:]))


@dataclass(frozen=True)
class RouteTable:
    """Which access a request has, by the strictest class of the routes it matches."""

    entries: tuple[tuple[re.Pattern[str], str, str], ...]

    @classmethod
    def build(cls, served: Iterable[Route], classes: dict[Route, str]) -> RouteTable:
        served = list(dict.fromkeys(served))
        missing = [route for route in served if route not in classes]
        if missing:
            raise UnclassifiedRoutes(
                f"{len(missing)} route(s) of the installed MLflow have no access class in {ROUTES_FILE}: "
                + "; ".join(map(str, missing))
                + ". Decide public, user, admin or refused for each (docs/teams.md)"
            )
        return cls(tuple((template_pattern(route.path), route.method, classes[route]) for route in served))

    def access(self, method: str, path: str) -> str | None:
        """None where no route serves the path (or not with this method)."""
        method = "GET" if method == "HEAD" else method
        found = [access for pattern, served, access in self.entries if served == method and pattern.fullmatch(path)]
        return max(found, key=ACCESS.index) if found else None


@dataclass(frozen=True)
class Settings:
    """The guard's settings, from the `[mnist-precision]` section of the auth ini."""

    cors_origins: tuple[str, ...] = ()
    login_failures: int = 10  # failed logins of one user from one address ...
    login_window_s: float = 300.0  # ... within this many seconds ...
    login_lockout_s: float = 300.0  # ... refuse its logins for this long

    @classmethod
    def from_ini(cls, path: str | None) -> Settings:
        parser = configparser.ConfigParser()
        if path:
            parser.read(path)
        if not parser.has_section(SECTION):
            return cls()
        section = parser[SECTION]
        return cls(
            tuple(origin for origin in section.get("cors_origins", "").split() if origin),
            section.getint("login_failures", cls.login_failures),
            section.getfloat("login_window_seconds", cls.login_window_s),
            section.getfloat("login_lockout_seconds", cls.login_lockout_s),
        )


@dataclass
class LoginThrottle:
    """Failed logins per (client address, user name); too many in the window lock that pair out."""

    settings: Settings
    failures: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    locked_until: dict[tuple[str, str], float] = field(default_factory=dict)
    max_keys: int = 100_000

    def seconds_locked(self, key: tuple[str, str], now: float) -> float:
        until = self.locked_until.get(key, 0.0)
        if until <= now:
            self.locked_until.pop(key, None)
            return 0.0
        return until - now

    def failed(self, key: tuple[str, str], now: float) -> None:
        if len(self.failures) >= self.max_keys:  # made-up names must not grow it without end
            self.forget_before(now)
        recent = [t for t in self.failures.get(key, []) if now - t < self.settings.login_window_s] + [now]
        if len(recent) >= self.settings.login_failures:
            self.locked_until[key] = now + self.settings.login_lockout_s
            recent = []
        self.failures[key] = recent

    def forget_before(self, now: float) -> None:
        """Drop the failures older than the window and the lockouts that ended."""
        window = self.settings.login_window_s
        self.failures = {key: times for key, times in self.failures.items() if times and now - times[-1] < window}
        self.locked_until = {key: until for key, until in self.locked_until.items() if until > now}

    def succeeded(self, key: tuple[str, str]) -> None:
        self.failures.pop(key, None)


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return username, password


async def respond(send: Send, status: int, text: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = text.encode() + b"\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then what the client sends next (its disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> dict:
        return pending.pop() if pending else await receive()

    return replayed


def names_artifact_location(body: bytes) -> bool:
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return False  # MLflow refuses what is not JSON
    return isinstance(request, dict) and bool(request.get("artifact_location"))


REFUSED = (
    "this server refuses {route} to every user: it would run commands, write files outside the artifact "
    "store, reach URLs a user names or make shared demo content on the server (docs/teams.md)"
)
OWN_ARTIFACT_LOCATION = (
    "an experiment's artifacts live in this server's artifact store: create it without "
    "artifact_location (a location of your own would have the server read and write files there)"
)
CREATE_EXPERIMENT = re.compile(r"/(ajax-)?api/2\.0/mlflow/experiments/create")
CHALLENGE = [(b"www-authenticate", b'Basic realm="mlflow"')]
HSTS = (b"strict-transport-security", b"max-age=31536000")


class Guard:
    """The ASGI layer in front of MLflow's basic-auth app (see the module's docstring)."""

    def __init__(self, inner: ASGIApp, routes: RouteTable, settings: Settings, store: Any):
        self.inner, self.routes, self.settings, self.store = inner, routes, settings, store
        self.throttle = LoginThrottle(settings)
        self._decoy_hash: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # MLflow serves none: nothing to pass on
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        await self.guard(scope, receive, send)

    async def guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        method, path = scope["method"], scope["path"]
        origin = headers.get("origin")
        foreign = origin is not None and not self.same_or_named_origin(origin, scope["scheme"], headers.get("host"))
        if foreign and method not in ("GET", "HEAD"):
            await respond(
                send,
                403,
                f"cross-origin request from {origin} refused: this server allows its own "
                "origin and those given with mnist-precision server --cors-origin",
            )
            return
        if method == "OPTIONS":  # a CORS preflight from an allowed origin: MLflow's CORS layer answers it
            await self.inner(scope, receive, self.with_headers(send, scope, foreign))
            return
        access = self.routes.access(method, path)
        if access is None:
            await respond(send, 404, "not found")
            return
        if access == "refused":
            await respond(send, 403, REFUSED.format(route=f"{method} {path}"))
            return
        if access == "public":
            await self.inner(scope, receive, self.with_headers(send, scope, foreign))
            return
        if method == "POST" and CREATE_EXPERIMENT.fullmatch(path):
            body = await read_body(receive)
            if names_artifact_location(body):
                await respond(send, 403, OWN_ARTIFACT_LOCATION)
                return
            receive = replay(body, receive)
        await self.authenticated(scope, receive, send, headers.get("authorization"), access, foreign)

    async def authenticated(
        self, scope: Scope, receive: Receive, send: Send, authorization: str | None, access: str, foreign: bool
    ) -> None:
        if authorization is None:
            await self.inner(scope, receive, self.with_headers(send, scope, foreign))  # MLflow answers 401
            return
        credentials = basic_credentials(authorization)
        if credentials is None:
            await respond(
                send,
                401,
                "this server takes HTTP basic authentication only (a user name and "
                "password: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)",
                CHALLENGE,
            )
            return
        key = ((scope.get("client") or ("unknown", 0))[0], credentials[0])
        locked = self.throttle.seconds_locked(key, time.monotonic())
        if locked:
            await respond(
                send,
                429,
                f"too many failed logins for user {key[1]!r} from {key[0]}: refused for "
                f"another {locked:.0f} s, then try again",
                [(b"retry-after", b"%d" % locked)],
            )
            return
        if access == "admin":
            admin = await self.admin(*credentials)
            if admin is None:
                await self.failed(key, credentials)
                await respond(send, 401, "wrong user name or password", CHALLENGE)
                return
            if not admin:
                await respond(send, 403, f"{scope['method']} {scope['path']} is for the server's admins only")
                return
        await self.inner(scope, receive, self.with_headers(send, scope, foreign, key, credentials))

    async def admin(self, username: str, password: str) -> bool | None:
        """Whether the user is an admin; None where the password is wrong or the user unknown."""

        def check() -> bool | None:
            if not self.store.authenticate_user(username, password):
                return None
            return bool(self.store.get_user(username).is_admin)

        return await asyncio.to_thread(check)

    async def failed(self, key: tuple[str, str], credentials: tuple[str, str]) -> None:
        """Record a failed login; for an unknown user, spend the time a known one's hash check takes."""
        self.throttle.failed(key, time.monotonic())
        if not await asyncio.to_thread(self.store.has_user, credentials[0]):
            await asyncio.to_thread(self.decoy_check, credentials[1])

    def decoy_check(self, password: str) -> None:
        from werkzeug.security import check_password_hash, generate_password_hash

        if self._decoy_hash is None:  # the method and cost MLflow's store hashes with
            self._decoy_hash = generate_password_hash(secrets.token_urlsafe(16))
        check_password_hash(self._decoy_hash, password)

    def same_or_named_origin(self, origin: str, scheme: str, host: str | None) -> bool:
        return origin == f"{scheme}://{host}" or origin in self.settings.cors_origins

    def with_headers(
        self,
        send: Send,
        scope: Scope,
        foreign: bool,
        key: tuple[str, str] | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> Send:
        """`send`, with HSTS over TLS, no CORS grant for a foreign origin, and the login's outcome recorded."""

        async def forward(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if not (foreign and name.lower().startswith(b"access-control-"))
                ]
                if scope["scheme"] == "https":
                    headers.append(HSTS)
                message = message | {"headers": headers}
                if key and credentials:
                    if message["status"] == 401:
                        await self.failed(key, credentials)
                    else:
                        self.throttle.succeeded(key)
            await send(message)

        return forward


def create_app() -> Guard:
    """MLflow's basic-auth app, wrapped: the factory `mlflow server --app-name mnist-precision` calls."""
    from mlflow.server import auth

    inner = auth.create_app()
    routes = RouteTable.build(served_routes(inner), read_classification(ROUTES_FILE.read_text()))
    return Guard(inner, routes, Settings.from_ini(os.environ.get("MLFLOW_AUTH_CONFIG_PATH")), auth.store)


def bootstrap_admin(uri: str, username: str, password: str) -> None:
    """The admin user in the auth database (its schema migrated first), unless it exists:
    an existing admin keeps its password, as with MLflow's own bootstrap."""
    with warnings.catch_warnings():  # MLflow's own import of a deprecated Starlette module
        warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")
        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(uri)
    try:
        if not store.has_user(username):
            store.create_user(username, password, is_admin=True)
    finally:
        store.engine.dispose()


if __name__ == "__main__":  # `mnist-precision server` bootstraps the admin: one JSON object on standard input
    from mlflow.exceptions import MlflowException

    try:
        bootstrap_admin(**json.loads(sys.stdin.read()))
    except MlflowException as error:
        sys.exit(error.message)
