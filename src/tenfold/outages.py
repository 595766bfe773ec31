"""Which errors of Google's client libraries are an outage, which a later try may not meet, and which a retry would
meet again.

One list for every caller that retries (the publisher's retry predicate, the feedback sink, the inference worker's
store calls, the drift metric's writer) and for the one-line message a command ends with: a service that is away,
overloaded, out of quota or timed out is an outage; a refusal (permissions, a missing topic or bucket, a bad request,
an unimplemented method, data loss) is not.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any


def debug_requested() -> bool:
    """Whether ``TENFOLD_DEBUG`` asks for a traceback instead of :func:`ending`'s one line (1, true, yes, on; not 0)."""
    import os

    return os.environ.get("TENFOLD_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


@cache
def outage_types() -> tuple[type[Exception], ...]:
    """The google-api-core classes of an outage, for a ``Retry`` predicate or an ``except`` clause.

    gRPC (Pub/Sub, Cloud Monitoring) and HTTP (GCS) alike: ``Aborted``; ``DeadlineExceeded`` and HTTP 504;
    ``InternalServerError``, ``Unknown`` and HTTP 502; ``ResourceExhausted`` and HTTP 429; ``ServiceUnavailable``;
    and ``RetryError``, a client's own retries run out on one of these or on a lost connection.
    """
    from google.api_core import exceptions as gexc

    return (gexc.Aborted, gexc.GatewayTimeout, gexc.BadGateway, gexc.InternalServerError, gexc.Unknown,
            gexc.TooManyRequests, gexc.ServiceUnavailable, gexc.RetryError)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` is an outage of a Google service (see :func:`outage_types`)."""
    return isinstance(exc, outage_types())


def is_store_outage(exc: BaseException) -> bool:
    """Whether ``exc``, from a file or GCS store, is worth another try: an outage, or an ``OSError`` of a disk or a
    connection away or full (``requests``' connection errors are ``OSError`` too), not one it would meet again
    (permissions, a name that is taken or is the wrong kind)."""
    if isinstance(exc, (FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    return isinstance(exc, OSError) or is_outage(exc)


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` is an outage (:func:`is_outage`) or a connection that could not be made or was lost (refused,
    reset, timed out, a name that does not resolve), from the standard library or ``requests`` (GCS's transport)."""
    import socket

    if is_outage(exc) or isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    if _auth_unreachable(exc):
        return True
    if isinstance(exc, OSError) and any(f"google::cloud::Status({code}" in str(exc)
                                        for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")):
        return True  # pyarrow's GCS client, its retries run out (fsio.GCS_RETRY_LIMIT_S)
    try:
        import requests
    except ImportError:  # pragma: no cover - google-cloud-storage depends on it
        return False
    return isinstance(exc, (requests.ConnectionError, requests.Timeout))


def command_exit(exc: BaseException, command: str, home: Path, *, note: str = "") -> Any:
    """What a sub-command's handler raises for ``exc`` (no credentials, a full disk, a service away, a refusal): the
    :func:`ending` line (and ``note``) on stderr, and a ``typer.Exit(1)``. With TENFOLD_DEBUG set (as that line may
    advise), ``exc`` itself goes on to the root command's guard, which shows it."""
    import typer

    if debug_requested():
        raise exc
    typer.echo(ending(exc, command, home, debug_hint="with TENFOLD_DEBUG=1") + note, err=True)
    return typer.Exit(1)


def ending(exc: BaseException, command: str, home: Path, *, debug_hint: str) -> str:
    """The one line a command (``tenfold status``, ``python -m tenfold.pipelines.train_model``) ends with when
    ``exc`` escaped it: a refusal (an error whose class says ``retryable = False``) as it is; a service that cannot
    be reached, with where to look; what a Google service refused (a 4xx); what the system refused
    (:func:`tenfold.fsio.os_error_refusal`); anything else
    as a fault in the code, with ``debug_hint`` (how to see its traceback). Never the traceback itself."""
    from tenfold.fsio import os_error_refusal

    if _login_refused(exc):
        return (f"error: `{command}`: its Google Cloud credentials were refused ({type(exc).__name__}: "
                f"{_said(exc)}): run `gcloud auth application-default login` again (or set "
                "GOOGLE_APPLICATION_CREDENTIALS), or unset TENFOLD_ENV to work on the local platform")
    if no_credentials(exc):
        return (f"error: `{command}` found no Google Cloud credentials ({type(exc).__name__}): run `gcloud auth "
                "application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS), or unset TENFOLD_ENV to work on "
                "the local platform")
    # google-auth's errors carry ``retryable`` too (False by default): those that are a service away are said below.
    if getattr(exc, "retryable", True) is False and not _auth_unreachable(exc):
        return f"error: `{command}`: {exc}"
    if is_unreachable(exc):
        return (f"error: `{command}` cannot reach a service it needs ({type(exc).__name__}: {_said(exc)}). Locally, "
                "`tenfold status` shows what is down and `tenfold up` starts it; in the cloud, check the service and "
                "this process's credentials; then run the command again")
    if _google_refusal(exc):
        return (f"error: `{command}` was refused by a Google service ({type(exc).__name__}: {exc}): check that what it "
                "names exists (locally `tenfold up` provisions it; in the cloud, the stacks) and that this process's "
                "credentials have the role it needs; a retry meets the same answer")
    if isinstance(exc, OSError):
        return os_error_refusal(exc, command, home)
    if getattr(exc, "local_service", False) is True:
        # tenfold.local's LocalPlatformError (not imported: data and config import this module): a local service
        # missing, hung or refusing (HAProxy's runtime API silent: "is the fleet up?"), whose message names it and
        # what to do. Called a fault in the code, it was to be reported as a bug.
        return f"error: `{command}`: {exc}"
    return (f"error: `{command}` failed on a fault in the code ({type(exc).__name__}: {exc}); run it again "
            f"{debug_hint} for the traceback, and report it")


def _google_refusal(exc: BaseException) -> bool:
    """A Google API's 4xx (permission denied, not found, a bad request), an outage excepted: the service answered,
    and said no. Not a fault in the code, nor an outage a retry outlasts."""
    try:
        from google.api_core.exceptions import ClientError
    except ImportError:  # pragma: no cover - google-api-core comes with every Google client Tenfold uses
        return False
    return isinstance(exc, ClientError) and not is_outage(exc)


def not_the_data(exc: BaseException) -> bool:
    """Whether an error met reading data is the store's or this process's, not the data's: a service away
    (:func:`is_unreachable`) or no credentials (:func:`no_credentials`). A reader raises it as it is, so the task is
    retried (or ends saying how to log in), instead of refusing the data and quarantining it."""
    return is_unreachable(exc) or no_credentials(exc)


def no_credentials(exc: BaseException) -> bool:
    """Whether ``exc`` says this process has no Google Cloud credentials (google-auth's, or pyarrow's GCS client's)."""
    try:
        from google.auth.exceptions import DefaultCredentialsError
    except ImportError:  # pragma: no cover - google-auth comes with every Google client Tenfold uses
        return False
    # pyarrow's GCS client says it in its status text (an OSError) once its retries run out.
    return isinstance(exc, DefaultCredentialsError) or _login_refused(exc) or (
        isinstance(exc, OSError) and "Could not create a OAuth2 access token" in str(exc))


def retry_cannot_cure(exc: BaseException) -> bool:
    """Whether ``exc`` is an error no retry can cure: its class says ``retryable = False`` (a refusal of the data or
    the conf: a pipeline task fails without retries, a training rank records its refusal). google-auth's errors carry
    ``retryable`` False by default, a network blip's ``TransportError`` included: one of a service away
    (:func:`_auth_unreachable`) is retried as any outage is; no credentials, or a refused login, is final."""
    return getattr(exc, "retryable", True) is False and not _auth_unreachable(exc)


def _login_refused(exc: BaseException) -> bool:
    """google-auth's ``RefreshError`` that a retry would meet again (``invalid_grant``: a login expired or revoked, a
    service account key deleted): the credentials were found, and refused. What to do is to log in again; it is the
    process's, never the data's. A refresh that failed on the way (:func:`_auth_unreachable`) is not this."""
    try:
        from google.auth.exceptions import RefreshError
    except ImportError:  # pragma: no cover - google-auth comes with every Google client Tenfold uses
        return False
    return isinstance(exc, RefreshError) and not _auth_unreachable(exc)


def _auth_unreachable(exc: BaseException) -> bool:
    """google-auth's error of a service away: one it marks ``retryable`` (a token endpoint's 5xx,
    ``temporarily_unavailable``), a ``TransportError`` or its ``TimeoutError`` (the request never had an answer:
    google-auth leaves these ``retryable`` False), or a ``RefreshError`` made of one (Compute Engine's metadata server
    not answering). None of them subclasses OSError or google-api-core's errors."""
    try:
        from google.auth import exceptions as gauth
    except ImportError:  # pragma: no cover - google-auth comes with every Google client Tenfold uses
        return False
    if not isinstance(exc, gauth.GoogleAuthError):
        return False
    if exc.retryable is True or isinstance(exc, (gauth.TransportError, gauth.TimeoutError)):
        return True
    return isinstance(exc, gauth.RefreshError) and (
        isinstance(exc.__cause__, gauth.TransportError) or any(isinstance(a, gauth.TransportError) for a in exc.args))


def _said(exc: BaseException) -> str:
    """``exc``'s message: google-auth's errors take the response as a second argument (``RefreshError("invalid_grant:
    Token has been expired or revoked.", {...})``), and ``str`` of them is then the tuple's repr."""
    first = exc.args[0] if exc.args else None
    return first if len(exc.args) > 1 and isinstance(first, str) else str(exc)
