"""tenfold.outages: the one list of Google client errors worth another try."""

from __future__ import annotations

import errno

from google.api_core import exceptions as gexc

from tenfold.outages import is_outage, is_store_outage, is_unreachable


def test_an_outage_is_retried_and_a_refusal_is_not() -> None:
    for outage in (gexc.ServiceUnavailable("down"), gexc.DeadlineExceeded("slow"), gexc.GatewayTimeout("504"),
                   gexc.InternalServerError("500"), gexc.Unknown("?"), gexc.BadGateway("502"),
                   gexc.ResourceExhausted("quota"), gexc.TooManyRequests("429"), gexc.Aborted("contention"),
                   gexc.RetryError("retries ran out", None)):
        assert is_outage(outage) and is_store_outage(outage) and is_unreachable(outage), outage
    for refusal in (gexc.PermissionDenied("no"), gexc.NotFound("topic"), gexc.InvalidArgument("bad"),
                    gexc.MethodNotImplemented("501"), gexc.DataLoss("lost"), gexc.Unauthenticated("who"),
                    ValueError("bad")):
        assert not is_outage(refusal) and not is_store_outage(refusal) and not is_unreachable(refusal), refusal


def test_a_store_retries_a_disk_or_a_connection_away_not_a_name_or_a_permission() -> None:
    import requests

    assert is_store_outage(OSError(errno.ENOSPC, "No space left on device"))
    assert is_store_outage(requests.ConnectionError("refused"))
    for final in (PermissionError(errno.EACCES, "denied"), FileExistsError(errno.EEXIST, "exists"),
                  IsADirectoryError(errno.EISDIR, "dir"), NotADirectoryError(errno.ENOTDIR, "file")):
        assert not is_store_outage(final), final


def test_unreachable_is_a_connection_not_a_full_disk() -> None:
    import requests

    for away in (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), TimeoutError("timed out"),
                 requests.ConnectionError("refused"), requests.Timeout("slow")):
        assert is_unreachable(away), away
    assert not is_unreachable(OSError(errno.ENOSPC, "No space left on device"))


def test_no_cloud_credentials_is_named_with_how_to_get_them(tmp_path, monkeypatch) -> None:
    """The real error google-auth raises on this machine (no credentials, no metadata server), as the feedback
    commands met it under TENFOLD_ENV=dev: one line saying how to log in, not a "fault in the code"."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    from tenfold.outages import ending

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud application-default credentials
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # and no metadata server
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    try:
        google.auth.default()
    except DefaultCredentialsError as exc:
        line = ending(exc, "tenfold feedback join", tmp_path, debug_hint="with TENFOLD_DEBUG=1")
    else:
        raise AssertionError("this machine has Google Cloud credentials: the case cannot be shown here")
    assert line == ("error: `tenfold feedback join` found no Google Cloud credentials (DefaultCredentialsError): run "
                    "`gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS), or unset "
                    "TENFOLD_ENV to work on the local platform")


def test_a_google_refusal_ends_as_a_refusal_not_a_fault_in_the_code(tmp_path) -> None:
    """A 403 or a 404 from a Google API is the service's answer: said as such, with what to check, not "a fault in
    the code ... report it"; a 429 or a 503 stays an outage."""
    from tenfold.outages import ending

    for refused in (gexc.PermissionDenied("not authorized"), gexc.NotFound("no such subscription"),
                    gexc.Forbidden("no storage.objects.list")):
        said = ending(refused, "tenfold x", tmp_path, debug_hint="with --debug")
        assert "was refused by a Google service" in said and "fault in the code" not in said, said
    for away in (gexc.TooManyRequests("429"), gexc.ServiceUnavailable("503")):
        assert "cannot reach a service" in ending(away, "tenfold x", tmp_path, debug_hint="with --debug")


def test_a_local_service_that_does_not_answer_ends_as_it_says_not_as_a_fault_in_the_code(tmp_path) -> None:
    """HAProxy's runtime API not answering (the fleet down) ended `python -m tenfold.pipelines.rollout_model` with
    "failed on a fault in the code ... report it". A real connection to a socket nobody listens on."""
    import pytest

    from tenfold.outages import ending
    from tenfold.serving.haproxy import HaproxySilent, RuntimeApi

    with pytest.raises(HaproxySilent) as silent:
        RuntimeApi(tmp_path / "haproxy.sock", timeout=1).execute("show info")
    line = ending(silent.value, "rollout", tmp_path, debug_hint="with --debug")
    assert line == f"error: `rollout`: {silent.value}" and "is the fleet up?" in line, line
    assert "fault in the code" not in line


def test_a_haproxy_answer_tenfold_cannot_read_is_still_a_fault_in_the_code(tmp_path) -> None:
    """HAProxy refusing a command Tenfold built, or answering in a shape it cannot read, names no local service to
    start: it ends as a fault in the code, with how to see the traceback, not as the bare message."""
    from tenfold.outages import ending
    from tenfold.serving.haproxy import HaproxyFault

    line = ending(HaproxyFault("cannot read the value of x in HAProxy's answer 'y'"), "rollout", tmp_path,
                  debug_hint="with --debug")
    assert "fault in the code" in line and "with --debug" in line, line
