"""Serving auth: the token file (0600, atomic, one winner), the bearer check, and IAP's signed header
verified against keys served by a local transport (the boundary google-auth fetches them through)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tenfold.serving.auth import (
    IAP_CERTS_URL,
    IAP_ISSUER,
    Authenticator,
    AuthError,
    TokenMissing,
    accepted_tokens,
    ensure_token,
    read_token,
    token_path,
)

AUDIENCE = "/projects/123456/global/backendServices/987654"


def _server_settings(settings: Any, **fields: Any) -> Any:
    server = settings.serving.server.model_copy(update=fields)
    return settings.model_copy(update={"serving": settings.serving.model_copy(update={"server": server})})


def test_the_token_is_generated_once_0600_under_the_home(settings: Any) -> None:
    path = token_path(settings)
    assert path == settings.local.home / "run" / "serving.token"
    with pytest.raises(TokenMissing, match="tenfold up"):
        read_token(settings)
    token = ensure_token(settings)
    assert len(token) >= 40 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(settings) == token == read_token(settings)
    assert [p.name for p in path.parent.iterdir()] == ["serving.token"]  # no temporary files left


def test_a_token_placed_by_hand_readable_by_others_is_made_0600(settings: Any) -> None:
    """The refusal for a missing token invites placing one by hand; one placed 0644 stayed readable by every user."""
    path = token_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a-token-placed-by-hand-" + "x" * 30 + "\n")
    path.chmod(0o644)
    assert ensure_token(settings) == "a-token-placed-by-hand-" + "x" * 30
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


_RACE = """
import sys
import threading
from tenfold.config import build_settings
from tenfold.serving.auth import ensure_token
settings = build_settings("local", {"TENFOLD_HOME": sys.argv[1]})
print("ready", flush=True)
sys.stdin.readline()  # the start, sent to every process at once
print(ensure_token(settings))
"""


def test_replicas_starting_together_agree_on_one_token(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    # Every process imported and waiting (each said so), then all started together: they generate at once.
    assert [p.stdout.readline().strip() for p in procs if p.stdout] == ["ready"] * 4
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    tokens = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert [p.returncode for p in procs] == [0] * 4
    assert len(tokens) == 1 and "" not in tokens


def test_bearer_check(settings: Any) -> None:
    auth = Authenticator(settings)
    token = read_token(settings)
    assert auth.check({"authorization": f"Bearer {token}"}).identity == "token"
    for header in ({}, {"authorization": "Bearer nope"}, {"authorization": f"Basic {token}"},
                   {"authorization": f"Bearer {token}x"}, {"authorization": token}):
        with pytest.raises(AuthError) as err:
            auth.check(header)
        assert err.value.status == 401


def test_a_rotation_accepts_the_new_and_the_old_token_until_the_old_line_goes(settings: Any) -> None:
    old = ensure_token(settings)
    new = "n" * 43
    token_path(settings).write_text(f"{new}\n{old}\n")  # rotation under way: clients move to the first line
    assert read_token(settings) == new and accepted_tokens(settings) == [new, old]
    auth = Authenticator(settings)
    for token in (new, old):
        assert auth.check({"authorization": f"Bearer {token}"}).identity == "token"
    token_path(settings).write_text(f"{new}\n")  # rotation done: the fleet is rolled onto the file without the old line
    with pytest.raises(AuthError):
        Authenticator(settings).check({"authorization": f"Bearer {old}"})
    assert Authenticator(settings).check({"authorization": f"Bearer {new}"}).identity == "token"


def test_outside_local_a_replica_never_invents_a_token(tmp_path: Path) -> None:
    from tenfold.config import build_settings

    dev = build_settings("dev", {"TENFOLD_HOME": str(tmp_path)})
    with pytest.raises(TokenMissing, match="Secret Manager secret 'tenfold-dev-serving-token'") as missing:
        Authenticator(dev)
    assert not token_path(dev).exists()
    assert "tenfold up" not in str(missing.value)  # it generates a token on this machine only, never in dev or prod


def test_iap_mode_needs_an_audience() -> None:
    from tenfold.config.serving import ServerSettings

    with pytest.raises(ValueError, match="iap_audience"):
        ServerSettings(auth_mode="iap")
    assert ServerSettings(auth_mode="iap", iap_audience=AUDIENCE).auth_mode == "iap"


# --- IAP: signed ES256 assertions, keys served by a local transport --------------------------------------

class KeyServer:
    """What google-auth's transport returns for Google's IAP key URL, from keys made here."""

    def __init__(self, keys: dict[str, str], status: int = 200) -> None:
        self.keys, self.status, self.fetches = keys, status, 0

    def __call__(self, url: str, method: str = "GET", **kwargs: Any) -> Any:
        assert url == IAP_CERTS_URL and method == "GET"
        self.fetches += 1

        from types import SimpleNamespace

        return SimpleNamespace(status=self.status, data=json.dumps(self.keys).encode(), headers={})


def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _iap(settings: Any, keys: Any) -> Authenticator:
    """An IAP authenticator that has fetched its keys (in the background, as a replica does at start)."""
    auth = Authenticator(_server_settings(settings, auth_mode="iap", iap_audience=AUDIENCE), http_request=keys)
    _until(lambda: auth.not_ready() is None)
    return auth


@pytest.fixture(scope="module")
def es256() -> tuple[Any, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, public.decode()


def _assertion(key: Any, kid: str = "k1", **claims: Any) -> str:
    import jwt

    now = int(time.time())
    body = {"iss": IAP_ISSUER, "aud": AUDIENCE, "email": "ana@example.com", "sub": "accounts.google.com:1",
            "iat": now, "exp": now + 600, **claims}
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": kid})


def test_iap_accepts_a_valid_assertion_and_names_the_caller(settings: Any, es256: tuple[Any, str]) -> None:
    key, public = es256
    auth = _iap(settings, KeyServer({"k1": public}))
    assert auth.check({"x-goog-iap-jwt-assertion": _assertion(key)}).identity == "ana@example.com"
    assert not token_path(settings).exists()  # IAP mode needs no token


@pytest.mark.parametrize("claims", [
    {"aud": "/projects/1/global/backendServices/other"},
    {"iss": "https://accounts.google.com"},
    {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 4200},
    {"email": ""},
])
def test_iap_refuses_assertions_for_others_or_expired(settings: Any, es256: tuple[Any, str], claims: dict[str, Any]) -> None:
    key, public = es256
    auth = _iap(settings, KeyServer({"k1": public}))
    with pytest.raises(AuthError) as err:
        auth.check({"x-goog-iap-jwt-assertion": _assertion(key, **claims)})
    assert err.value.status == 401


def test_iap_refuses_a_forged_signature_and_a_bare_email_header(settings: Any, es256: tuple[Any, str]) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    _key, public = es256
    auth = _iap(settings, KeyServer({"k1": public}))
    forged = _assertion(ec.generate_private_key(ec.SECP256R1()))
    for headers in ({"x-goog-iap-jwt-assertion": forged},
                    {"x-goog-authenticated-user-email": "accounts.google.com:ana@example.com"}):
        with pytest.raises(AuthError) as err:
            auth.check(headers)
        assert err.value.status == 401


def test_iap_keys_that_cannot_be_fetched_are_a_503(settings: Any, es256: tuple[Any, str]) -> None:
    key, _public = es256
    server = KeyServer({}, status=500)
    auth = Authenticator(_server_settings(settings, auth_mode="iap", iap_audience=AUDIENCE), http_request=server)
    # The fetch at start has failed (not merely begun): the refusal is the failed fetch's, not "being fetched".
    assert auth._keys is not None
    _until(lambda: server.fetches == 1 and auth._keys is not None and auth._keys._failed_at is not None)
    assert auth.not_ready() is not None
    with pytest.raises(AuthError) as err:
        auth.check({"x-goog-iap-jwt-assertion": _assertion(key)})
    assert err.value.status == 503
    assert "failed" in str(err.value) and "tried again" in str(err.value)
    assert server.fetches == 1  # within retry_s, a request does not fetch again


class SlowKeyServer(KeyServer):
    """A key URL that answers only once ``release`` is set (Google unreachable until then)."""

    def __init__(self, keys: dict[str, str]) -> None:
        super().__init__(keys)
        self.release = threading.Event()
        self.timeouts: list[float] = []

    def __call__(self, url: str, method: str = "GET", **kwargs: Any) -> Any:
        self.timeouts.append(kwargs["timeout"])
        if not self.release.wait(10):
            raise RuntimeError("unreachable")
        return super().__call__(url, method)


def test_iap_keys_are_refreshed_off_the_request_path_and_held_keys_serve_meanwhile(es256: tuple[Any, str]) -> None:
    from tenfold.serving.auth import _CachedKeys

    _key, public = es256
    server = SlowKeyServer({"k1": public})
    server.release.set()
    keys = _CachedKeys(server, ttl_s=0.2, timeout_s=5.0)
    keys.prefetch(IAP_CERTS_URL)
    _until(lambda: keys.held)
    assert keys(IAP_CERTS_URL).status == 200 and server.fetches == 1 and server.timeouts == [5.0]
    server.release.clear()  # Google stops answering
    time.sleep(0.25)  # the keys are now older than their TTL
    started = time.monotonic()
    for _ in range(20):  # every request is answered from the held keys at once, one refresh in the background
        assert keys(IAP_CERTS_URL).status == 200
    assert time.monotonic() - started < 0.5
    _until(lambda: len(server.timeouts) >= 2)  # the refresh thread may not have reached the key server yet
    assert len(server.timeouts) == 2  # one refresh for the twenty requests, not one each
    server.release.set()
    deadline = time.monotonic() + 10
    while server.fetches < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_before_any_iap_keys_a_failed_fetch_is_not_repeated_by_every_request(
        caplog: pytest.LogCaptureFixture) -> None:
    """And the key URL's status is logged: an answer that is not 200 raises nothing, so the replica stayed unready
    with "not fetched yet" and no line anywhere saying that Google (or a proxy) answered 500 or 403."""
    from google.auth import exceptions as auth_exceptions

    from tenfold.serving.auth import _CachedKeys

    server = KeyServer({}, status=500)
    keys = _CachedKeys(server, retry_s=60.0)
    with caplog.at_level("WARNING", logger="tenfold.serving.auth"):
        with pytest.raises(auth_exceptions.TransportError, match="being fetched"):
            keys(IAP_CERTS_URL)  # starts the fetch in the background, answers at once
        _until(lambda: server.fetches == 1 and keys._failed_at is not None)
    assert f"fetching Google's IAP keys from {IAP_CERTS_URL} answered HTTP 500; the replica stays unready" in caplog.text
    for _ in range(5):
        with pytest.raises(auth_exceptions.TransportError, match="tried again every 60 s"):
            keys(IAP_CERTS_URL)
    assert server.fetches == 1


def test_a_request_before_the_first_iap_keys_never_waits_on_google_and_the_replica_is_not_ready(
    settings: Any, es256: tuple[Any, str]
) -> None:
    """The first keys were fetched on the request path: with Google unreachable, every request (and the event
    loop with it, health checks included) waited up to 5 s once per retry window."""
    key, public = es256
    server = SlowKeyServer({"k1": public})  # unreachable until released
    auth = Authenticator(_server_settings(settings, auth_mode="iap", iap_audience=AUDIENCE), http_request=server)
    assert auth.not_ready() is not None
    started = time.monotonic()
    for _ in range(5):
        with pytest.raises(AuthError) as err:
            auth.check({"x-goog-iap-jwt-assertion": _assertion(key)})
        assert err.value.status == 503
    assert time.monotonic() - started < 0.5
    server.release.set()
    _until(lambda: auth.not_ready() is None)
    assert auth.check({"x-goog-iap-jwt-assertion": _assertion(key)}).identity == "ana@example.com"


def test_stale_iap_keys_whose_refresh_fails_are_refreshed_once_per_retry_window_not_per_request(
        es256: tuple[Any, str]) -> None:
    """Past the keys' TTL, a refresh that failed fast (a 500, egress blocked) was started again by every request:
    a fetch, a thread and a warning each, at the request rate."""
    from tenfold.serving.auth import _CachedKeys

    _key, public = es256
    server = KeyServer({"k1": public})
    keys = _CachedKeys(server, ttl_s=0.05, retry_s=60.0)
    keys.prefetch(IAP_CERTS_URL)
    _until(lambda: keys.held)
    server.status = 500  # Google's key URL fails from now on
    time.sleep(0.06)  # the held keys are stale
    assert keys(IAP_CERTS_URL).status == 200  # held keys serve, one refresh starts
    _until(lambda: server.fetches == 2 and keys._failed_at is not None and not keys._refreshing)
    started: list[str] = []  # every refresh a request starts, counted when it starts (no wait for its thread)
    real_refresh = keys._refresh_in_background
    keys._refresh_in_background = lambda url: (started.append(url), real_refresh(url))[1]  # type: ignore[method-assign]
    for _ in range(200):
        assert keys(IAP_CERTS_URL).status == 200
    assert started == [] and not keys._refreshing
    assert server.fetches == 2


def _age(keys: Any, seconds: float) -> None:
    """Make the held keys look fetched ``seconds`` earlier (older than retry_s, far younger than their TTL)."""
    keys._cached = (keys._cached[0] - seconds, *keys._cached[1:])


def test_an_assertion_signed_with_a_key_google_published_after_the_fetch_is_accepted_once_it_is_fetched(
        settings: Any, es256: tuple[Any, str]) -> None:
    """The keys were refreshed only once their hour was up: every assertion IAP signed with a key published since was
    refused 401 "Certificate for key id k2 not found" meanwhile. Now the unknown key id starts a refresh and the
    caller is told to retry (503: the replica is behind, not the caller); the retry is accepted."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key, public = es256
    new_key = ec.generate_private_key(ec.SECP256R1())
    new_public = new_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    server = KeyServer({"k1": public})
    auth = _iap(settings, server)
    assert auth._keys is not None and server.fetches == 1
    server.keys = {"k1": public, "k2": new_public}  # Google publishes k2, and IAP signs with it
    _age(auth._keys, 60)
    signed = {"x-goog-iap-jwt-assertion": _assertion(new_key, kid="k2")}
    with pytest.raises(AuthError) as err:
        auth.check(signed)
    assert err.value.status == 503, err.value
    assert "key id 'k2'" in err.value.message and "retry shortly" in err.value.message
    _until(lambda: server.fetches == 2 and auth._keys is not None and not auth._keys._refreshing)
    assert auth.check(signed).identity == "ana@example.com"
    assert auth.check({"x-goog-iap-jwt-assertion": _assertion(key)}).identity == "ana@example.com"  # k1 still
    assert server.fetches == 2


def test_a_flood_of_assertions_with_a_made_up_key_id_fetches_googles_keys_at_most_once_per_retry_window(
        settings: Any, es256: tuple[Any, str]) -> None:
    key, public = es256
    server = KeyServer({"k1": public})
    auth = _iap(settings, server)
    keys = auth._keys
    assert keys is not None
    keys._retry = 60.0
    bogus = {"x-goog-iap-jwt-assertion": _assertion(key, kid="made-up")}

    def flood(n: int = 200) -> list[int]:
        statuses = []
        for _ in range(n):
            with pytest.raises(AuthError) as err:
                auth.check(bogus)
            statuses.append(err.value.status)
        return statuses

    # Keys fetched moments ago are Google's current ones: an id they lack is not Google's, a 401, nothing fetched.
    assert set(flood()) == {401} and server.fetches == 1
    _age(keys, 61)  # older than retry_s: the first refusal starts one refresh, the rest wait for it or see its keys
    said = flood()
    assert said[0] == 503 and set(said) <= {401, 503}
    _until(lambda: server.fetches == 2 and not keys._refreshing)
    assert set(flood()) == {401} and server.fetches == 2
    server.status = 500  # a refresh that fails is not repeated by every request either
    _age(keys, 61)
    assert flood()[0] == 503
    _until(lambda: server.fetches == 3 and not keys._refreshing)
    said = flood()
    assert set(said) == {503} and server.fetches == 3
    with pytest.raises(AuthError, match=r"failed \d+ s ago \(tried again every 60 s\)"):
        auth.check(bogus)


def test_iap_assertions_allow_a_little_clock_skew_but_no_more(settings: Any, es256: tuple[Any, str]) -> None:
    """google-auth allows none by default and compares whole seconds: an assertion issued a second "ahead" of the
    replica's clock was refused 401 "Token used too early"."""
    key, public = es256
    auth = _iap(settings, KeyServer({"k1": public}))
    now = int(time.time())
    ahead = {"x-goog-iap-jwt-assertion": _assertion(key, iat=now + 2, exp=now + 602)}
    assert auth.check(ahead).identity == "ana@example.com"
    expired = {"x-goog-iap-jwt-assertion": _assertion(key, iat=now - 660, exp=now - 60)}
    with pytest.raises(AuthError, match="expired") as err:
        auth.check(expired)
    assert err.value.status == 401


def test_status_shows_the_current_token_alone_during_a_rotation(settings: Any) -> None:
    """`tenfold status` printed "token   NEW" and "OLD  (file ...)" on the next line: the docs' recipes read the whole
    file, and a client sending two lines as its bearer token is refused by its own HTTP library."""
    import httpx

    from tenfold.serving import fleet

    old = ensure_token(settings)
    new = "n" * 43
    token_path(settings).write_text(f"{new}\n{old}\n")
    said = fleet.describe(fleet.report(settings), secrets=True)
    (line,) = [line for line in said.splitlines() if line.strip().startswith("token")]
    assert line.split()[1] == new and old not in said and "(1 older still accepted)" in line
    httpx.Headers({"Authorization": f"Bearer {line.split()[1]}"})  # a header a client can send
    # The README's recipe reads it from `tenfold status` (the one documented place; the file's path depends on
    # TENFOLD_HOME): its awk program, run on these lines, gives the current token alone. Every `TOKEN=$(` of the
    # README and docs/ is checked, not a doc's first alone: docs/serving.md's second one read .tenfold/run/serving.token,
    # wrong whenever TENFOLD_HOME is set. The only others are the cloud's secret (its first line: every recipe there
    # reads `| head -n1`) and Airflow's API login, which is not the serving token.
    import re
    import subprocess

    root = Path(__file__).parents[3]
    readme = (root / "README.md").read_text()
    (recipe,) = re.findall(r"TOKEN=\$\(tenfold status \| awk '[^']+'\)", readme)
    others = ('TOKEN=$(gcloud secrets versions access latest --secret="$SECRET" | head -n1)',
              'TOKEN=$(curl -s -X POST "$AF/auth/token" ')
    (program,) = re.findall(r"awk '([^']+)'", recipe)
    got = subprocess.run(["awk", program], input=said + "\n", capture_output=True, text=True, check=True).stdout
    assert got == f"{new}\n", recipe
    local = []
    for doc in (root / "README.md", *sorted((root / "docs").glob("*.md"))):
        for line in doc.read_text().splitlines():
            if "TOKEN=$(" not in line:
                continue
            assert "serving.token" not in line, f"{doc.name}: {line}"
            setting = line[line.index("TOKEN=$("):]
            if setting.startswith(recipe):
                local.append(doc.name)
            else:
                assert setting.startswith(others), f"{doc.name} sets TOKEN another way than the README's recipe: {line}"
    assert {"README.md", "serving.md"} <= set(local), local  # the recipe's own places: never checked vacuously


def test_an_iap_replica_whose_first_key_fetch_failed_gets_ready_from_its_health_checks_alone(
    settings: Any, es256: tuple[Any, str]
) -> None:
    """Only a request carrying an assertion fetched the keys again, and the load balancer sends none to a replica that
    is not ready: one failed fetch at start left it unready for the VM's life, its /healthz 200 (no autohealing)."""
    _key, public = es256
    server = KeyServer({"k1": public}, status=500)  # Google answers 500 at start
    auth = Authenticator(_server_settings(settings, auth_mode="iap", iap_audience=AUDIENCE), http_request=server)
    assert auth._keys is not None
    auth._keys._retry = 0.2
    _until(lambda: server.fetches == 1 and auth._keys is not None and auth._keys._failed_at is not None)
    server.status = 200  # then answers
    _until(lambda: auth.not_ready() is None)  # what /readyz asks, every probe; nothing else
    assert server.fetches == 2


# --- a token file that cannot be read or written: one refusal naming it, never a raw OSError ------------------------

def test_a_token_path_that_is_a_folder_is_a_refusal_naming_it(settings: Any, tmp_path: Path) -> None:
    """run/serving.token a folder: read_text raised IsADirectoryError out of ensure_token and accepted_tokens, and a
    replica (`python -m tenfold.serving`) or `tenfold serve up` ended in its traceback. Now a TokenMissing naming the
    path and what to do, which every caller reports as one line (a refusal, not a fault in the code)."""
    from tenfold.config import build_settings
    from tenfold.outages import ending

    path = token_path(settings)
    path.mkdir(parents=True)
    with pytest.raises(TokenMissing) as refused:
        ensure_token(settings)
    said = str(refused.value)
    assert f"the serving token file {path} cannot be read (Is a directory)" in said
    assert "delete it and run `tenfold up`" in said
    assert path.is_dir() and [p.name for p in path.parent.iterdir()] == ["serving.token"]  # no tmp left beside it
    line = ending(refused.value, "tenfold serve up", settings.local.home, debug_hint="with TENFOLD_DEBUG=1")
    assert line == f"error: `tenfold serve up`: {said}"  # not "failed on a fault in the code"

    dev = build_settings("dev", {"TENFOLD_HOME": str(tmp_path / "dev")})
    token_path(dev).mkdir(parents=True)
    with pytest.raises(TokenMissing, match="cannot be read") as cloud:
        accepted_tokens(dev)
    assert str(token_path(dev)) in str(cloud.value) and "Secret Manager secret 'tenfold-dev-serving-token'" in str(cloud.value)
    assert "tenfold up" not in str(cloud.value)  # no help outside the local environment


def test_a_full_disk_when_the_token_is_created_is_a_refusal_naming_it(small_disk: Any) -> None:
    """The run folder's disk full when the token is generated (a real ENOSPC): the raw "[Errno 28] No space left on
    device" named no file. Now a refusal naming the token's path and what to do, and no tmp left beside it."""
    from tenfold.config import build_settings

    settings = build_settings("local", {"TENFOLD_HOME": str(small_disk.path)})
    path = token_path(settings)
    path.parent.mkdir()
    small_disk.fill()
    with pytest.raises(TokenMissing) as refused:
        ensure_token(settings)
    said = str(refused.value)
    assert f"cannot create the serving token file {path} (No space left on device)" in said, said
    assert f"free space there (`df -h {path.parent}`)" in said and "`tenfold up` again" in said
    assert list(path.parent.iterdir()) == []  # neither a tmp nor an empty token file

    small_disk.free()  # with room again, the same call makes the token
    assert len(ensure_token(settings)) >= 40 and [p.name for p in path.parent.iterdir()] == ["serving.token"]
