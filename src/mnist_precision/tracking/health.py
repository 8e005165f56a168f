"""Whether the tracking server answers, and takes our credentials, before any work."""

from __future__ import annotations

import base64
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES

from mnist_precision.base.errors import UserError


class TrackingError(UserError):
    """The MLflow store cannot be reached, or lacks the run a stage needs."""


CA_VARIABLE = "MLFLOW_TRACKING_SERVER_CERT_PATH"  # MLflow's own: the CA (or certificate) a client trusts


def tls_context() -> ssl.SSLContext:
    """Certificates verified as MLflow's client verifies them: against the
    system's CAs, or the file MLFLOW_TRACKING_SERVER_CERT_PATH names."""
    return ssl.create_default_context(cafile=os.environ.get(CA_VARIABLE) or None)


def untrusted(error: BaseException) -> bool:
    return isinstance(getattr(error, "reason", error), ssl.SSLCertVerificationError)


def untrusted_error(uri: str, error: BaseException) -> TrackingError:
    reason = getattr(error, "reason", error)
    return TrackingError(
        f"the MLflow tracking server at {uri} presented a certificate this client does not trust "
        f"({getattr(reason, 'verify_message', reason)}): set {CA_VARIABLE} to the file of the CA that signed it "
        f"(or its certificate)"
    )


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Before any work, check that the tracking server answers and takes our
    credentials. A server that is down (restarting, say) is waited for as
    MLflow's own retries would wait (MLFLOW_HTTP_REQUEST_MAX_RETRIES, 7 by
    default: about 2 minutes; 0 fails at once), then refused by name."""
    if urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
        return
    base = uri.rstrip("/")
    retries = MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()
    context = tls_context() if uri.startswith("https") else None
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(base + "/health", timeout=timeout_s, context=context):
                break
        except (OSError, ValueError) as error:
            if untrusted(error):  # no wait cures it
                raise untrusted_error(uri, error) from None
            if attempt == retries:
                raise TrackingError(
                    f"the MLflow tracking server at MLFLOW_TRACKING_URI={uri} is not reachable ({error}); "
                    "start it, or unset MLFLOW_TRACKING_URI to use the repository's own store"
                ) from None
            if attempt == 0:
                print(f"mlflow: waiting for the tracking server at {uri} ({error})", file=sys.stderr)
            time.sleep(min(MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() * 2**attempt, 60))
    request = urllib.request.Request(base + "/api/2.0/mlflow/experiments/search?max_results=1")
    username, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if username or password:
        token = base64.b64encode(f"{username or ''}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context):
            pass
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            given = "none were set" if not (username or password) else f"user {username!r}"
            raise TrackingError(
                f"the MLflow tracking server at {uri} refused the credentials (HTTP {error.code}; {given}): "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that server"
            ) from None
        raise TrackingError(
            f"the MLflow tracking server at {uri} answered HTTP {error.code} ({error.reason})"
        ) from None
    except (OSError, ValueError) as error:
        raise TrackingError(f"the MLflow tracking server at {uri} did not answer ({error})") from None
