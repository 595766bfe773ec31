"""What every pipeline shares: its run state, its error, its run key, and the bridge to Airflow.

The template a pipeline module follows (``build_features`` and ``train_model`` are the examples)::

    @dataclass(frozen=True)
    class Run(RunState):              # what passes between the DAG's tasks, as XCom
        run_key: str
        ...

    def plan(settings, ...) -> Run: ...                 # one function per task, named like the task,
    def <task>(settings, run: Run, ...) -> Run | ...: ...  # taking settings and the run state

    def main(argv=None) -> int: ...   # ``python -m tenfold.pipelines.<dag_id>``: every step in one process

Steps raise :class:`PipelineError` for what a retry cannot fix (bad input, a bad run conf, data the gate
refused); the DAG files call each step through :func:`run_step`, which turns it into
``AirflowFailException`` so Airflow fails the task at once instead of retrying it. Anything else (a
lost connection, a killed worker) is left to Airflow's retries.

Light on purpose: the DAG files import this module while being parsed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar, get_args, get_origin

from tenfold.config import Settings
from tenfold.jsonable import plain_json

log = logging.getLogger(__name__)

R = TypeVar("R", bound="RunState")
T = TypeVar("T")


class PipelineError(RuntimeError):
    """A step cannot go on and a retry would not help; the message names what is wrong and what to do.

    ``alerted`` is true when the step already sent its own, richer alert (the failure callback then
    does not alert twice); ``undelivered`` names the hooks that did not take it (the callback sends to those alone,
    without a second log line).
    """

    retryable = False  # run_step fails the task at once; a subclass for a wait a retry resumes says True

    def __init__(self, message: str, *, alerted: bool = False, undelivered: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.alerted = alerted
        self.undelivered = undelivered  # the hooks that did not take its own alert: the callback sends to those alone


class PipelineInputError(PipelineError, ValueError):
    """The run was asked for something invalid (a month, a run conf key): fix the trigger, not the code."""


def run_conf(conf: Mapping[str, Any] | None, keys: Sequence[str], example: str = "") -> dict[str, Any]:
    """The run conf as a dict, refusing a key the DAG does not read (a typo such as ``moth`` was ignored: the run
    did what its defaults say and ended green)."""
    conf = dict(conf or {})
    if unknown := sorted(set(conf) - set(keys)):
        raise PipelineInputError(f"unknown run conf keys {unknown}: use any of {list(keys)}" +
                                 (f", e.g. {example}" if example else ""))
    return conf


def conf_ref(conf: Mapping[str, Any], key: str, default: str) -> str:
    """``conf[key]``, a model version id or alias, or ``default`` when the key is absent (or null). A value given that
    is not a non-empty string is refused: ``{"version": ""}`` (a script's unset variable) took the default without a
    word, and the run acted on another model than the one it was asked for."""
    value = conf.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or not value.strip():
        raise PipelineInputError(f"run conf {key}={value!r}: give a registered version id or an alias, e.g. "
                                 f"\"{default}\", or leave {key} out for {default}")
    return value


def run_key(run_id: str) -> str:
    """A run id usable as a folder, a GCS prefix, a rendezvous id and in batch ids (``[a-z0-9_.-]``, <= 59).

    Readable (the slug of the Airflow run id) and unique (a digest suffix whenever the slug had to
    change the id), so two runs never share a key.
    """
    slug = re.sub(r"[^a-z0-9_.-]+", "-", run_id.lower()).strip("-._") or "run"
    if len(slug) > 50 or slug != run_id:
        slug = f"{slug[:50].rstrip('-._')}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"
    return slug


def digest_key(*parts: str, length: int = 12) -> str:
    """``length`` lowercase hex digits naming a unit of work within a run (e.g. one month's staging)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


def _coerce(tp: Any, value: Any) -> Any:
    """``value`` as read back from JSON, turned into the field type ``tp`` (tuples, nested states)."""
    if value is None:
        return None
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        return _coerce(options[0], value) if len(options) == 1 else value
    if origin is tuple:
        args = get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v) for v in value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if issubclass(tp, RunState):
            return tp.from_xcom(value)
        from_dict = getattr(tp, "from_dict", None)
        return from_dict(value) if from_dict else tp(**value)
    return value


class RunState:
    """Mixin of the frozen dataclasses that pass between tasks: JSON out (XCom) and back in, unchanged."""

    def to_xcom(self) -> dict[str, Any]:
        """Plain JSON types only (tuples become lists), so Airflow's XCom stores it as it is."""
        body: dict[str, Any] = plain_json(self)
        return body

    @classmethod
    def from_xcom(cls: type[R], body: Mapping[str, Any] | R) -> R:
        """The state a task received; unknown keys are an error (a DAG and pipeline out of step)."""
        if isinstance(body, cls):
            return body
        assert isinstance(body, Mapping)
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(body) - names)
        if unknown:
            raise PipelineError(f"{cls.__name__} got unknown fields {unknown}: the DAG and tenfold are of different versions")
        try:
            return cls(**{k: _coerce(hints[k], v) for k, v in body.items()})
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            # A required field missing (TypeError), or a nested state's from_dict missing a key or given a value of
            # another kind: written by another version too.
            raise PipelineError(f"{cls.__name__} cannot be made from the upstream task's XCom ({exc}): the DAG and "
                                "tenfold are of different versions; clear the whole run from its first task") from exc


def events_of(events: Iterable[Any], dag_id: str, airflow_run_id: str) -> Iterator[Any]:
    """The Asset events among ``events`` that DAG ``dag_id``'s run ``airflow_run_id`` emitted (a DAG reads its own
    back through the task's ``inlet_events``: a cleared run that finished must not emit the same event twice)."""
    return (e for e in events if e.source_dag_id == dag_id and e.source_run_id == airflow_run_id)


def run_step(step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a pipeline step from an Airflow task: a :class:`PipelineError` (unless its class says ``retryable =
    True``), or another error whose class says ``retryable = False`` (a malformed suite, a stale alias move, a gate
    refusal), fails the task without retries."""
    from tenfold.outages import retry_cannot_cure

    try:
        return step(*args, **kwargs)
    except Exception as exc:
        if not retry_cannot_cure(exc):  # google-auth's network errors say retryable False too: they are retried
            raise
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from exc


CHOSEN_MONTHS = "event-months"  # the folder of each Asset-triggered run's first choice of months (chosen_once)


def chosen_once(objects: Any, airflow_run_id: str, choose: Callable[[], Any], *, folder: str = CHOSEN_MONTHS) -> Any:
    """A run's first choice: the JSON value kept as ``<folder>/<run key>.json`` (``event-months/`` by default) in
    ``objects`` (:class:`tenfold.storage.Objects`), else ``choose()`` kept there (created if absent: a concurrent
    try's choice wins). A cleared run that chose again would see what its own earlier try did (a month it published,
    a report it wrote) and choose otherwise."""
    name = f"{folder}/{run_key(airflow_run_id)}.json"
    if (kept := objects.get(name)) is None:
        value = choose()
        if objects.create(name, json.dumps(value).encode()):
            return value
        kept = objects.get(name)
    log.info("run %s chose on an earlier try: %s", airflow_run_id, kept.decode()[:500])
    return json.loads(kept)


def event_months(context: Mapping[str, Any], uri: str) -> list[str]:
    """The months (``"2013-07"``, ascending, once each) that the triggering events of the Asset at ``uri``
    published (``build_features`` puts its month in each event's extra). A run receives every event since the
    DAG's previous Asset-triggered run (those published while it was paused or busy included), in no promised
    order."""
    events = context.get("triggering_asset_events") or {}
    months = {str(e.extra["month"]) for asset, found in events.items() if getattr(asset, "uri", asset) == uri
              for e in found if (e.extra or {}).get("month")}
    return sorted(months)


def split_event_months(months: Sequence[str], *, nothing_done: str | None, hint: str,
                       left_out: Callable[[str], str | None] = lambda month: None) -> tuple[list[str], dict[str, str]]:
    """Which of the months a run's Asset events name (``"2013-07"`` labels, ascending) it works on, and why it leaves
    the others (``{month: why}``), for an Asset-triggered DAG that keeps its own record of the months it has done.

    The newest month always. With ``nothing_done`` (why the DAG's record is empty: its first run) every other month is
    that first run's backlog (a DAG's first Asset-triggered run receives every event since it was scheduled on the
    Asset), left with ``hint % month`` (how to do that month by hand). Otherwise each other month is done unless
    ``left_out(month)`` says why not."""
    if not months:
        raise ValueError("split_event_months needs at least one month")
    chosen, skipped = [], {}
    for month in months[:-1]:
        if nothing_done is not None:
            skipped[month] = f"{nothing_done}, so this is a first run's backlog: {hint % month}"
        elif (why := left_out(month)) is not None:
            skipped[month] = why
        else:
            chosen.append(month)
    return [*chosen, months[-1]], skipped


def default_args(settings: Settings, dag_id: str) -> dict[str, Any]:
    """Every DAG's task defaults: retries and their delay from settings, the same failure alert, and a bound.

    The bound, ``settings.pipelines.<dag>.task_timeout_s``, holds every task that sets none of its own: a
    hung read or write then fails and retries instead of holding the DAG's one active run for ever.
    """
    from tenfold.monitoring.alerts import airflow_failure_callback

    dag = settings.pipelines.dag(dag_id)
    return {
        "retries": dag.retries,
        "retry_delay": dt.timedelta(seconds=dag.retry_delay_s),
        "execution_timeout": dt.timedelta(seconds=dag.task_timeout_s),
        "on_failure_callback": airflow_failure_callback,
    }


def task_timeout_s(settings: Settings, dag_id: str) -> int:
    """The bound of a DAG's heavy task, in seconds (every other task's is ``default_args``').

    ``train_model``'s follows the training bounds: torchrun's own bound locally, the instance-group
    waits (three resize waits and the run) in the cloud. Other DAGs take ``settings.pipelines``'.
    """
    if dag_id == "train_model":
        t = settings.training
        return t.job_timeout_s + 300 if settings.is_local else t.run_timeout_s + 3 * t.stable_timeout_s
    return settings.pipelines.dag(dag_id).task_timeout_s


def work_root(settings: Settings, dag_id: str) -> Path:
    """Where a DAG's tasks keep their scratch (downloaded models, a run's folder): the platform's home locally; in the
    cloud a folder of this user's own under the temp directory (``tenfold-<uid>``, created 0700). A shared
    ``/tmp/tenfold`` made first by another user of the host would let that user swap the challenger a run registers
    or the model a drift run scores; one not owned by this user, or open to others, is refused."""
    import stat
    import tempfile

    if settings.is_local:
        return settings.local.home / "runs" / dag_id
    base = Path(tempfile.gettempdir()) / f"tenfold-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o700)
    info = os.lstat(base)
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
            or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)):
        raise PipelineError(f"{base} is not a folder of this user's own (owned by uid {info.st_uid}, mode "
                            f"{stat.filemode(info.st_mode)}): another user of this host could change what a run "
                            "registers or scores there; remove it (or point TMPDIR elsewhere) and retry")
    return base / dag_id


def start_date(settings: Settings, dag_id: str) -> dt.datetime | None:
    """A monthly DAG's ``start_date``: the first day of the first month its settings cover (UTC), or None.

    It has no ``end_date``: Airflow gives a run whose logical date is past a DAG's end (the Trigger form fills in
    today's) no task instances and marks it successful at once, so a month triggered from the UI with today's date
    and the ``month`` param was green with nothing built. The DAG's own tasks refuse, or skip, a month past the last.
    """
    first = settings.pipelines.dag(dag_id).first_month
    if not first:
        return None
    year, mon = (int(x) for x in first.split("-"))
    return dt.datetime(year, mon, 1, tzinfo=dt.UTC)


def configure_logging(level: int = logging.INFO) -> logging.StreamHandler[TextIO] | None:
    """Logging for ``python -m tenfold.pipelines.<dag_id>`` runs (Airflow configures its own): the handler it added
    to the root logger, or None when the root logger had handlers already (``logging.basicConfig``'s rule)."""
    root = logging.getLogger()
    before = list(root.handlers)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    added = [h for h in root.handlers if h not in before]
    return added[0] if added and isinstance(added[0], logging.StreamHandler) else None


def run_main(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
             body: Callable[[Settings, argparse.Namespace], int]) -> int:
    """``python -m tenfold.pipelines.<dag_id>``: parse ``argv``, read the settings and run ``body`` (every step of the
    DAG in this process), ending with the one line that says what went wrong and what to do, never a traceback.

    Exit codes: ``body``'s own; 2 for a ``--conf`` that is not a JSON object (it arrives as a dict) or invalid
    settings; 1 for a step's refusal (a :class:`PipelineError`, a refused run conf key or value included, as a
    triggered run gets it; or an error whose class says ``retryable = False``), a service that cannot be reached
    (an outage of GCS, Pub/Sub or Cloud Monitoring, a refused connection), or what the system refused (a full
    disk, a path that cannot be written); 130 on Ctrl-C. Anything else is a fault in the code: one
    line naming it, and its traceback with ``--debug``.
    """
    parser.add_argument("--debug", action="store_true", help="log at DEBUG, and print the traceback of a fault")
    args = parser.parse_args(argv)
    ours = configure_logging(logging.DEBUG if args.debug else logging.INFO)
    command = parser.prog

    def say(line: str) -> None:
        # The ending is the last line, whole: google-cloud-storage's own background thread (bucket metadata) went on
        # logging its retries after it, even into the middle of it. What this run logs goes nowhere from here on (a
        # record already past its level check waits on the handler's lock, which setStream takes, and goes there too).
        if ours is not None:
            ours.setStream(open(os.devnull, "w"))  # noqa: SIM115 - for the rest of this process
        sys.stderr.write((line if line.startswith("error: ") else f"error: `{command}`: {line}") + "\n")
        sys.stderr.flush()

    if isinstance(getattr(args, "conf", None), str):
        try:
            args.conf = json.loads(args.conf)
        except json.JSONDecodeError as exc:
            say(f"--conf is not JSON ({exc}): e.g. --conf '{{\"month\": \"2013-07\"}}'")
            return 2
        if not isinstance(args.conf, dict):
            say(f"--conf must be a JSON object of run conf keys, not {type(args.conf).__name__}: "
                "e.g. --conf '{\"month\": \"2013-07\"}'")
            return 2
    from tenfold.config import get_settings, project_refusal, settings_refusal
    from tenfold.outages import ending

    try:
        settings = get_settings()
    except ValueError as exc:  # a TENFOLD_* value that does not parse, an unknown TENFOLD_ENV
        say(settings_refusal(exc))
        return 2
    if refusal := project_refusal(settings):  # dev or prod without a project: a placeholder's buckets
        say(refusal)
        return 2
    try:
        return body(settings, args)
    except KeyboardInterrupt:
        say("interrupted. Every step is idempotent: run the command again to start a new run")
        return 130
    except PipelineError as exc:  # a refusal: of the state it found, or of what it was asked for (a conf key, a month)
        say(str(exc))
        return 1
    except Exception as exc:
        log.debug("the traceback", exc_info=True)
        say(ending(exc, command, settings.local.home, debug_hint="with --debug"))
        return 1
