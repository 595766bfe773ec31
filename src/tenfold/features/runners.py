"""Where the feature job runs: the :class:`FeatureJob` seam, spark-submit here and Dataproc in the cloud.

Both run the same file, ``spark_jobs/build_features.py``, for one month into a staging URI, and both
return only when the job is over, so the ``build_features`` DAG has the same graph everywhere.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from tenfold.config import Settings
from tenfold.data.partition import Partition

log = logging.getLogger(__name__)


class FeatureJob(Protocol):
    """Runs the feature job for one month into ``output`` and returns when it has succeeded.

    ``key`` names the unit of work (it goes into batch ids and manifests); ``attempt`` is the try number.
    """

    def run(self, part: Partition, output: str, *, key: str, attempt: int) -> None: ...


class LocalSparkJob:
    """spark-submit on this machine (``settings.spark.master``), bounded by the DAG's task timeout.

    The job is recorded while it runs (:func:`tenfold.features.submit.job_record`, keyed by the output): a try killed
    outright (its task SIGKILLed) left its job running, in a session of its own, and the next try into the same output
    stops it before its own job starts, as :class:`DataprocBatchJob` cancels earlier tries' batches.
    """

    def __init__(self, settings: Settings, *, timeout_s: float) -> None:
        self.settings, self.timeout_s = settings, timeout_s

    def run(self, part: Partition, output: str, *, key: str, attempt: int) -> None:
        from tenfold.features.submit import job_record, spark_submit_features, stop_earlier_job

        record = job_record(self.settings, output)
        # Before this try's job starts: the job empties its output folders first, and nothing of an earlier try's job
        # may be written after that.
        stop_earlier_job(record)
        spark_submit_features(self.settings, part, output, run_id=key, timeout_s=self.timeout_s, record=record)


class DataprocJobFailed(RuntimeError):
    """The Dataproc batch ended in a state other than SUCCEEDED; the message names the batch."""


# A batch in one of these states may still write.
_RUNNING = ("PENDING", "RUNNING", "CANCELLING", "STATE_UNSPECIFIED")

# How long one get_batch call (the client's own retries included) may take: a hung call must not outlast the try.
GET_BATCH_TIMEOUT_S = 60.0


class _Unanswered(TimeoutError):
    """The try's deadline passed while Dataproc failed to tell batch ``name``'s state (``error``, the last check's)."""

    def __init__(self, name: str, error: Exception) -> None:
        super().__init__(f"Dataproc did not answer for batch {name} at the try's deadline: {type(error).__name__}: {error}")
        self.error = error


def _state(batch: Any) -> str:
    """A Dataproc batch's state by name (the client's enum, or a plain value)."""
    return str(getattr(batch.state, "name", batch.state))


class DataprocBatchJob:
    """A Dataproc Serverless batch per attempt (a failed batch cannot be re-run under its id).

    ``client`` is a ``google.cloud.dataproc_v1.BatchControllerClient`` (tests pass a fake at that
    boundary). A retried attempt whose batch already exists waits for it instead of starting another.
    """

    def __init__(self, settings: Settings, client: Any = None, *, timeout_s: float, poll_s: float = 15.0,
                 cancel_wait_s: float = 90.0) -> None:
        # cancel_wait_s: how long a try waits for its own batch to stop once cancelled; within the margin its task
        # keeps before Airflow's execution_timeout (tenfold.pipelines.build_features.JOB_WAIT_MARGIN_S).
        self.settings, self.timeout_s, self.poll_s, self.cancel_wait_s = settings, timeout_s, poll_s, cancel_wait_s
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import dataproc_v1

            endpoint = f"{self.settings.region}-dataproc.googleapis.com:443"
            self._client = dataproc_v1.BatchControllerClient(client_options={"api_endpoint": endpoint})
        return self._client

    def run(self, part: Partition, output: str, *, key: str, attempt: int) -> None:
        from google.api_core.exceptions import AlreadyExists

        from tenfold.features.dataproc import batch_id, features_batch

        s = self.settings
        parent = f"projects/{s.project_id}/locations/{s.region}"
        bid = batch_id(s, part, key, attempt)
        deadline = time.monotonic() + self.timeout_s  # one budget for this try, whatever it spends it on
        # An earlier try that Airflow timed out or killed may have left its batch running, writing to the same
        # staging folder: it is cancelled (and gone) before this try's batch starts.
        for earlier in range(1, attempt):
            self._cancel(f"{parent}/batches/{batch_id(s, part, key, earlier)}", deadline)
        name = f"{parent}/batches/{bid}"
        try:
            operation = self.client.create_batch(
                request={"parent": parent, "batch": features_batch(s, part, key, output=output), "batch_id": bid})
        except AlreadyExists:
            log.info("batch %s exists (an earlier try of this attempt): waiting for it", bid)
            operation = None
        try:
            batch = self._wait(name, deadline) if operation is None else self._result(operation, name, deadline)
        except BaseException as exc:
            # Timed out, or interrupted while waiting: Airflow's execution_timeout (AirflowTaskTimeout) and Ctrl-C are
            # BaseExceptions raised in the wait, and a manual run's next try has another staging key, so no later try
            # would cancel the batch. It is never left running.
            cancelled = "cancelled"
            try:
                self._cancel(name, time.monotonic() + self.cancel_wait_s)
            except Exception as cancel_exc:
                log.exception("could not cancel Dataproc batch %s; the next try cancels it", bid)
                cancelled = (f"not cancelled ({type(cancel_exc).__name__}: {cancel_exc}): the next try cancels it, "
                             "or `gcloud dataproc batches cancel` it")
            if isinstance(exc, _Unanswered):
                raise TimeoutError(f"Dataproc did not answer for batch {name} for {part.label} until the try's "
                                   f"deadline ({self.timeout_s:.0f} s; last: {type(exc.error).__name__}: {exc.error}), "
                                   f"so whether it ended is unknown ({cancelled}): retry once the Dataproc service "
                                   "answers (its status page), or see the batch on Dataproc's batch page") from exc
            if isinstance(exc, TimeoutError):  # google's says "within the designated timeout"
                raise TimeoutError(f"Dataproc batch {name} for {part.label} still running after "
                                   f"{self.timeout_s:.0f} s ({cancelled}): its log is in Dataproc's batch page; "
                                   "retry, or raise the try's budget if the month needs longer") from exc
            raise
        state = _state(batch)
        if state != "SUCCEEDED":
            raise DataprocJobFailed(f"Dataproc batch {bid} for {part.label} ended {state}: {getattr(batch, 'state_message', '')}")

    def _cancel(self, name: str, deadline: float) -> None:
        """Cancel batch ``name`` if it still runs and wait (until ``deadline``) until it stopped; nothing if it
        ended or never existed."""
        from google.api_core.exceptions import NotFound

        try:
            batch = self.client.get_batch(name=name, timeout=self._call_timeout(deadline))
        except NotFound:
            return
        if _state(batch) not in _RUNNING:
            return
        log.warning("cancelling Dataproc batch %s (%s): a try that is over must not go on writing", name, _state(batch))
        if _state(batch) != "CANCELLING":
            self.client.cancel_operation(request={"name": batch.operation})
        stopped = self._stopped(name, deadline)
        if isinstance(stopped, _Unanswered):
            raise TimeoutError(f"Dataproc did not answer whether batch {name} stopped after its cancellation "
                               f"({type(stopped.error).__name__}: {stopped.error}): check it "
                               "(`gcloud dataproc batches describe`), cancel it if it still runs, and retry") from stopped.error
        if stopped is None:
            raise TimeoutError(f"Dataproc batch {name} did not stop in time after its cancellation: cancel it "
                               "(`gcloud dataproc batches cancel`) and retry")

    def _result(self, operation: Any, name: str, deadline: float) -> Any:
        """Batch ``name`` once it is over, from its operation. Polling the operation can fail without the batch
        having failed (an unavailable service, after the client's own retries): the batch is then polled with
        :meth:`_wait` until the same ``deadline``, rather than cancelled and the month's work thrown away. Only
        running out of time (``TimeoutError``) is raised as it is."""
        try:
            return operation.result(timeout=max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            raise
        except Exception as exc:
            log.warning("waiting on Dataproc batch %s failed (%s): polling the batch itself instead", name, exc)
            return self._wait(name, deadline)

    def _wait(self, name: str, deadline: float) -> Any:
        """Batch ``name`` once it no longer runs; ``TimeoutError`` at ``deadline`` (the caller cancels it), an
        :class:`_Unanswered` one if Dataproc's last answer was an outage."""
        batch = self._stopped(name, deadline)
        if isinstance(batch, _Unanswered):
            raise batch
        if batch is None:
            raise TimeoutError(f"Dataproc batch {name} still running at the try's deadline")
        return batch

    def _stopped(self, name: str, deadline: float) -> Any:
        """Batch ``name`` once it no longer runs; at ``deadline``, None if it still runs, or an :class:`_Unanswered`
        if the last status check failed.

        A check that fails with an outage (:func:`tenfold.outages.outage_types`: an unavailable service, a
        ``DeadlineExceeded``, the client's own retries run out) says nothing of the batch: it is logged once and the
        batch polled again, each call bounded by ``GET_BATCH_TIMEOUT_S``. Any other error (``NotFound``,
        ``PermissionDenied``) goes up as it is."""
        from tenfold.outages import outage_types

        warned = False
        while True:
            try:
                batch = self.client.get_batch(name=name, timeout=self._call_timeout(deadline))
            except outage_types() as exc:
                if not warned:
                    log.warning("checking Dataproc batch %s failed (%s: %s): its state is unknown, polling it again "
                                "until the try's deadline", name, type(exc).__name__, exc)
                    warned = True
                unknown: _Unanswered | None = _Unanswered(name, exc)
            else:
                if _state(batch) not in _RUNNING:
                    return batch
                unknown = None
            if time.monotonic() > deadline:
                return unknown
            time.sleep(self.poll_s)

    @staticmethod
    def _call_timeout(deadline: float) -> float:
        """One ``get_batch``'s timeout: ``GET_BATCH_TIMEOUT_S``, less if ``deadline`` is nearer (at least 1 s)."""
        return max(1.0, min(GET_BATCH_TIMEOUT_S, deadline - time.monotonic()))


def feature_job(settings: Settings, *, timeout_s: float, client: Any = None) -> FeatureJob:
    """spark-submit locally, a Dataproc batch in dev and prod."""
    if settings.is_local:
        return LocalSparkJob(settings, timeout_s=timeout_s)
    return DataprocBatchJob(settings, client, timeout_s=timeout_s)
