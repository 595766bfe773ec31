"""Who may call ``predict`` and ``feedback``: a bearer token locally, the load balancer's IAP identity in the cloud.

``settings.serving.server.auth_mode`` selects the check:

* ``bearer`` (default): ``Authorization: Bearer <token>``, compared in constant time
  (:func:`hmac.compare_digest`) with the token in :func:`token_path` (``<local.home>/run/serving.token``,
  mode 0600). :func:`ensure_token` generates it once (``tenfold up`` / ``tenfold serve`` call it, and so
  does a local replica that starts first); ``tenfold status`` prints it. Outside the local environment
  the token file must already exist (mounted from a secret): a replica never invents a token nobody has.
* ``iap``: Google's Identity-Aware Proxy on the load balancer's backend service authenticates the caller
  and signs ``X-Goog-IAP-JWT-Assertion`` (ES256). The replica verifies the signature against Google's
  published IAP keys, the audience (``serving.server.iap_audience``) and the issuer, and takes the
  caller from the verified ``email`` claim. The plain ``X-Goog-Authenticated-User-Email`` header is
  never trusted on its own: anyone who reaches a replica directly could set it; only the signed
  assertion proves the request came through IAP. IAP must be enabled on the backend service for this
  mode (see docs/serving.md).

Health and readiness are open in both modes (the load balancer's health checks carry no identity); metrics are open
locally, on loopback, and ask for the same login as predict in the cloud (tenfold.serving.app).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tenfold.config import Settings

log = logging.getLogger(__name__)

TOKEN_FILE = "serving.token"
# Google's keys for IAP's signed headers, and the issuer it signs with
# (https://cloud.google.com/iap/docs/signed-headers-howto).
IAP_CERTS_URL = "https://www.gstatic.com/iap/verify/public_key"
IAP_ISSUER = "https://cloud.google.com/iap"
IAP_ASSERTION_HEADER = "x-goog-iap-jwt-assertion"
# How far the assertion's iat and exp may be off this replica's clock. google-auth's default is none, and it compares
# whole seconds: an assertion IAP issued a second "ahead" of the replica's clock was refused ("Token used too early").
# Google's own samples allow 30 s; a stolen assertion gains at most that much life.
IAP_CLOCK_SKEW_S = 30
_TOKEN_BYTES = 32


class AuthError(Exception):
    """The caller is not allowed: ``status`` 401 (no or wrong credentials); the message says what to send."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.message, self.status = message, status


class TokenMissing(RuntimeError):
    """No token file where the settings say it is (or none this process can read or write); the message says how to
    create one."""

    # A refusal, not a fault in the code: a command it escapes (`tenfold serve up`) ends with its message as it is
    # (tenfold.outages.ending), and a retry meets the same file.
    retryable = False


def token_path(settings: Settings) -> Path:
    """Where the serving bearer token lives: ``<settings.local.home>/run/serving.token`` (mode 0600)."""
    return settings.local.home / "run" / TOKEN_FILE


def accepted_tokens(settings: Settings) -> list[str]:
    """Every token in :func:`token_path`, one per line: the current one first, then any still accepted while
    a rotation is under way (clients move to the new token, then the old line is removed and the fleet rolled).

    Raises :class:`TokenMissing` with what to do when there is none.
    """
    path = token_path(settings)
    try:
        tokens = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError as exc:  # never replaced silently: clients may hold the token it was
        raise TokenMissing(
            f"the serving token file {path} is not text ({exc.reason} at byte {exc.start}): delete it and run "
            "`tenfold up` to generate a new one; clients then need the new token (`tenfold status`)") from None
    except FileNotFoundError:
        if not settings.is_local:  # `tenfold up` is local only: here the token comes from the environment's secret
            raise TokenMissing(
                f"no serving token at {path}: outside the local environment a replica never generates one; mount the "
                f"latest version of the Secret Manager secret {settings.serving.token_secret!r} there (mode 0600), as "
                "the serving fleet's startup script does (a secret with no version yet: docs/deploy.md, \"The serving "
                "token\")"
            ) from None
        raise TokenMissing(
            f"no serving token at {path}: run `tenfold up` (or `tenfold serve`) to generate one, "
            "or place the token there (mode 0600)"
        ) from None
    except OSError as exc:  # a folder in its place, no permission to read it: a replica died of a raw traceback
        if not settings.is_local:
            raise TokenMissing(
                f"the serving token file {path} cannot be read ({exc.strerror or exc}): mount the latest version of "
                f"the Secret Manager secret {settings.serving.token_secret!r} there as a file this user can read "
                "(mode 0600), as the serving fleet's startup script does"
            ) from None
        raise TokenMissing(
            f"the serving token file {path} cannot be read ({exc.strerror or exc}): make it a file this user can read "
            "(its owner and permissions, mode 0600), or delete it and run `tenfold up` to generate a new one; clients "
            "then need the new token (`tenfold status`)"
        ) from None
    if not tokens:
        raise TokenMissing(f"the serving token file {path} is empty: delete it and run `tenfold up` to generate a new one")
    return tokens


def read_token(settings: Settings) -> str:
    """The current token (the first line of :func:`token_path`), the one clients are given."""
    return accepted_tokens(settings)[0]


def ensure_token(settings: Settings) -> str:
    """The serving token, generated (``secrets``, 0600, written atomically) when there is none yet.

    Idempotent and safe when several processes call it at once (replicas starting together): the file is
    written under a temporary name and hard-linked into place, which fails if another process got there
    first, so every caller ends up with the one token that won.
    """
    path = token_path(settings)
    with contextlib.suppress(TokenMissing):
        token = read_token(settings)
        _keep_private(path)  # one placed by hand (which TokenMissing invites) may be readable by others
        return token
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(_TOKEN_BYTES) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):  # another process won the race: use its token
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        # A full disk names no file ("[Errno 28] No space left on device"), and a replica, `tenfold up` or the demo
        # reported it as a raw OSError: one refusal naming the token's path and what to do, as for a missing token.
        import errno

        if exc.errno == errno.ENOSPC:
            todo = f"the disk it is on is full: free space there (`df -h {path.parent}`)"
        else:
            todo = f"{path.parent} must be a folder this user can write: fix that path or its permissions"
        raise TokenMissing(f"cannot create the serving token file {path} ({exc.strerror or exc}): {todo}, then run "
                           "`tenfold up` again") from None
    return read_token(settings)


def _keep_private(path: Path) -> None:
    """Make the token file 0600 when others may read it (a warning when this process may not change its mode)."""
    import stat

    try:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)
            log.warning("the serving token file %s was readable by others: made it 0600", path)
    except OSError as exc:
        log.warning("the serving token file %s is readable by others and its mode cannot be changed (%s): "
                    "chmod 600 it", path, exc)


@dataclass(frozen=True)
class Caller:
    """Who made an authorised request (for logs): ``token`` locally, the IAP e-mail in the cloud."""

    identity: str


# What the IAP verifier needs from google-auth: a callable that fetches Google's keys over HTTP. The
# tests hand in a transport serving locally made keys; production uses google-auth's requests transport.
HttpRequest = Callable[..., Any]


class Authenticator:
    """The check ``settings.serving.server.auth_mode`` selects; :meth:`check` raises :class:`AuthError`."""

    def __init__(self, settings: Settings, *, http_request: HttpRequest | None = None) -> None:
        server = settings.serving.server
        self.mode = server.auth_mode
        self._audience = server.iap_audience
        self._tokens: list[bytes] = []
        self._keys: _CachedKeys | None = None
        if self.mode == "bearer":
            if settings.is_local:
                ensure_token(settings)
            self._tokens = [t.encode() for t in accepted_tokens(settings)]
        else:
            if http_request is None:
                import google.auth.transport.requests

                http_request = google.auth.transport.requests.Request()
            self._keys = _CachedKeys(http_request)
            self._keys.prefetch(IAP_CERTS_URL)

    def not_ready(self) -> str | None:
        """Why requests cannot be authorised yet (IAP: no keys fetched), or None: readiness waits for it."""
        if self._keys is not None and not self._keys.held:
            # The health checks are what retries them: they carry no assertion, so they never reach the verifier,
            # and a replica whose fetch at start failed stayed unready for good (no traffic came to fetch again).
            self._keys.retry_if_due(IAP_CERTS_URL)
            return "Google's IAP keys are not fetched yet; they are retried in the background"
        return None

    def allows(self, headers: Mapping[str, str]) -> bool:
        """Whether a request with ``headers`` is authorised (:meth:`check` without the refusal)."""
        try:
            self.check(headers)
        except AuthError:
            return False
        return True

    def check(self, headers: Mapping[str, str]) -> Caller:
        """The caller of a request with ``headers`` (lower-case names, as Starlette gives them)."""
        if self.mode == "iap":
            return self._check_iap(headers.get(IAP_ASSERTION_HEADER))
        return self._check_bearer(headers.get("authorization"))

    def _check_bearer(self, header: str | None) -> Caller:
        if not header:
            raise AuthError("missing credentials: send 'Authorization: Bearer <token>' (`tenfold status` prints the token)")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>' (`tenfold status` prints the token)")
        assert self._tokens
        # Constant time: the comparison must not reveal how many leading characters were right, and every
        # accepted token is compared (no early exit), so timing does not tell which one matched.
        given = token.strip().encode()
        matches = [hmac.compare_digest(given, accepted) for accepted in self._tokens]
        if not any(matches):
            raise AuthError("wrong bearer token: use the one `tenfold status` prints")
        return Caller("token")

    def _check_iap(self, assertion: str | None) -> Caller:
        if not assertion:
            raise AuthError(f"missing {IAP_ASSERTION_HEADER}: call the service through its load balancer (IAP signs "
                            "every request it lets through)")
        from google.auth import exceptions as auth_exceptions
        from google.oauth2 import id_token

        assert self._keys is not None
        # Signed with a key this replica does not hold: Google has published a new one since the keys were fetched
        # (they were otherwise refreshed only once an hour, and every assertion IAP signed with it was refused 401).
        if (kid := _key_id(assertion)) is not None and (behind := self._keys.behind_for(IAP_CERTS_URL, kid)):
            raise AuthError(behind, 503)
        try:
            claims = id_token.verify_token(assertion, self._keys, audience=self._audience,  # type: ignore[arg-type]
                                           certs_url=IAP_CERTS_URL, clock_skew_in_seconds=IAP_CLOCK_SKEW_S)
        except auth_exceptions.TransportError as exc:
            raise AuthError(f"cannot fetch Google's IAP keys to verify the caller ({exc}); retry shortly", 503) from None
        except Exception as exc:  # google-auth and PyJWT raise many types for a bad token: all mean "not valid"
            raise AuthError(f"the IAP assertion is not valid for this service ({exc})") from None
        if claims.get("iss") != IAP_ISSUER:
            raise AuthError(f"the IAP assertion was not issued by {IAP_ISSUER}")
        email = claims.get("email")
        if not email:
            raise AuthError("the IAP assertion names no caller (no email claim)")
        return Caller(str(email))


def _key_id(assertion: str) -> str | None:
    """The ``kid`` in the assertion's header, read without verifying anything (None when it names none or is not a
    JWT: the verifier refuses those)."""
    from google.auth import jwt

    try:
        kid = jwt.decode_header(assertion).get("kid")
    except Exception:  # malformed: left to the verifier, which says so with a 401
        return None
    return kid if isinstance(kid, str) else None


def _key_ids(response: Any) -> frozenset[str] | None:
    """The key ids in a key URL's answer (``{kid: PEM}``, or a JWK set), or None when they cannot be read."""
    try:
        certs = json.loads(response.data)
        if isinstance(certs, dict) and isinstance(certs.get("keys"), list):
            return frozenset(str(k.get("kid")) for k in certs["keys"] if isinstance(k, dict))
        return frozenset(certs) if isinstance(certs, dict) else None
    except Exception:  # the verifier meets the same answer and refuses the assertion
        return None


class _CachedKeys:
    """Google's IAP keys for the verifier, fetched off the request path whenever keys are already held.

    A request never waits on Google: keys older than ``ttl_s`` are still served while one background thread
    refreshes them (and kept if the refresh fails: IAP's keys rotate slowly). Before the first keys, a
    request is refused with 503 at once and starts a background fetch (at most once per ``retry_s`` after a
    failure): fetching on the request path blocked the replica's event loop, health checks included, for up to
    ``timeout_s``. The replica fetches them when it starts (:meth:`prefetch`) and is not ready until it
    holds them (:attr:`held`). An assertion signed with a key id the held keys lack starts a refresh too
    (:meth:`behind_for`), at most once per ``retry_s``.
    """

    def __init__(self, request: HttpRequest, ttl_s: float = 3600.0, timeout_s: float = 5.0,
                 retry_s: float = 10.0) -> None:
        self._request, self._ttl, self._timeout, self._retry = request, ttl_s, timeout_s, retry_s
        # When they were fetched, the key URL's answer, and the key ids in it.
        self._cached: tuple[float, Any, frozenset[str] | None] | None = None
        self._failed_at: float | None = None
        self._lock = threading.Lock()
        self._refreshing = False

    def prefetch(self, url: str) -> None:
        self._refresh_in_background(url)

    def retry_if_due(self, url: str) -> None:
        """Before the first keys: fetch again (in the background) once ``retry_s`` has passed since a failure."""
        failed_at = self._failed_at
        if self._cached is None and failed_at is not None and time.monotonic() - failed_at >= self._retry:
            self._refresh_in_background(url)

    def __call__(self, url: str, method: str = "GET", **kwargs: Any) -> Any:
        now = time.monotonic()
        cached = self._cached
        if cached is not None:
            # Stale keys are refreshed at most once per retry_s after a failed refresh: a refresh that fails fast
            # (egress blocked, a 5xx) otherwise started a fetch, a thread and a warning on every request.
            if now - cached[0] >= self._ttl and (self._failed_at is None or now - self._failed_at >= self._retry):
                self._refresh_in_background(url)
            return cached[1]
        from google.auth import exceptions as auth_exceptions

        if self._failed_at is not None and now - self._failed_at < self._retry:
            raise auth_exceptions.TransportError(  # type: ignore[no-untyped-call]
                f"fetching {url} failed {now - self._failed_at:.0f} s ago; it is tried again every {self._retry:.0f} s")
        self._refresh_in_background(url)
        raise auth_exceptions.TransportError(  # type: ignore[no-untyped-call]
            f"the keys at {url} are being fetched (in the background)")

    def behind_for(self, url: str, kid: str) -> str | None:
        """Why an assertion signed with ``kid`` cannot be checked yet (for a 503), or None: the held keys have it,
        or none are held (the verifier says why), or they were fetched less than ``retry_s`` ago (current keys
        without it: not one of Google's, and the verifier refuses it with a 401).

        Otherwise the keys are older than Google's newest: one refresh starts in the background, at most once per
        ``retry_s`` (a flood of made-up key ids cannot make the replica hammer Google), and the caller is told to
        retry. It never waits for the refresh: the check runs on the event loop, health checks included.
        """
        cached = self._cached
        if cached is None or cached[2] is None or kid in cached[2]:
            return None
        now = time.monotonic()
        held = f"the IAP assertion is signed with key id {kid!r}, which is not among the IAP keys this replica holds"
        if self._refreshing:
            return f"{held}; Google's current keys are being fetched: retry shortly"
        if now - cached[0] < self._retry:
            return None
        if self._failed_at is not None and now - self._failed_at < self._retry:
            return (f"{held}, and fetching Google's current keys failed {now - self._failed_at:.0f} s ago (tried again "
                    f"every {self._retry:.0f} s): retry shortly")
        self._refresh_in_background(url)
        return f"{held}; Google's current keys are being fetched: retry shortly"

    @property
    def held(self) -> bool:
        return self._cached is not None

    def _fetch(self, url: str) -> Any:
        try:
            response = self._request(url, method="GET", timeout=self._timeout)
        except Exception:
            self._failed_at = time.monotonic()
            raise
        if response.status == 200:
            self._cached, self._failed_at = (time.monotonic(), response, _key_ids(response)), None
        else:  # no exception for a refusal (an egress proxy's 403, an outage's 503): the one place its status shows
            log.warning("fetching Google's IAP keys from %s answered HTTP %s; %s, tried again in %.0f s", url,
                        response.status, "the keys held stay in use" if self.held else "the replica stays unready",
                        self._retry)
            self._failed_at = time.monotonic()
        return response

    def _refresh_in_background(self, url: str) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True

        def refresh() -> None:
            try:
                self._fetch(url)
            except Exception as exc:  # keep the keys held; the next request after retry_s tries again
                log.warning("refreshing Google's IAP keys from %s failed (%s); the keys held stay in use", url, exc)
            finally:
                with self._lock:
                    self._refreshing = False

        threading.Thread(target=refresh, name="tenfold-iap-keys", daemon=True).start()
