"""tenfold.outages and google-auth's own errors (RefreshError, TransportError): neither OSError nor google-api-core's,
they were said as a raw tuple or as "a fault in the code", and a reader that met one refused the data it read."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.auth import exceptions as gauth
from google.oauth2 import _client

from tenfold.outages import ending, is_unreachable, no_credentials, not_the_data


def _refresh_error(response: dict[str, str], retryable: bool) -> gauth.RefreshError:
    """The error google-auth raises when the token endpoint answers ``response`` (its own code builds it)."""
    try:
        _client._handle_error_response(response, retryable)
    except gauth.RefreshError as exc:
        return exc
    raise AssertionError("google-auth raised nothing")


EXPIRED = {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
ENDPOINT_DOWN = {"error": "internal_failure", "error_description": "Backend Error"}


def _said(exc: BaseException, tmp_path: Path) -> str:
    return ending(exc, "tenfold ingest", tmp_path, debug_hint="with TENFOLD_DEBUG=1")


def test_an_expired_login_says_to_log_in_again_not_a_tuple(tmp_path: Path) -> None:
    expired = _refresh_error(EXPIRED, False)
    assert expired.retryable is False
    line = _said(expired, tmp_path)
    assert "gcloud auth application-default login" in line, line
    assert "invalid_grant: Token has been expired or revoked." in line and "{" not in line and "('" not in line, line
    assert no_credentials(expired) and not_the_data(expired) and not is_unreachable(expired)


@pytest.mark.parametrize("error", [
    pytest.param(lambda: _refresh_error(ENDPOINT_DOWN, True), id="token-endpoint-5xx"),
    pytest.param(lambda: gauth.TransportError("Failed to retrieve http://metadata.google.internal/: unavailable"),
                 id="transport"),
    pytest.param(lambda: gauth.RefreshError(gauth.TransportError("metadata server unavailable")),
                 id="metadata-server-away"),  # what Compute Engine credentials raise when the server does not answer
])
def test_a_refresh_that_could_not_reach_its_service_is_an_outage_not_a_fault_nor_the_data(
        tmp_path: Path, error: object) -> None:
    exc = error()  # type: ignore[operator]
    line = _said(exc, tmp_path)
    assert "cannot reach a service it needs" in line and "fault in the code" not in line, line
    assert "{" not in line and "('" not in line, line
    assert is_unreachable(exc) and not_the_data(exc) and not no_credentials(exc)


def test_a_workload_reader_that_meets_an_expired_login_does_not_refuse_the_source() -> None:
    """ingest's reader wrapper turned any exception but these into SourceUnreadable: quarantine, and an alert to
    "correct the source file" for a login that had expired."""
    from tenfold.data.ingest import _read_one

    for exc in (_refresh_error(EXPIRED, False), _refresh_error(ENDPOINT_DOWN, True)):
        def read(table: str, exc: BaseException = exc) -> object:
            raise exc

        with pytest.raises(gauth.RefreshError) as raised:
            _read_one(read, "flights")  # type: ignore[arg-type]
        assert raised.value is exc


def test_a_network_blip_of_google_auth_is_retried_by_a_task_and_not_recorded_as_a_refusal(tmp_path: Path) -> None:
    """google-auth's errors say ``retryable`` False by default, a TransportError (the token request never answered)
    included: run_step failed the Airflow task without retries on it, and a training rank recorded it as the run's
    refusal. Only a refused login is final; a pipeline's own refusal still is."""
    from airflow.sdk.exceptions import AirflowFailException

    from tenfold.pipelines.common import PipelineError, run_step
    from tenfold.training.worker import REFUSED_FILE, _record_refusal

    def raising(exc: BaseException) -> None:
        raise exc

    blip = gauth.TransportError("HTTPSConnectionPool(host='oauth2.googleapis.com'): Read timed out.")
    assert blip.retryable is False  # what made it final
    with pytest.raises(gauth.TransportError):  # raised as it is: Airflow retries the task
        run_step(raising, blip)
    with pytest.raises(AirflowFailException):  # a refused login: no retry can cure it
        run_step(raising, _refresh_error(EXPIRED, False))
    with pytest.raises(AirflowFailException):
        run_step(raising, PipelineError("month 2013-13 is not a month"))
    _record_refusal(blip, 0, tmp_path, None)
    assert not (tmp_path / REFUSED_FILE).exists()
    _record_refusal(_refresh_error(EXPIRED, False), 0, tmp_path, None)
    assert (tmp_path / REFUSED_FILE).exists()


def test_no_credentials_at_all_stays_final() -> None:
    """No login at all (DefaultCredentialsError, retryable False) is no outage: a retry finds none either. The task
    fails at once, and a rank records it as the run's refusal, as before google-auth's network errors were retried."""
    from airflow.sdk.exceptions import AirflowFailException

    from tenfold.outages import retry_cannot_cure
    from tenfold.pipelines.common import run_step

    def raising(exc: BaseException) -> None:
        raise exc

    missing = gauth.DefaultCredentialsError("Your default credentials were not found.")
    assert retry_cannot_cure(missing)
    with pytest.raises(AirflowFailException):
        run_step(raising, missing)
