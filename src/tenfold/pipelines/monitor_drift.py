"""The steps of ``dags/monitor_drift.py``: plan -> measure -> report -> decide.

* :func:`plan`: which months (the run conf's ``month``, else the months of the features Asset events that
  triggered the run, else the newest published one) against which model version (the conf's ``version``,
  an id or an alias, default the ``champion``). With no drift report stored yet, only the newest event month:
  the DAG's first run receives every features event since it was scheduled on the Asset, and that backlog is
  logged with the run conf that measures each month (the rule of batch_inference's ``months_to_score``);
* :func:`measure`: for each month, the version's stored reference profile (a file of the registered
  version: :mod:`tenfold.monitoring.profile`) against the month's features and the model's predictions on
  them (:mod:`tenfold.monitoring.drift`). Only the month and the version's files are read, never the
  training data;
* :func:`report`: each month's report saved in the lake as JSON and HTML, its address logged;
* :func:`decide`: when a triggering feature drifted, an alert (``tenfold.monitoring.alerts.send_alert``)
  and ``retrain: true``, on which the DAG emits the drift Asset event that triggers ``train_model``. Each
  drift triggers once: the DAG's decide records a month's drift against a version, on the content measured
  (``<reports>/year=YYYY/month=M/triggered-<version>-<content>.json``, created if absent), and another run
  that finds it (a re-publish of the same content, a manual rerun) alerts and retrains no more; nor does one that
  measures that content against the retrain the trigger started, which held the month out to be judged on it
  (:func:`_retrained_for`). A retry, or a
  clear, of the run that recorded it emits the event again without a second alert when Airflow recorded no event of
  it (its first attempt may have died before that), and not when it did (:func:`emitted_already`). An alert that a hook (the webhook, the e-mail) did not deliver,
  after the hook's own retries, is recorded as undelivered and fails the try (:class:`AlertNotDelivered`), so the
  task's next try sends it again, to the hooks that failed alone, before it emits; an outage of Cloud Monitoring writing the drift score fails the
  try too, before it alerts; its last try emits regardless. A run outside Airflow, which emits no event, records
  nothing and writes no drift score (the cloud's drift alert says the champion is retraining); its decision says
  ``retrain: false`` and, in ``would_retrain``, what the DAG's run would decide.

A version registered before reference profiles existed has none: its report says so (decision
``no_profile``), nothing is measured and nothing triggers; retraining registers a version with a profile.
With no model at all (the first months of a fresh platform) the report says ``no_model``.

Every step is idempotent (a retry recomputes the same report and overwrites it atomically). Run every
step in one process without Airflow: ``python -m tenfold.pipelines.monitor_drift --conf '{"month": "2013-07"}'``
(that run cannot emit the Asset event; it prints the decision).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition
from tenfold.monitoring.drift import (
    DriftError,
    DriftPolicy,
    DriftReport,
    measure_partition,
    report_dir,
    skipped,
    write_report,
)
from tenfold.pipelines.common import (
    PipelineError,
    PipelineInputError,
    RunState,
    chosen_once,
    conf_ref,
    events_of,
    run_conf,
    run_key,
    run_main,
    split_event_months,
)
from tenfold.pipelines.common import work_root as common_work_root
from tenfold.registry.errors import RegistryError
from tenfold.registry.registry import CHAMPION, ModelRegistry

log = logging.getLogger(__name__)

DAG_ID = "monitor_drift"
CHOSEN_CHAMPION = "champion-measured"  # the folder of each run's first champion (_champion_once)
CONF_KEYS = ("month", "version")


@dataclass(frozen=True)
class DriftRun(RunState):
    """The plan of one run: the months to measure and the version (None: no model to measure against)."""

    run_key: str
    airflow_run_id: str
    months: tuple[str, ...]
    version: str | None
    version_ref: str
    work_dir: str


@dataclass(frozen=True)
class Measured(RunState):
    reports: tuple[dict[str, Any], ...]
    contents: tuple[str, ...] = ()  # each month's content as measured (Lake.content_digest); () when nothing was


@dataclass(frozen=True)
class Reported(RunState):
    summaries: tuple[dict[str, Any], ...]
    json_uris: tuple[str, ...]
    html_uris: tuple[str, ...]
    contents: tuple[str, ...] = ()  # Measured's


def work_root(settings: Settings) -> Path:
    return common_work_root(settings, DAG_ID)


def _month(value: Any, where: str) -> Partition:
    try:
        return Partition.parse(str(value))
    except ValueError as exc:
        raise PipelineInputError(f"{where}: {exc}; give a month as YYYY-MM, e.g. {{\"month\": \"2013-07\"}}") from exc


def _event_choice(settings: Settings, airflow_run_id: str, labels: list[str]) -> list[str]:
    """The months of ``labels`` (the run's features events) this run measures, chosen once per run: a first run's
    backlog is left (named with the run conf that measures each). Kept under the run key, so that the run cleared
    after its report was written chooses the same months (chosen again, that report made it no first run, and it
    measured, alerted and retrained on the whole backlog it had left out): :func:`~tenfold.pipelines.common.chosen_once`."""
    from tenfold.monitoring.drift import reported_months
    from tenfold.storage import lake_objects

    def choose() -> list[str]:
        measured, backlog = split_event_months(
            labels, nothing_done=None if reported_months(settings) else "no drift report is stored yet",
            hint='trigger monitor_drift with the run conf {"month": "%s"} to measure it')
        for label, why in backlog.items():
            log.warning("not measuring %s: %s", label, why)
        return measured

    return [str(m) for m in chosen_once(lake_objects(settings, settings.monitoring.drift.reports_prefix),
                                        airflow_run_id, choose)]


def _champion_once(settings: Settings, airflow_run_id: str, registry: ModelRegistry) -> str | None:
    """The champion when this run first planned with one (:func:`~tenfold.pipelines.common.chosen_once`). Resolved
    again, a run cleared after a rollout had moved the champion measured the new one: its own drift event (of the old
    version) no longer matched, so it emitted a second one and started a second retraining. Measuring the same
    version again, it finds that event; and :func:`decide` retrains nothing for a version that no longer serves."""
    from tenfold.storage import lake_objects

    champion = registry.resolve(CHAMPION)
    if champion is None:  # nothing kept: a run cleared once there is a champion measures it
        return None
    return str(chosen_once(lake_objects(settings, settings.monitoring.drift.reports_prefix), airflow_run_id,
                           lambda: champion, folder=CHOSEN_CHAMPION))


def plan(settings: Settings, airflow_run_id: str, conf: Mapping[str, Any] | None = None,
         event_months: Iterable[str] = ()) -> DriftRun:
    """The months and the version to monitor; every month must be a published features partition."""
    conf = run_conf(conf, CONF_KEYS)
    lake = Lake.from_settings(settings)
    table = settings.storage.features_table
    if conf.get("month") is not None:
        months = [_month(conf["month"], "run conf month")]
    elif event_months:
        labels = sorted({_month(m, "the features Asset event's month").label for m in event_months})
        months = [Partition.parse(m) for m in _event_choice(settings, airflow_run_id, labels)]
        # A month withdrawn since its event (a failed re-validation, a corrupt file found on read) is left with a
        # warning; failing the run for it left the other months' events spent and their drift never measured.
        withdrawn = [p for p in months if not lake.has_manifest(table, p)]
        if withdrawn and len(withdrawn) < len(months):
            for p in withdrawn:
                log.warning("not measuring %s: its features partition was withdrawn since its event (no _SUCCESS "
                            "manifest under %s/%s); rebuild it, then trigger monitor_drift with the run conf "
                            '{"month": "%s"}', p.label, lake.uri, table, p.label)
            months = [p for p in months if p not in withdrawn]
    else:
        published = lake.published_partitions(table)
        if not published:
            raise PipelineError(f"no features partition is published under {lake.uri}/{table}: run build_features first")
        months = [max(published)]
    missing = [p.label for p in months if not lake.has_manifest(table, p)]
    if missing:
        raise PipelineError(f"features partitions {missing} are not published (no _SUCCESS manifest under "
                            f"{lake.uri}/{table}): run build_features for them first")
    ref = conf_ref(conf, "version", CHAMPION)  # {"version": ""} is refused, not the champion measured
    registry = ModelRegistry(settings)
    try:
        # The champion named in the run conf (the CLI's own example) is pinned as the default is: resolved again, a
        # run cleared after a rollout measured the new champion and retrained a second time (:func:`_champion_once`).
        version = _champion_once(settings, airflow_run_id, registry) if ref == CHAMPION else registry.find(ref)
    except RegistryError as exc:  # an unknown id or alias, or a damaged pointer: the registry's message names it
        if conf.get("version") is not None:
            raise PipelineInputError(f"run conf version {ref!r}: {exc}") from exc
        # No version asked for (an Asset-triggered run): a torn champion pointer is the registry's, not a run conf's
        # nobody gave; its message says how to mend it, and a retry reads the same bytes.
        raise PipelineError(f"cannot measure drift against the {CHAMPION}: {exc}") from exc
    key = run_key(airflow_run_id)
    return DriftRun(run_key=key, airflow_run_id=airflow_run_id, months=tuple(p.label for p in months),
                    version=version, version_ref=ref, work_dir=str(work_root(settings) / key))


def policy(settings: Settings) -> DriftPolicy:
    from tenfold.workloads import get_workload

    try:
        return DriftPolicy.of(settings.monitoring.drift, get_workload(settings).contract)
    except DriftError as exc:
        raise PipelineError(str(exc)) from exc


def measure(settings: Settings, run: DriftRun | Mapping[str, Any]) -> Measured:
    """Each month against the version's reference profile, features and predictions alike."""
    from tenfold.monitoring.profile import ReferenceProfile

    p = DriftRun.from_xcom(run)
    if p.version is None:
        why = (f"no model to monitor against: the registry has no {CHAMPION} yet (train_model makes the first)"
               if p.version_ref == CHAMPION else f"{p.version_ref} resolves to no version")
        return Measured(reports=tuple(skipped(m, None, "no_model", why).to_dict() for m in p.months))
    from tenfold.data.lake import CorruptManifestError, MissingManifestError
    from tenfold.monitoring.profile import ProfileError
    from tenfold.registry.errors import IntegrityError
    from tenfold.training.data import MissingFeaturesError, StaleFeaturesError

    rules = policy(settings)
    try:
        model_dir = ModelRegistry(settings).download(p.version, work_root(settings) / "models" / p.version)
        profile = ReferenceProfile.load(model_dir)
    except (IntegrityError, ProfileError) as exc:  # the stored version itself is bad: a retry reads the same bytes
        raise PipelineError(f"cannot monitor against version {p.version}: {exc}") from exc
    if profile is None:
        why = (f"version {p.version} was registered before reference profiles existed: nothing measured; the next "
               "train_model run registers a version with one (or monitor another version with the conf's version)")
        log.warning("%s", why)
        return Measured(reports=tuple(skipped(m, p.version, "no_profile", why).to_dict() for m in p.months))
    from tenfold.model.io import ModelLoadError, load_model

    try:
        loaded = load_model(model_dir, for_workload=settings.workload)
    except ModelLoadError as exc:  # (another feature definitions' version, a damaged folder): a retry reads the same
        raise PipelineError(f"cannot monitor against version {p.version}: {exc}") from exc
    lake = Lake.from_settings(settings)
    table = settings.storage.features_table
    reports, contents, unreadable = [], [], []
    for month in p.months:
        # The content measured, pinned for the read (a re-publish meanwhile is a retried read of the new one): what
        # a trigger is recorded against.
        try:
            content = lake.content_digest(table, [Partition.parse(month)])
            report_ = measure_partition(loaded, profile, lake, table, month, p.version, rules, digest=content)
        except (DriftError, StaleFeaturesError) as exc:
            raise PipelineError(f"{month}: {exc}") from exc
        except (MissingManifestError, MissingFeaturesError, CorruptManifestError) as exc:
            # Withdrawn since plan, or a file that fails its checksum: every retry would meet the same. As plan
            # does for a month withdrawn since its event, it is left with a warning while other months are measured:
            # failing the run for it spent their events, and their drift was never measured.
            unreadable.append((month, exc))
            continue
        log.info("%s against %s: %s (%s)", month, p.version, report_.decision, report_.reason)
        reports.append(report_.to_dict())
        contents.append(content)
    if unreadable and len(unreadable) == len(p.months):
        raise PipelineError("; ".join(f"{table} {m} cannot be read ({e})" for m, e in unreadable)
                            + f": rebuild {'it' if len(unreadable) == 1 else 'each'} with build_features, then "
                            "trigger monitor_drift with the run conf "
                            + ", ".join(f'{{"month": "{m}"}}' for m, _ in unreadable))
    for month, error in unreadable:
        log.warning("not measuring %s: %s cannot be read (%s): rebuild it with build_features, then trigger "
                    'monitor_drift with the run conf {"month": "%s"}', month, f"{table} {month}", error, month)
    return Measured(reports=tuple(reports), contents=tuple(contents))


def report(settings: Settings, run: DriftRun | Mapping[str, Any], measured: Measured | Mapping[str, Any]) -> Reported:
    """Save each month's report in the lake (JSON and HTML); logs where they are."""
    DriftRun.from_xcom(run)
    m = Measured.from_xcom(measured)
    summaries, jsons, pages = [], [], []
    for n, body in enumerate(m.reports):
        r = DriftReport.from_dict(body)
        content = m.contents[n] if n < len(m.contents) else ""
        # The page the alert links is pinned to the version and the content measured: a later run on the month
        # (another champion, a re-publish) rewrites the month's latest report, not the evidence of this one.
        json_uri, html_uri = write_report(settings, r, pinned=f"{r.version}-{content[:16]}" if content else None)
        log.info("drift report of %s: %s (JSON: %s; the month's latest: %s)", r.month, html_uri, json_uri,
                 report_dir(settings, r.month) + "/report.html")
        summaries.append(r.summary)
        jsons.append(json_uri)
        pages.append(html_uri)
    return Reported(summaries=tuple(summaries), json_uris=tuple(jsons), html_uris=tuple(pages), contents=m.contents)


def _trigger_name(month: str, version: str | None, content: str) -> str:
    part = Partition.parse(month)
    return f"year={part.year}/month={part.month}/triggered-{version}-{content[:16]}.json"


# The hooks owed an alert by a trigger recorded before the record named them ("alerted": false alone): every one.
EVERY_HOOK = "*"


def _trigger(objects: Any, name: str) -> tuple[str, tuple[str, ...]] | None:
    """The Airflow run that recorded this drift's trigger, and the alert hooks that have not yet taken its alert
    (empty: delivered; ``(EVERY_HOOK,)``: all of them; None: no run recorded it)."""
    body = objects.get(name)
    if body is None:
        return None
    try:
        record = json.loads(body)
        if "undelivered" not in record:
            # Recorded before the hooks owed were kept: "alerted": false said the alert was not delivered (to any
            # hook, as far as the record tells), so a retry sends it again to every one; with no "alerted" either,
            # the record is older still, from when only a delivered alert was recorded.
            return str(record["run"]), ((EVERY_HOOK,) if record.get("alerted") is False else ())
        return str(record["run"]), tuple(str(h) for h in record["undelivered"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return "an unreadable record", ()  # a trigger all the same: retraining once is the point


def _triggered_by(objects: Any, name: str) -> str | None:
    """The Airflow run that recorded this drift's trigger (None: none did)."""
    found = _trigger(objects, name)
    return None if found is None else found[0]


def _retrained_for(objects: Any, month: str, content: str, version: str | None, holdout_of: Callable[[], Any],
                   emitted_by: Callable[[str], bool] | None) -> str | None:
    """The run whose trigger started the retrain that ``version`` is, when this content of ``month`` drifted against
    an earlier version: None when it is not that retrain.

    A retrain that drift started holds the drifted month out to judge it (train_model's rolling split), so it never
    learnt that month, and the same content measured against it (a re-publish, a manual rerun) drifts again. The
    trigger is recorded against the version measured, so nothing held that back: it paged and retrained once more.
    ``version`` is that retrain when another version's trigger on this content was recorded by a run that emitted, and
    its lineage held out exactly this month on exactly this content (``holdout_of()``: the lineage's holdout, the
    :class:`~tenfold.registry.gate.HoldoutRef` train_model records, read only when such a trigger exists)."""
    part = Partition.parse(month)
    folder, suffix = f"year={part.year}/month={part.month}", f"-{content[:16]}.json"
    own = _trigger_name(month, version, content).rsplit("/", 1)[-1]
    runs = [found[0] for n in objects.names(folder) if n.startswith("triggered-") and n.endswith(suffix) and n != own
            if (found := _trigger(objects, f"{folder}/{n}")) is not None
            and (emitted_by is None or emitted_by(found[0]))]
    if not runs:
        return None
    holdout = holdout_of()
    if (not isinstance(holdout, Mapping) or list(holdout.get("partitions") or ()) != [month]
            or holdout.get("digest") != content):
        return None  # another model: one that learnt the month, or was judged on other months or other content
    return runs[0]


class AlertNotDelivered(RuntimeError):
    """The drift alert did not reach every hook: this try fails so that the task's next one sends it again."""

    retryable = True


def decide(settings: Settings, run: DriftRun | Mapping[str, Any], reported: Reported | Mapping[str, Any], *,
           emits: bool = False, last_try: bool = False,
           emitted_by: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """Whether to retrain; alerts when a triggering feature drifted. The result is the drift event's extra.

    ``retrain`` is true only when this run retrains: it ``emits`` the drift event, for the champion. A run that does
    not emit (``monitor``, the command line) says ``retrain: false`` and, in ``would_retrain``, whether the DAG's run
    of the same measure would retrain; it writes no drift score to Cloud Monitoring, whose alert says the champion is
    retraining.

    A month's drift triggers once (see the module docstring): months whose trigger another run recorded are
    left out, and with nothing else firing the decision is no retrain (``already_triggered`` names the runs). So are
    months the version measured was retrained for (:func:`_retrained_for`: its lineage, read from the registry only
    when another version's trigger on the content exists; an outage reading it fails a try with tries left).
    Only a caller that emits the drift event (``emits``: the DAG's task) records a trigger: one recorded by a run
    that started no retraining would hold every later one back. ``emitted_by(run_id)`` (the DAG's: False only when
    Airflow holds no drift event of that run and knows the run failed) tells such a record from one whose run
    emitted: a run that failed after recording (its last try, a store error) is taken over, alerted and emitted by
    this one; a run Airflow no longer knows (its database's cleanup) is not.

    An alert that a hook failed to deliver (after the hook's own retries) is recorded as such, and a caller that
    emits raises :class:`AlertNotDelivered` so that the task's next try sends it again (once: its record says
    whether it was delivered); a transient error writing the drift score to Cloud Monitoring propagates, before
    any alert. On its ``last_try`` the decision goes out regardless, since neither holds back the retrain."""
    from tenfold.monitoring.alerts import send_alert
    from tenfold.monitoring.cloud_metrics import write_drift_score
    from tenfold.storage import lake_objects

    p, r = DriftRun.from_xcom(run), Reported.from_xcom(reported)
    # Drift of another version than the champion (a run conf naming an old version or the challenger, as several
    # refusals advise) is reported and alerted, but retrains nothing: retraining replaces the serving model, which is
    # not the one measured. Nor is its trigger recorded, which would hold back the champion's on the same month.
    # (With no champion yet, nothing serves that a retrain would replace: the version named is the one to improve.)
    # The same for the champion a run planned with, when a rollout replaced it since (during the run, or before the
    # run was cleared): the model measured no longer serves, and the new champion was not measured.
    not_serving = False
    emitter = emits  # the caller emits the drift event (the DAG's task): the decision's shape is the event's extra
    try:
        champion = ModelRegistry(settings).resolve(CHAMPION)
    except Exception as exc:
        if p.version_ref != CHAMPION or (emits and not last_try):
            raise  # the next try asks again (a run conf's version: as ever, nothing decided on a guess)
        # The champion the run planned with is taken to serve still: the decision goes out on the last try.
        log.warning("cannot tell whether %s is still the champion (%s: %s): deciding as if it were", p.version,
                    type(exc).__name__, exc)
        champion = None
    if champion is not None:
        not_serving = p.version != champion  # outside Airflow too: retraining it would replace nothing that serves
        emits = emits and not not_serving  # from here: whether this run emits the drift event that retrains
    # The content each month was measured on (none from a run of before this was recorded: such a month is
    # neither looked up nor recorded, so nothing is held back wrongly).
    contents = {s["month"]: c for s, c in zip(r.summaries, r.contents, strict=False)}
    firing = [(s, page) for s, page in zip(r.summaries, r.html_uris, strict=True) if s["decision"] == "retrain"]
    triggers = lake_objects(settings, settings.monitoring.drift.reports_prefix) if firing else None

    def name(month: str) -> str:
        return _trigger_name(month, p.version, contents[month])

    def holdout_of() -> Any:
        """The holdout the measured version's lineage names (train_model's), or None when it cannot be read."""
        try:
            lineage = ModelRegistry(settings).get(str(p.version)).lineage
        except Exception as exc:
            if emits and not last_try and not isinstance(exc, RegistryError):
                raise  # the registry away: the next try asks again
            # A damaged version, or the last try: decided as for new drift (which never holds back a retrain).
            log.warning("cannot read the lineage of %s (%s: %s): taking its drift as new", p.version,
                        type(exc).__name__, exc)
            return None
        return lineage.extra.get("holdout") if lineage is not None else None

    earlier: dict[str, str] = {}  # month -> the other run that triggered on it
    alerted: set[str] = set()  # months whose trigger this run recorded, and whose alert it delivered, on an earlier try
    owed: dict[str, tuple[str, ...]] = {}  # months this run recorded on an earlier try -> the hooks not yet sent to
    taken_over: set[str] = set()  # months another run recorded without starting a retraining (``emitted_by``)
    for s, _ in firing:
        if s["month"] in contents:
            found = _trigger(triggers, name(s["month"]))
            if found is None and (by := _retrained_for(triggers, s["month"], contents[s["month"]], p.version,
                                                         holdout_of, emitted_by)) is not None:
                # The version measured is the retrain this drift started: it held the month out to be judged on it.
                log.info("%s: %s is the retrain that run %s's trigger on this content started (it held the month out "
                         "to judge it, so never learnt it): not again", s["month"], p.version, by)
                earlier[s["month"]] = by
            elif found is not None and found[0] == p.airflow_run_id:
                owed[s["month"]] = found[1]
                if not found[1]:
                    alerted.add(s["month"])
            elif found is not None and emitted_by is not None and not emitted_by(found[0]):
                # Recorded by a run Airflow holds no drift event of (it failed after recording, on its last try):
                # it started no retraining, so this run takes the trigger over instead of leaving the drift be.
                log.warning("%s: the trigger recorded by run %s started no retraining (its run failed, and Airflow "
                            "holds no drift event of it): this run takes it over", s["month"], found[0])
                taken_over.add(s["month"])
            elif found is not None:
                earlier[s["month"]] = found[0]
    firing = [(s, page) for s, page in firing if s["month"] not in earlier]
    fresh = [(s, page) for s, page in firing if s["month"] not in alerted]
    triggered: list[str] = sorted({f for s, _ in firing for f in s["triggered"]})
    # The score of what triggers retraining (0 when nothing does): a small month whose PSI is high by chance, which
    # the test does not call drift, must not page while the monitor does not retrain.
    # A month this run recorded already had its score written by that earlier try (the write comes before the record):
    # written again by a clear of the run, it opened a new incident, paging for a drift already handled.
    scored = [(s, page) for s, page in firing if s["month"] not in owed]

    def highest(of: list[tuple[dict[str, Any], str]]) -> float | None:
        return max((s["max_psi"] for s, _ in of if s["max_psi"] is not None),
                   default=0.0 if any(s["max_psi"] is not None for s in r.summaries) else None)

    # The score the metric gets (a month an earlier try wrote is left out), and the one the alert and the decision
    # name: every firing month's (a retried try whose month was owed said 0.0 for a real drift).
    written, max_psi = highest(scored), highest(firing)
    # The cloud's drift alert policy watches this metric (dev and prod; nothing to write locally). An outage
    # (tenfold.outages: unavailable, deadline, quota, internal, aborted, retries run out) fails the try of a
    # task with tries left, before it alerts or records anything, so the next try writes the score (and alerts once:
    # the trigger record). It never holds back the retrain: any other error (a refusal a retry would meet again,
    # MetricWriteError; no credentials; a fault), or an outage on the last try, is logged and named in the alert, and
    # the decision and the drift event go out all the same.
    from tenfold.monitoring.cloud_metrics import MetricWriteError
    from tenfold.outages import is_outage

    unwritten = None
    try:
        # One series per project, which the cloud's drift alert pages on ("the drift monitor is retraining the
        # champion"): written only by a run that emits the drift event, which retrains. Not by a version that is not
        # the champion (which retrains nothing), nor by a run outside Airflow (``monitor``, the command line), which
        # emits no event: it paged that the champion was retraining when nothing was, and again on each rerun.
        if emits and (scored or not firing):
            write_drift_score(settings, written)
    except Exception as exc:
        if emits and not last_try and not isinstance(exc, MetricWriteError) and is_outage(exc):
            raise  # an outage: the next try writes it (a refusal, a missing credential or a fault would not)
        unwritten = f"{type(exc).__name__}: {exc}"
        log.warning("the drift score was not written to Cloud Monitoring (%s); the log alert still stands", unwritten)
    failed: tuple[str, ...] = ()  # the alert hooks that did not take this try's alert
    if fresh:
        # An earlier try of this run sent it and some hooks failed: those alone are sent it again (the others have it).
        retry = all(s["month"] in owed for s, _ in fresh)
        # A run outside Airflow emits no event: nothing retrains on its alert (the DAG's run of the month will).
        what = f"{p.version} ({', '.join(triggered)})"
        title = (f"drift: retraining {what}" if emits else
                 f"drift: {what}; {p.version} is not the champion ({champion}): no retraining" if not_serving else
                 f"drift: {what}; a run outside Airflow starts no retraining")
        failed = send_alert(settings, title, {
            "months": ", ".join(s["month"] for s, _ in fresh), "version": p.version, "max_psi": max_psi,
            "features": ", ".join(triggered), "report": ", ".join(page for _, page in fresh), "run": p.airflow_run_id,
            **({"cloud_metric_not_written": unwritten} if unwritten else {}),
        }, only=owed_hooks if retry and EVERY_HOOK not in (owed_hooks := {h for s, _ in fresh for h in owed[s["month"]]})
            else None, log_line=not retry).failed  # the log line (which pages in the cloud) went out with the first try's
    for s, _ in fresh if emits else []:  # after the alert: an attempt that dies before recording it alerts again
        month = s["month"]
        if month not in contents:
            continue
        assert triggers is not None
        record = json.dumps({"run": p.airflow_run_id, "version": p.version, "month": month, "content": contents[month],
                             "features": s["triggered"], "alerted": not failed, "undelivered": list(failed)}).encode()
        if month in owed or month in taken_over:
            triggers.put(name(month), record)  # this run's own record (a try whose alert was not delivered), or one
            # it took over
        elif not triggers.create(name(month), record) and (by := _triggered_by(triggers, name(month))) != p.airflow_run_id:
            earlier[month] = str(by)  # another run recorded it meanwhile: that one retrains
    firing = [(s, page) for s, page in firing if s["month"] not in earlier]
    if failed and emits and not last_try and any(s["month"] not in earlier for s, _ in fresh):
        # Recorded (other runs leave the drift to this one), not delivered: the next try alerts again, then emits.
        raise AlertNotDelivered(f"the drift alert was not delivered by {', '.join(failed)} (see the log): failing this "
                                "try so that the task's next one sends it again and then emits the drift event")
    if failed:
        log.warning("the drift alert was not delivered by %s; the decision goes out all the same", ", ".join(failed))
    if earlier:
        log.info("already triggered, not again: %s", ", ".join(f"{m} by run {by}" for m, by in sorted(earlier.items())))
    # "retrain" is what the DAG branches on and train_model reads in the event: true only from a run that emits. A run
    # outside Airflow retrains nothing, so it says what the DAG's run would decide instead ("would_retrain").
    would_retrain = bool(firing) and not not_serving
    return {"retrain": would_retrain and emits,
            **({} if emitter else {"would_retrain": would_retrain}),
            "version": p.version, "months": [s["month"] for s, _ in firing] or list(p.months), "max_psi": max_psi,
            "triggered": sorted({f for s, _ in firing for f in s["triggered"]}),
            "decisions": {s["month"]: s["decision"] for s in r.summaries}, "already_triggered": earlier,
            "contents": {s["month"]: contents[s["month"]] for s, _ in firing if s["month"] in contents}}


def emitted_already(events: Iterable[Any], dag_id: str, airflow_run_id: str, decision: Mapping[str, Any]) -> Any | None:
    """This run's drift event of the same decision (the version, and each month's measured content), when Airflow
    recorded one before: a cleared run that finished decides the same again, and emitting it once more would start
    a second retraining. ``events``: the drift Asset's recent events (Airflow's ``inlet_events``), newest first.

    A run that recorded its trigger and died before Airflow recorded its event finds none and emits; so does a
    cleared run whose months were re-published meanwhile (another content: a drift no event has reported)."""
    want = decision.get("contents") or {}
    if not want:
        return None  # a decision of before contents were recorded: emitted as it always was
    for event in events_of(events, dag_id, airflow_run_id):
        extra = event.extra or {}
        if extra.get("version") == decision.get("version") and all(
                (extra.get("contents") or {}).get(m) == c for m, c in want.items()):
            return event
    return None


def monitor(settings: Settings, month: str, version: str | None = None, *, run_id: str | None = None) -> dict[str, Any]:
    """Every step for one month in this process (no Airflow, so no Asset event): the decision dict, which says
    ``retrain: false`` (nothing retrains) and, in ``would_retrain``, whether the DAG's run would."""
    import datetime as dt

    rid = run_id or f"manual__{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%S.%f}"
    planned = plan(settings, rid, {"month": month, **({"version": version} if version else {})})
    return decide(settings, planned, report(settings, planned, measure(settings, planned)))


def main(argv: list[str] | None = None) -> int:
    """Every step in this process, without Airflow (the run conf as the DAG takes it)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tenfold.pipelines.monitor_drift", description=main.__doc__)
    parser.add_argument("--conf", default="{}", help='JSON run conf, e.g. {"month": "2013-07", "version": "champion"}')

    def body(settings: Settings, args: argparse.Namespace) -> int:
        import datetime as dt

        planned = plan(settings, f"manual__{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%S}", args.conf)
        print(json.dumps(decide(settings, planned, report(settings, planned, measure(settings, planned))), indent=1))
        return 0

    return run_main(parser, argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
