"""The steps of ``dags/train_model.py``: plan -> train -> evaluate -> register -> gate (-> announce_challenger), and release_training_group once train has ended.

Each step takes settings and the frozen run states of the steps before it (:class:`TrainRun`,
:class:`Trained`, :class:`Evaluation`, :class:`Registered`; each goes to XCom with ``to_xcom`` and
comes back with ``from_xcom``) and returns its own, so the DAG file only wires them together and each
step can be run and tested on its own. Every step is idempotent: a retried task finds its earlier work
(the training folder, the content-addressed version, the alias already moved) and does not repeat it.
Failures a retry cannot fix raise :class:`~tenfold.pipelines.common.PipelineError`.

Run every step in one process without Airflow: ``python -m tenfold.pipelines.train_model --conf '{...}'``.

Where the champion's score comes from. :func:`evaluate` resolves the ``champion`` alias in the
registry, downloads that version (hash-verified) and evaluates it on the challenger's holdout; the
gate receives version ids with the scores and refuses to compare a version with itself
(:mod:`tenfold.registry.gate`). :func:`gate` then moves ``champion`` with a compare-and-swap that
expects the very version that was evaluated, so a champion promoted by someone else in between makes
the step fail instead of silently replacing a model nobody compared against.

Local (``TENFOLD_ENV=local``): training runs torchrun on this machine in
``<local.home>/runs/train_model/<run>/train-<digest>``. Dev/prod: :func:`train` stages the config and
preprocessing in ``gs://<artifacts>/<training.runs_prefix>/<run>-<digest>/out`` and runs the job on the
training instance group through :func:`tenfold.training.fleet.run_training` (resized up, then always back
to zero); the model is read back from ``.../out/model``. ``<digest>`` is the training config's and its world
size's (:func:`tenfold.training.jobs.training_key`): a re-planned run, or one trained by another number of
processes, trains in a folder of its own.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tenfold.config import Settings
from tenfold.data.lake import CorruptManifestError, Lake, LakeError, Partition, month_range
from tenfold.fsio import atomic_write
from tenfold.jsonable import plain_json
from tenfold.model_files import (
    META_FILE,
    PREPROCESSING_FILE,
    REFERENCE_PROFILE_FILE,
    WEIGHTS_FILE,
    unsafe_relative_path,
)
from tenfold.monitoring.profile import ensure_profile
from tenfold.pipelines.common import PipelineError, PipelineInputError, RunState, events_of, run_conf, run_key, run_main
from tenfold.pipelines.common import work_root as common_work_root
from tenfold.registry.errors import AliasConflict
from tenfold.registry.gate import Decision, GatePolicy, HoldoutRef, Scored, decide
from tenfold.registry.lineage import Lineage, partition_refs
from tenfold.registry.registry import CHALLENGER, CHAMPION, AliasPointer, ModelRegistry, utc_stamp

log = logging.getLogger(__name__)

# What a run's conf (``airflow dags trigger -c`` / ``dags test -c``) may change.
CONF_KEYS = ("train_months", "holdout_months", "epochs", "max_steps", "batch_size", "nproc", "seed", "feedback_weight")


DAG_ID = "train_model"


@dataclass(frozen=True)
class TrainRun(RunState):
    """The plan of one run (the ``plan`` task's XCom): its split, its config and where it works."""

    run_key: str
    airflow_run_id: str
    work_dir: str
    train_months: tuple[str, ...]
    holdout_months: tuple[str, ...]
    holdout: HoldoutRef
    train_config: dict[str, Any]
    nproc: int | None = None
    # Which feedback the run trains on (tenfold.feedback.training's summary, the file and its SHA-256);
    # empty when feedback_weight is 0. The registered version's lineage records it.
    feedback: dict[str, Any] = field(default_factory=dict)
    # The champion the plan chose its default split beside, {"version": <id, or None when there was none>}: a champion
    # promoted after it (the rollout of a run that trained while this one waited) may have learnt the holdout, and
    # evaluate then refuses the run instead of marking an uncompared challenger. Empty when the run conf gave the
    # windows, the champion's alias could not be read, or the run was planned before this was recorded.
    champion_at_plan: dict[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> str:
        """The features table the run trains and evaluates on (its TrainConfig's)."""
        return str(self.train_config["table"])

    @property
    def train_parts(self) -> list[Partition]:
        return [Partition.parse(m) for m in self.train_months]

    @property
    def holdout_parts(self) -> list[Partition]:
        return [Partition.parse(m) for m in self.holdout_months]


@dataclass(frozen=True)
class Trained(RunState):
    """Where the trained challenger is (a local folder or a gs:// prefix) and how training went."""

    model_ref: str
    train_result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation(RunState):
    """The challenger, the champion (when there is one) and the baselines, scored on the same holdout."""

    holdout: dict[str, Any]
    challenger: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    champion: dict[str, Any] | None = None


@dataclass(frozen=True)
class Registered(RunState):
    version: str
    uri: str


def holdout_ref(lake: Lake, table: str, parts: list[Partition]) -> HoldoutRef:
    """Identity of the holdout data: a digest of each partition's manifest content (not its run id)."""
    return HoldoutRef(partitions=tuple(p.label for p in parts), digest=lake.content_digest(table, parts))


def _window(value: Any, name: str) -> list[Partition]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise PipelineError(f"{name} must be [first, last] months, e.g. [\"2013-01\", \"2013-09\"]; got {value!r}")
    try:
        return month_range(str(value[0]), str(value[1]))
    except ValueError as exc:
        raise PipelineError(f"{name}: {exc}") from exc


def rolling_split(published: list[Partition], train_window: int, holdout_window: int) -> tuple[list[Partition], list[Partition]]:
    """The default split of a scheduled or asset-triggered run: the newest published months.

    Takes the newest unbroken run of published months; its last ``holdout_window`` months (at most a
    quarter of the run, at least one) are the holdout and up to ``train_window`` months before them
    are the training window. With all of 2013 published this is Jan-Sep / Oct-Dec.
    """
    run: list[Partition] = []
    for part in sorted(published, reverse=True):
        if run and part != run[-1].previous():
            break
        run.append(part)
    run.reverse()
    if len(run) < 2:
        have = ", ".join(p.label for p in published) or "none"
        raise PipelineError(
            f"training needs at least two consecutive published feature months (published: {have}): "
            "run build_features for more months, or pass train_months/holdout_months in the run conf"
        )
    n_holdout = max(1, min(holdout_window, len(run) // 4))
    holdout = run[-n_holdout:]
    train = run[:-n_holdout][-train_window:]
    return train, holdout


def default_split(settings: Settings, published: Sequence[Partition], *, drifted: bool = False,
                  champion_at_plan: Mapping[str, Any] | None = None) -> tuple[list[Partition], list[Partition]]:
    """The split of a run without train_months/holdout_months in its conf, over ``published`` months: a run drift
    started holds out the newest month alone; any other, the newest ``holdout_window`` months, no more than the
    champion has not learnt (:func:`rolling_split`). ``champion_at_plan``: the champion as the caller read it
    (:func:`_champion_at_plan`, which plan records), else it is read here."""
    t = settings.training
    if drifted:
        holdout_window = 1
    else:
        champion = _champion_at_plan(settings) if champion_at_plan is None else champion_at_plan
        holdout_window = _holdout_beside_the_champion(settings, published, t.holdout_window, champion)
    return rolling_split(list(published), t.train_window, holdout_window)


def _holdout_beside_the_champion(settings: Settings, published: Sequence[Partition], window: int,
                                 champion_at_plan: Mapping[str, Any]) -> int:
    """The default holdout window, shortened to the published months after the champion's last training month (at
    least one): the gate scores the champion on months it never learnt. A champion from a drift-started run trains
    up to the month before the newest; the next scheduled run held out three months it had learnt, could not score
    it, and failed its gate (and moved the challenger to an uncompared version) every week until newer months came.
    ``champion_at_plan`` is the champion the plan read and records (:func:`_champion_at_plan`: empty when its alias
    could not be read), the one the window is chosen beside: a champion promoted after it is not seen here, and
    evaluate refuses a newer one that learnt some of the holdout."""
    from tenfold.registry.errors import RegistryError

    champion = champion_at_plan.get("version")
    try:
        lineage = ModelRegistry(settings).get(champion).lineage if champion is not None else None
    except RegistryError:  # a damaged champion: evaluate says so, in the gate's comparison
        return window
    learnt = [r.partition for r in lineage.train_partitions] if lineage else []
    if not learnt:
        return window
    after = sum(1 for p in published if p.label > max(learnt))
    if after < window:
        log.info("the champion %s learnt up to %s: holding out the %d month(s) after it, not %d", champion,
                 max(learnt), max(1, after), window)
    return max(1, min(window, after))


def work_root(settings: Settings) -> Path:
    return common_work_root(settings, "train_model")


def _work_dir(settings: Settings, p: TrainRun) -> Path:
    """The run's scratch folder on this host (its path is ``p.work_dir``, which plan named): checked again here, as
    plan checked it on its own host; a task on another worker would have taken the plain path as it found it."""
    return work_root(settings) / p.run_key


def drifted_months(context: Mapping[str, Any], uri: str) -> list[str]:
    """The months (ascending, once each) whose drift started this run: the retraining decisions among the run's
    triggering events of the drift Asset at ``uri`` (``monitor_drift``'s decide puts them in the event's extra)."""
    events = context.get("triggering_asset_events") or {}
    return sorted({str(m) for asset, found in events.items() if getattr(asset, "uri", asset) == uri
                   for e in found if (e.extra or {}).get("retrain") for m in (e.extra or {}).get("months") or ()})


def gate_policy(settings: Settings) -> GatePolicy:
    """The gate's policy; PipelineError when ``gate_beat_baselines`` names a baseline no run evaluates."""
    from tenfold.workloads import PLATFORM_BASELINE, get_workload, own_baselines

    own = tuple(own_baselines(get_workload(settings)))
    try:
        return GatePolicy.from_settings(settings, workload_baselines=own, evaluated=(*own, PLATFORM_BASELINE))
    except ValueError as exc:
        raise PipelineError(str(exc)) from None


def plan(settings: Settings, airflow_run_id: str, conf: Mapping[str, Any] | None = None, *,
         drifted: Sequence[str] = (), run_type: str | None = None) -> TrainRun:
    """Choose the time-based split and the training config; every month of both windows must be published.

    A run that drift started (``drifted``: the months that drifted) holds out only the newest month: the default
    holdout of ``holdout_window`` (3) months kept the drifted month, and the two before it, out of training, so a
    retrain learned nothing of what had changed, its reference profile did not either, and the next months drifted
    again against it. With one month held out, the new version trains up to the month before the newest (the
    drifted one, when it is the newest) and the gate judges it, against the champion, on that month.

    A backfill run (``run_type`` ``"backfill"``, the Airflow run's type) is refused: the split ignores the run's
    logical date, so every run of a backfill trained the same newest months, and Airflow holds a backfill's runs back
    apart from the DAG's others (max_active_runs=1 did not stop them), so they ran side by side: resizing the one
    cloud training group under each other and racing to move the challenger alias."""
    from tenfold.training.config import MAX_SEED, TrainConfig

    if run_type == "backfill":  # Airflow's run type is a str enum: its value compares equal
        raise PipelineInputError(
            "train_model does not run as a backfill: it trains on the newest published months whatever the run's "
            "date, so a backfill's runs would all train the same model at once; trigger one run instead (a run conf "
            "with train_months and holdout_months chooses other months)")
    conf = run_conf(conf, CONF_KEYS)
    champion_at_plan: dict[str, Any] = {}
    gate_policy(settings)  # a baseline misnamed in the settings is refused before the training run, not after it
    t = settings.training
    lake = Lake.from_settings(settings)
    table = settings.storage.features_table
    if "train_months" in conf or "holdout_months" in conf:
        train = _window(conf.get("train_months", list(t.train_months)), "train_months")
        holdout = _window(conf.get("holdout_months", list(t.holdout_months)), "holdout_months")
    else:
        champion_at_plan = _champion_at_plan(settings)  # read once: the split is chosen beside the one recorded
        train, holdout = default_split(settings, lake.published_partitions(table), drifted=bool(drifted),
                                       champion_at_plan=champion_at_plan)
        if drifted:
            log.info("started by drift in %s: holding out only the newest month (%s) and training up to %s",
                     ", ".join(drifted), holdout[-1].label, train[-1].label)
    if not train or not holdout:
        raise PipelineError("train_months and holdout_months must each cover at least one month (first <= last)")
    if max(train) >= min(holdout):
        raise PipelineError(
            f"the holdout ({holdout[0].label}..{holdout[-1].label}) must come after the training window "
            f"({train[0].label}..{train[-1].label}): the split is by time, never random"
        )
    missing = [p.label for p in train + holdout if not lake.has_manifest(table, p)]
    if missing:
        published = ", ".join(p.label for p in lake.published_partitions(table)) or "none"
        raise PipelineError(
            f"features partitions {', '.join(missing)} have no _SUCCESS manifest under {lake.uri}/{table}: run "
            f"build_features for those months first, or choose windows within the published ones ({published})"
        )
    for key in ("epochs", "max_steps", "batch_size", "seed", "nproc"):
        value = conf.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "seed" else 1)
                                  or (key == "seed" and value > MAX_SEED)):  # TrainConfig's bound (why: there)
            raise PipelineError(f"run conf {key}={value!r}: give a whole number"
                                f"{' from 0 to 2**63 - 1' if key == 'seed' else ' >= 1'}")
    if not settings.is_local and conf.get("nproc") not in (None, t.nproc_per_node):
        raise PipelineError(
            f"run conf nproc={conf['nproc']}: in {settings.env} every node of the training group runs "
            f"settings.training.nproc_per_node ({t.nproc_per_node}) processes, one per accelerator of its machine "
            "type; leave nproc out, or change that setting (and the group's machine type) and deploy")
    weight = conf.get("feedback_weight", t.feedback_weight)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 100:
        raise PipelineError(f"run conf feedback_weight={weight!r}: give a number from 0 (no feedback) to 100")
    overrides = {k: conf[k] for k in ("epochs", "max_steps", "batch_size", "seed") if conf.get(k) is not None}
    # The training window's content is pinned here, as the holdout's is: the ranks refuse other data, and
    # evaluate and register refuse a window re-published since (lineage would name data the model never saw).
    cfg = TrainConfig.from_settings(settings, train_months=tuple(p.label for p in train),
                                    data_digest=lake.content_digest(table, train), **overrides)
    key = run_key(airflow_run_id)
    work_dir = work_root(settings) / key
    feedback: dict[str, Any] = {}
    if weight > 0:
        feedback = _plan_feedback(settings, key, work_dir, train, float(weight))
        if feedback.get("uri"):
            cfg = cfg.with_(feedback_uri=feedback["uri"], feedback_sha256=feedback["sha256"], feedback_weight=float(weight))
    return TrainRun(
        run_key=key, airflow_run_id=airflow_run_id, work_dir=str(work_dir),
        train_months=tuple(p.label for p in train), holdout_months=tuple(p.label for p in holdout),
        holdout=holdout_ref(lake, table, holdout), train_config=cfg.to_dict(),
        # Resolved here, as the rest of the run's config: a setting changed between two tries (nproc_per_node) put a
        # retry's ranks on checkpoints written by another number of them, refused on every try and every clear.
        nproc=int(conf["nproc"]) if conf.get("nproc") else (t.nproc_per_node if settings.is_local else None),
        feedback=feedback, champion_at_plan=champion_at_plan,
    )


def _champion_at_plan(settings: Settings) -> dict[str, Any]:
    """``{"version": <the champion now, or None>}``; empty when its alias cannot be read (evaluate says so)."""
    from tenfold.registry.errors import RegistryError

    try:
        return {"version": ModelRegistry(settings).resolve(CHAMPION)}
    except RegistryError:
        return {}


def _plan_feedback(settings: Settings, key: str, work_dir: Path, train: list[Partition], weight: float) -> dict[str, Any]:
    """Select the feedback of the training window's flights and write it as the run's extra training input.

    Locally the file goes in the run's work dir; in dev/prod in the run's folder of the artifacts bucket
    (``gs://<artifacts>/<runs_prefix>/<run>/out``, not the training job's ``<run>-<config digest>/out``; the config
    names it by URI, and the training group's workers read it from there). A plan retried with the same labelled partitions finds its file (content-addressed)
    and plans the same run.
    """
    from tenfold.feedback.training import (
        FeedbackError,
        FeedbackRepublished,
        LookupsInFlight,
        feedback_training_set,
        write_training_input,
    )
    from tenfold.training.fleet import run_folder

    try:
        chosen = feedback_training_set(settings, train, weight=weight, max_rows=settings.training.feedback_max_rows)
    except (FeedbackRepublished, LookupsInFlight) as exc:
        # The sink or build_features published a month during the read: the task's retry reads it once it is done. A
        # pipeline refusal all the same (run by hand, one line, not "a fault in the code"), one Airflow retries.
        raise FeedbackInFlight(str(exc)) from exc
    except FeedbackError as exc:
        raise PipelineError(str(exc)) from exc
    except CorruptManifestError as exc:
        # A manifest or file that fails its checks is read the same way again: said now, with what to do. The lake's
        # other refusals here are a retry's to mend (a download damaged in transit, a month re-published or withdrawn
        # while it was read, a lock taken over), and were failed at once, telling people to rebuild the join.
        raise PipelineError(
            f"the feedback join's labelled table cannot be read ({exc}): rebuild it (tenfold feedback join), or train "
            "without feedback (run conf {\"feedback_weight\": 0})"
        ) from exc
    summary = dict(chosen.summary)
    log.info("feedback for %s..%s: %d rows of weight %g (%s)", train[0].label, train[-1].label, chosen.rows, weight,
             {k: v for k, v in summary.items() if k not in ("labelled_partitions", "train_months")})
    if chosen.rows == 0:
        return summary
    if settings.is_local:
        uri, sha = write_training_input(chosen.table, str(work_dir / "feedback"))
    else:
        from tenfold.storage import gcs_client

        folder = f"gs://{settings.storage.artifacts_bucket}/{run_folder(settings, key)}/out"
        uri, sha = write_training_input(chosen.table, folder, storage_client=gcs_client(settings))
    return {**summary, "uri": uri, "sha256": sha}


def feedback_lineage(run: TrainRun, trained: Trained) -> dict[str, Any]:
    """What the version's lineage records of the feedback: the plan's selection and, when the job reported it,
    the rows the ranks trained on (those in the validation slice's days are left out); empty without feedback."""
    if not run.feedback:
        return {}
    body = dict(run.feedback)
    reported = trained.train_result.get("feedback")
    if isinstance(reported, Mapping):
        body["trained_rows"] = reported.get("rows")
        body["in_validation_days"] = reported.get("in_validation_days")
    return body


# --- train ------------------------------------------------------------------------------------------


def release_training_group(settings: Settings, run: TrainRun | Mapping[str, Any] | None = None, *,
                           igm_client: Any = None, markers: Any = None) -> bool:
    """After ``train`` has ended for good, however: the cloud training group back at 0 (``train`` scales it down
    itself, but not when the worker process running it was killed: its GPUs then ran until the next run, a week
    for the weekly schedule). Whether it had to be; locally there is no group.

    Only ``run``'s own group (the plan's: the cloud run id its train task used, or any its DAG run's tries used, a
    deploy between them having changed the world size), or a free one, is released: a group another run holds (one
    started by hand meanwhile) is left running, with a warning. Without ``run`` only a free group is released
    (:func:`tenfold.training.fleet.release_group`)."""
    if settings.is_local:
        return False
    from tenfold.training.fleet import release_group

    run_id = run_key = None
    if run is not None:
        from tenfold.training.config import TrainConfig
        from tenfold.training.jobs import cloud_run_id

        p = TrainRun.from_xcom(run)
        run_key = p.run_key
        run_id = cloud_run_id(settings, p.run_key, TrainConfig.from_dict(p.train_config))  # train's, by the same rule
    # it says when the group was not at 0, and when it left another run's group alone
    return release_group(settings, run_id, run_key=run_key, client=igm_client, markers=markers)


def train(settings: Settings, run: TrainRun | Mapping[str, Any], *, igm_client: Any = None, markers: Any = None,
          storage_client: Any = None) -> Trained:
    """Train the challenger (:mod:`tenfold.training.jobs`: torchrun here, the training instance group in dev/prod).

    The keyword arguments are the cloud job's Google clients (tests pass them at that boundary).
    """
    from tenfold.training.config import TrainConfig
    from tenfold.training.jobs import training_job

    p = TrainRun.from_xcom(run)
    # A window re-published since the plan is refused at once (every rank would refuse it, after the group scaled
    # up, on every try): the same check evaluate and register make.
    _check_training_window(Lake.from_settings(settings), p)
    job = training_job(settings, igm_client=igm_client, markers=markers, storage_client=storage_client)
    model = job.run(TrainConfig.from_dict(p.train_config), p.run_key, _work_dir(settings, p), nproc=p.nproc)
    return Trained(model_ref=model.model_ref, train_result=model.result)


def materialize(settings: Settings, model_ref: str, dest: Path, *, storage_client: Any = None) -> Path:
    """A local folder holding the model at ``model_ref`` (a path, or a gs:// prefix copied to ``dest``)."""
    if not model_ref.startswith("gs://"):
        path = Path(model_ref)
        if not (path / META_FILE).is_file():
            raise PipelineError(f"{path} holds no trained model (no {META_FILE}): the train step did not finish; re-run it")
        return path
    from tenfold.storage import gcs_client, split_gs_uri

    client = storage_client or gcs_client(settings)
    bucket, prefix = split_gs_uri(model_ref)
    # A try killed mid-download (SIGKILL, a lost worker) never ran the finally below: its partial copy is removed
    # here once abandoned, as the registry's downloads do, or each killed try left a model copy on the worker for good.
    from tenfold.registry.registry import _remove_abandoned

    _remove_abandoned(dest)
    tmp = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        count = 0
        for blob in client.list_blobs(bucket, prefix=f"{prefix}/"):
            name = blob.name[len(prefix) + 1:]
            # A folder placeholder (a console's "create folder", the model folder's own included: name ""): no file.
            if (name == "" or name.endswith("/")) and not blob.size:
                continue
            target = tmp / name
            why = unsafe_relative_path(name)
            if why is not None or not target.resolve().is_relative_to(tmp.resolve()):
                raise PipelineError(f"{model_ref} holds an object gs://{bucket}/{blob.name} whose name leads outside the "
                                    f"model folder ({why or 'it resolves outside'}): the folder was tampered with; remove that object and re-run "
                                    "the step")
            target.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(target))
            count += 1
        if count == 0 or not (tmp / META_FILE).is_file():
            raise PipelineError(f"{model_ref} holds no trained model (no {META_FILE}): did the training run finish?")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        return dest
    finally:
        # A download that failed (a full disk, a lost connection) leaves no partial folder: each retry would leak one.
        shutil.rmtree(tmp, ignore_errors=True)


# --- evaluate ---------------------------------------------------------------------------------------


def metrics_dict(metrics: Any) -> dict[str, Any]:
    """C's metrics object (or a mapping) as plain JSON with at least auc, log_loss and brier."""
    if hasattr(metrics, "to_dict"):
        body = metrics.to_dict()
    elif isinstance(metrics, Mapping):
        body = dict(metrics)
    else:
        body = asdict(metrics)
    body = plain_json(body)
    missing = [k for k in ("auc", "log_loss", "brier") if k not in body]
    if missing:
        raise PipelineError(f"evaluation returned no {missing}: the evaluator is out of date")
    return dict(body)


def _evaluate_model(model_dir: Path, lake: Lake, table: str, parts: list[Partition], workload: str) -> dict[str, Any]:
    """The champion's metrics, loaded as a model of ``workload`` (this run's): its folder came from the registry."""
    from tenfold.training.evaluate import evaluate_model

    return metrics_dict(evaluate_model(model_dir, lake, parts, table=table, for_workload=workload))


def _evaluate_challenger(model_dir: Path, lake: Lake, table: str, train_parts: list[Partition],
                         holdout_parts: list[Partition]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The challenger and the baselines (fit on the training window) on the holdout, in one pass.

    The challenger's metrics are its calibrated ones (what it will serve); ``uncalibrated`` holds the same
    model's figures without its calibration and ``calibrator`` what the calibration is and how it did on
    the validation slice, so the registry, the gate's decision and ``tenfold models show`` carry both.
    """
    from tenfold.training.evaluate import evaluate_with_baselines

    report = evaluate_with_baselines(model_dir, lake, train_parts, holdout_parts, table=table)
    # "rate_baseline" -> "rate": the names the gate policy (settings.training.gate_beat_baselines) uses.
    baselines = {name.removesuffix("_baseline"): metrics_dict(m) for name, m in report.baselines.items()}
    challenger = metrics_dict(report.model)
    if report.uncalibrated is not None:
        challenger["uncalibrated"] = metrics_dict(report.uncalibrated)
    if report.calibration is not None:
        challenger["calibrator"] = plain_json(report.calibration)
    return challenger, baselines


def evaluate(settings: Settings, run: TrainRun | Mapping[str, Any], trained: Trained | Mapping[str, Any]) -> Evaluation:
    """Score the challenger, the current champion and the baselines on the same holdout."""
    p, t = TrainRun.from_xcom(run), Trained.from_xcom(trained)
    lake = Lake.from_settings(settings)
    table = p.table
    _check_holdout(lake, p)
    _check_training_window(lake, p)
    work = _work_dir(settings, p)
    work.mkdir(parents=True, exist_ok=True)
    challenger_dir = materialize(settings, t.model_ref, work / "challenger")
    challenger, baselines = _evaluate_challenger(challenger_dir, lake, table, p.train_parts, p.holdout_parts)

    registry = ModelRegistry(settings)
    champion: dict[str, Any] | None = None
    champion_version = registry.resolve(CHAMPION)
    if champion_version is not None:
        # The champion is scored from its own registered, hash-verified files, never from what this
        # run produced: this is what keeps the gate from comparing the challenger with itself.
        from tenfold.model.io import ModelLoadError
        from tenfold.registry.errors import RegistryError
        from tenfold.training.data import StaleFeaturesError

        try:
            champion_dir = registry.download(champion_version, work / "champion" / champion_version)
            _refuse_another_workloads(settings, registry, champion_version, champion_dir)  # before any other verdict
            lineage = registry.get(champion_version).lineage
            trained_on = sorted({r.partition for r in lineage.train_partitions} & set(p.holdout_months)) if lineage else []
            if trained_on:  # scored on what it learnt, it would look better than it is: no fair comparison
                _refuse_a_champion_promoted_since_the_plan(p, champion_version, trained_on)
                raise ValueError(f"it was trained on the holdout month(s) {', '.join(trained_on)}; compare the two on "
                                 "a later holdout (the run conf's holdout_months)")
            scored = _evaluate_model(champion_dir, lake, table, p.holdout_parts, settings.workload)
            champion = {"version": champion_version, "metrics": scored}
        except (ForeignChampion, ChampionMovedSincePlan):
            raise
        except (StaleFeaturesError, ModelLoadError, RegistryError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            # RegistryError: the champion's stored version is damaged (a file changed or missing, its VERSION.json or
            # lineage unreadable), which a retry reads again; an unreachable store raises no RegistryError and retries.
            # E.g. the feature contract changed and the champion cannot read the new holdout. The run goes on
            # to register the challenger so a person can compare and promote it by hand; the gate fails loudly.
            # A lake that cannot be read now (a lock, an outage, a corrupt file) is no such verdict: it is
            # raised, and the task retries.
            if isinstance(exc, LakeError) and not isinstance(exc, StaleFeaturesError):
                raise
            log.exception("champion %s cannot be scored on %s", champion_version, list(p.holdout_months))
            champion = {"version": champion_version, "metrics": None, "error": f"{type(exc).__name__}: {exc}"}
    _check_holdout(lake, p)  # again: re-published while the models were scored, they were scored on different data
    log.info("challenger %s; champion %s %s; baselines %s", _brief(challenger), champion_version,
             _brief(champion["metrics"]) if champion and champion["metrics"] else "", {k: _brief(v) for k, v in baselines.items()})
    return Evaluation(holdout=asdict(p.holdout), challenger=challenger, champion=champion, baselines=baselines)


class ForeignChampion(PipelineError):
    """The registry's champion is a model of another workload: two workloads share one registry."""


class FeedbackInFlight(PipelineError):
    """The feedback or a month's lookups were published again while the plan read them: a retry reads them done."""

    retryable = True


class ChampionMovedSincePlan(PipelineError):
    """A champion promoted after the plan learnt some of the holdout the plan chose beside the one before it."""


def _refuse_a_champion_promoted_since_the_plan(p: TrainRun, champion: str, trained_on: Sequence[str]) -> None:
    """Refuse the run when ``champion`` (which learnt the holdout months ``trained_on``) was promoted after the plan
    chose the holdout beside another. Recorded as no comparison, the gate marked this run's version challenger
    beside a champion it was never compared with, and the default rollout took it; a retry holds out the same months,
    so only a new run (whose plan holds out beside the new champion) compares them."""
    if not p.champion_at_plan or p.champion_at_plan.get("version") == champion:
        return  # not recorded (the run conf chose the windows), or the one the plan saw: the gate records no comparison
    before = p.champion_at_plan.get("version")
    raise ChampionMovedSincePlan(
        f"the champion moved from {before or 'nothing'} to {champion} after this run planned its holdout "
        f"({', '.join(p.holdout_months)}), and {champion} was trained on {', '.join(trained_on)} of it: the two cannot "
        "be compared on this holdout. Nothing was registered and no alias moved; run train_model again (its plan "
        "holds out the months after the new champion's)")


def _refuse_another_workloads(settings: Settings, registry: ModelRegistry, version: str, folder: Path) -> None:
    """A champion of another workload cannot be scored on this workload's holdout, and a challenger marked beside it
    would be taken by the other workload's rollout (the ``challenger`` alias is the registry's, not a workload's):
    refused before the gate moves any alias, naming the setting that gives each workload its own registry. A
    feature-version change of the same workload is not this: the gate goes on without a comparison.

    Decided from the names alone: importing the module the champion's ``meta.json`` names would let whoever writes
    the registry choose what this worker runs, and the other workload's module is usually not installed here, which
    left the refusal unmade and the gate marking a challenger beside a champion it never compared."""
    import json

    from tenfold.config.settings import DEFAULT_WORKLOAD
    from tenfold.workloads import same_workload

    try:
        # Folders saved before workloads were named hold the reference workload's model (as load_model reads them).
        theirs = json.loads((folder / META_FILE).read_text()).get("workload", DEFAULT_WORKLOAD)
    except (OSError, ValueError, AttributeError):
        return  # a meta.json that cannot be read: the scoring's refusal to make, as before
    # One workload has several names ("flights", "tenfold.workloads.flights:WORKLOAD"): same_workload knows them.
    if not isinstance(theirs, str) or not same_workload(theirs, settings.workload):
        raise ForeignChampion(
            f"the registry's champion {version} ({registry.version_uri(version)}) is a model of workload {theirs!r}; "
            f"this run trains workload {settings.workload!r}. Two workloads share the registry "
            f"{settings.storage.models_bucket}/{settings.storage.registry_prefix}: give this one its own with "
            "TENFOLD_STORAGE__REGISTRY_PREFIX (e.g. registry-<workload>), set for every component (`tenfold up` "
            "hands it on), then run train_model again; nothing was registered")


def _check_holdout(lake: Lake, p: TrainRun) -> None:
    """Refuse when a holdout month was re-published since the plan pinned it: the scores recorded under the plan's
    holdout digest would be of other data, and lineage would name manifests the metrics were not measured on."""
    if holdout_ref(lake, p.table, p.holdout_parts) != p.holdout:
        raise PipelineError(
            f"holdout partitions {list(p.holdout_months)} were re-published since this run planned its split: "
            "scores would not be comparable; trigger a new run"
        )


def _check_training_window(lake: Lake, p: TrainRun) -> None:
    """Refuse when a training month was re-published since the plan pinned the window's content."""
    pinned = p.train_config.get("data_digest")
    if pinned is not None and lake.content_digest(p.table, p.train_parts) != pinned:
        raise PipelineError(
            f"training partitions {list(p.train_months)} were re-published since this run planned its split: the "
            "model was trained on what they held then, which lineage could no longer name; trigger a new run"
        )


def _brief(m: Mapping[str, Any]) -> str:
    return f"auc={m['auc']:.4f} log_loss={m['log_loss']:.4f}"


# --- register ---------------------------------------------------------------------------------------


def register(settings: Settings, run: TrainRun | Mapping[str, Any], trained: Trained | Mapping[str, Any],
             evaluation: Evaluation | Mapping[str, Any]) -> Registered:
    """Register the challenger with its metrics and lineage; returns its version id."""
    p, t, ev = TrainRun.from_xcom(run), Trained.from_xcom(trained), Evaluation.from_xcom(evaluation)
    lake = Lake.from_settings(settings)
    model_dir = materialize(settings, t.model_ref, _work_dir(settings, p) / "challenger")
    train_refs = partition_refs(lake, p.table, p.train_parts)
    holdout_refs = partition_refs(lake, p.table, p.holdout_parts)
    # After the manifests lineage names were read (not before the download, which can be long): a re-publish before
    # the read is refused here, and one after it leaves lineage naming what was planned.
    _check_holdout(lake, p)
    _check_training_window(lake, p)
    lineage = Lineage(
        feature_table=p.table,
        train_partitions=tuple(train_refs),
        holdout_partitions=tuple(holdout_refs),
        training_config=p.train_config,
        validation={r.partition: r.validation for r in (*train_refs, *holdout_refs) if r.validation is not None},
        run_id=p.airflow_run_id,
        extra={"train_result": t.train_result, "baselines": ev.baselines, "holdout": ev.holdout, "env": settings.env},
        feedback=feedback_lineage(p, t),
    )
    metrics = {**ev.challenger, "holdout": ev.holdout}
    # The drift monitor's reference (tenfold.monitoring.profile): one of the version's files, so monitoring a
    # month later needs only the version and that month, never this training window again.
    # Pinned to the content the model was trained on: a month re-published since the check above is refused.
    ensure_profile(model_dir, lake, p.table, p.train_parts, settings.monitoring.drift,
                   digest=p.train_config.get("data_digest"))
    if t.model_ref.startswith("gs://"):
        _keep_profile(settings, t.model_ref, model_dir)
    mv = ModelRegistry(settings).register(model_dir, lineage, metrics=metrics)
    return Registered(version=mv.version, uri=mv.uri)


def _keep_profile(settings: Settings, model_ref: str, model_dir: Path, *, storage_client: Any = None) -> None:
    """Keep the profile beside the trained model in the bucket (created only if absent), so a retried register,
    which materializes the model afresh on whatever worker, finds these bytes instead of computing it again: a
    profile computed again (predictions over a sample, on another CPU) may differ in its last digits, and so would
    the version's content id, registering the same model twice. An attempt that lost a race to write it takes the
    one written."""
    from google.api_core.exceptions import PreconditionFailed

    from tenfold.storage import gcs_client, split_gs_uri

    client = storage_client or gcs_client(settings)
    bucket, prefix = split_gs_uri(model_ref)
    blob = client.bucket(bucket).blob(f"{prefix}/{REFERENCE_PROFILE_FILE}")
    local = model_dir / REFERENCE_PROFILE_FILE
    try:
        blob.upload_from_filename(str(local), if_generation_match=0)
    except PreconditionFailed:
        stored = blob.download_as_bytes()
        if stored != local.read_bytes():
            atomic_write(local, stored)  # a write that failed (a full disk) leaves no tmp behind


# --- gate ---------------------------------------------------------------------------------------


NO_COMPARISON = "NO COMPARISON"  # how a gate's record says the champion could not be scored (no decision against it)


def gate(settings: Settings, run: TrainRun | Mapping[str, Any], evaluation: Evaluation | Mapping[str, Any],
         registered: Registered | Mapping[str, Any], *, registry: ModelRegistry | None = None) -> dict[str, Any]:
    """The offline gate: a version that passes it becomes ``challenger``; ``champion`` moves only by a canary.

    When there is no champion yet, the first version to pass (the floors alone) becomes both; a champion whose
    pointer is missing but whose history shows it was set is no such case, and is refused, moving no alias. Otherwise
    a passing version becomes ``challenger`` and waits for the canary rollout (``rollout_model``), which
    alone moves ``champion``; a failing one moves no alias. Returns the decision record (free-form checks,
    so a plain dict) with ``champion_now``, ``challenger_now`` and ``canary`` (a rollout should follow).
    """
    p, ev = TrainRun.from_xcom(run), Evaluation.from_xcom(evaluation)
    reg = registry or ModelRegistry(settings)
    version = Registered.from_xcom(registered).version
    evaluated = ev.champion or None
    evaluated_version = evaluated["version"] if evaluated else None
    current = reg.resolve(CHAMPION)
    # What a passing version displaces: a gate moves the challenger only from the one it read here (another run's
    # gate that moved it meanwhile wins, and this run says so).
    prior_challenger = reg.alias(CHALLENGER)

    def result(body: Mapping[str, Any], *, canary: bool = False) -> dict[str, Any]:
        return {**body, "champion_now": reg.resolve(CHAMPION), "challenger_now": reg.resolve(CHALLENGER), "canary": canary}

    holdout = HoldoutRef.from_dict(ev.holdout)
    challenger = Scored.of(version, holdout, ev.challenger)
    baselines = {name: Scored.of(f"baseline:{name}", holdout, m) for name, m in ev.baselines.items()}
    policy = gate_policy(settings)
    # A decision holds only against the champion it was made against: a run cleared from ``evaluate`` after the
    # champion moved decides again, kept under a key that names the new champion (a retry then finds it there).
    decisions = reg.decisions(version)
    key = p.run_key
    recorded = decisions.get(key)
    if recorded is not None and recorded.get("champion_version") != evaluated_version:
        key = f"{p.run_key}.vs-{evaluated_version or 'none'}"
        recorded = decisions.get(key)
    if (recorded is not None and str(recorded.get("summary", "")).startswith(NO_COMPARISON)
            and evaluated and evaluated.get("metrics") is not None):
        # The champion could not be scored then and can now (the run cleared from evaluate once the cause was fixed,
        # as the refusal says to): that record is no decision. Taken as one, the run went green saying "NO
        # COMPARISON" and a challenger worse than the champion stayed marked for the default rollout.
        key = f"{key}.scored"
        recorded = decisions.get(key)
    if evaluated and evaluated.get("metrics") is None:
        if current != evaluated_version:
            # Before the floors mark anything: judged alone beside a champion replaced since, the version was marked
            # challenger, and the default rollout took it against a champion it was never compared with.
            raise _stale_comparison(evaluated_version, current)
        # No comparison with the champion; the floors and the baselines still decide whether the version may
        # be the challenger a rollout takes by default.
        alone = decide(challenger, None, baselines, policy)
        body = {"promote": False, "challenger_version": version, "champion_version": evaluated_version,
                "checks": plain_json(alone.to_dict()).get("checks"),
                "summary": f"{NO_COMPARISON}: champion {evaluated_version} could not be scored ({evaluated.get('error')})"}
        reg.record_decision(version, key, body)
        if not alone.promote:
            raise PipelineError(
                f"{body['summary']}, and the challenger {version} fails the gate on its own ({alone.summary}): it is "
                "registered, not marked challenger and not promoted"
            )
        # From the challenger this gate read, as a comparing gate moves it: set unconditionally, it took the alias
        # from a version another run's gate compared and marked meanwhile, and the rollout that run announced then
        # took this uncompared one by default.
        marked = _mark_challenger(reg, version, p, prior_challenger,
                                  reason=f"run {p.airflow_run_id}: passed the floors and baselines; the champion could "
                                         "not be scored (NO COMPARISON)")
        raise PipelineError(
            f"{body['summary']}: the challenger {version} passes the floors and baselines, is registered and "
            f"{'marked challenger' if marked else 'left unmarked (see the log)'} but was not promoted. Compare them "
            f"by hand (`tenfold models show {version}`) and run `tenfold models promote {version}` if it is better"
        )
    first = evaluated_version is None
    if first and current is None and reg.alias_had_history(CHAMPION):
        # A champion pointer deleted (a damaged one is repaired so) is a missing champion, not the first model: by
        # the floors alone this version became champion, never compared with the real one nor canaried. Read again
        # after the history (a mover writes the pointer first): one there now was set since (another first run's
        # gate, a promote), which makes this comparison stale, as below.
        if (now := reg.resolve(CHAMPION)) is not None:
            raise _stale_comparison(None, now)
        raise _missing_champion(reg, version)
    if recorded is not None and current == (version if recorded["promote"] and first else evaluated_version):
        log.info("gate already decided for %s in run %s: %s", version, p.run_key, recorded["summary"])
        if (unmarked := decisions.get(f"{key}.not-marked")) is not None:
            # Its move lost to another run's gate, and the record says no rollout follows: a retry keeps to that, or
            # it took the alias from the version that run announced.
            return result({**recorded, "summary": f"{recorded['summary']}; {unmarked['summary']}"})
        if not recorded["promote"] or not _may_mark_challenger(reg, version, p):
            return result(recorded)
        if first:
            # Promoted, then died before marking it challenger: a run since may have evaluated against it and set
            # its own challenger, which this retry must not take back (with none set, it marks its own).
            try:
                reg.set_alias(CHALLENGER, version, expected=None, reason=f"run {p.airflow_run_id}",
                              details={"run": p.airflow_run_id})
            except AliasConflict:
                log.info("challenger is %s's since: left as it is", reg.resolve(CHALLENGER))
            return result(recorded)
        # Recorded, then died before marking it: a challenger another run set since this decision stays.
        decided_at = recorded.get("decided_at")  # absent from decisions recorded before it was kept
        if (prior_challenger is not None and prior_challenger.version != version and decided_at is not None
                and str(decided_at) < prior_challenger.updated_at):
            log.info("challenger %s was set after this run decided: left as it is", prior_challenger.version)
            return result(recorded)
        return result(recorded, canary=_mark_challenger(reg, version, p, prior_challenger))
    if current != evaluated_version:
        raise _stale_comparison(evaluated_version, current)
    if evaluated_version == version:
        # Retraining reproduced the champion byte for byte: nothing to compare, nothing to move.
        body = {"promote": False, "challenger_version": version, "champion_version": version,
                "summary": f"UNCHANGED: the challenger {version} is the champion (identical content)"}
        reg.record_decision(version, key, body)
        return result(body)
    if evaluated_version is not None and _same_model(reg, version, evaluated_version):
        # The same weights and preprocessing under another version id (its meta.json names this run's config):
        # the retrain reproduced the champion (same data, same seed); its scores are the champion's, which the
        # gate would otherwise read as the champion scored with the challenger's model.
        body = {"promote": False, "challenger_version": version, "champion_version": evaluated_version,
                "summary": f"UNCHANGED: the challenger {version} has the champion {evaluated_version}'s weights and "
                           "preprocessing (the retrain reproduced it)"}
        reg.record_decision(version, key, body)
        return result(body)

    champion = Scored.of(evaluated_version, holdout, evaluated["metrics"]) if evaluated and evaluated_version else None
    decision: Decision = decide(challenger, champion, baselines, policy)
    body = plain_json(decision.to_dict())
    body["decided_at"] = utc_stamp()  # compared with AliasPointer.updated_at
    rejected = decision.promote and not first and bool(reg.canary_rejections(version))
    if rejected:
        # The same data and seed reproduce a version byte for byte: its canary already ran, and rejected it.
        body["summary"] = (f"{body['summary']} -> not marked challenger: a canary rollout already rejected {version} "
                           f"(`tenfold models show {version}`); a rollout needs a different model")
    elif decision.promote and not first:
        body["summary"] = f"{body['summary']} -> challenger: the canary rollout (rollout_model) decides on champion"
    reg.record_decision(version, key, body)
    log.info("%s", body["summary"])
    if decision.promote and first:
        # Nothing to compare a canary with: the floors alone promote the first model. Champion before challenger:
        # of two first runs racing, the one whose compare-and-set loses (AliasConflict) must not leave its
        # version, never compared with the winner, as the challenger a rollout takes by default. (A retry
        # after a death between the two finds the decision and the champion, and marks the challenger.)
        reg.promote(version, expected=None, reason=decision.summary[:500],
                    details={"run": p.airflow_run_id, "checks": decision.checks})
        reg.set_alias(CHALLENGER, version, reason=f"run {p.airflow_run_id}: passed the offline gate",
                      details={"run": p.airflow_run_id})
        return result(body)
    marked = decision.promote and not rejected and _mark_challenger(reg, version, p, prior_challenger)
    if decision.promote and not rejected and not marked:
        # The decision above, recorded before the move (a retry reads it), says "-> challenger": what happened is
        # kept beside it, or `tenfold models show` promised a canary that nothing will run.
        note = (f"not marked challenger after all: the challenger is {reg.resolve(CHALLENGER) or 'unset'}, moved by "
                "another run's gate while this run decided; no rollout follows for this version")
        reg.record_decision(version, f"{key}.not-marked", {"summary": note, "decided_at": utc_stamp(),
                                                            "challenger_version": version,
                                                            "champion_version": evaluated_version})
        body["summary"] = f"{body['summary']}; {note}"
        log.info("%s: %s", version, note)
    return result(body, canary=marked)


def _missing_champion(reg: ModelRegistry, version: str) -> PipelineError:
    """The gate's refusal when the ``champion`` alias has no pointer but its history shows it was set."""
    last = next((h.version for h in reversed(reg.alias_history(CHAMPION))), None)
    return PipelineError(
        f"the champion alias is missing ({reg.alias_uri(CHAMPION)} holds no pointer) but its history shows it was "
        f"set{f' (last to {last})' if last else ''}: this is no first model, so {version} was neither promoted by "
        f"the floors alone nor compared with a champion. It is registered; no alias moved. Set the champion again "
        f"with `tenfold models promote <version>` (or `tenfold models rollback --to <version>`"
        f"{f', e.g. --to {last}' if last else ''}), then run train_model again")


def _stale_comparison(evaluated: str | None, current: str | None) -> AliasConflict:
    return AliasConflict(
        f"the champion moved from {evaluated or 'nothing'} to {current or 'nothing'} after this run "
        "evaluated it: the comparison is stale; trigger a new run to compare against the new champion"
    )


def announced_already(events: Iterable[Any], airflow_run_id: str, version: str) -> Any | None:
    """This run's ``challenger`` event for ``version``, when Airflow recorded one before (``events``: the Asset's recent
    events, Airflow's ``inlet_events``). A cleared run that finished finds its own gate decision and the challenger
    alias still on ``version``, so it decides ``canary`` again: announcing once more queued a second rollout of the
    version behind the first, which then failed (promoted or rejected already) or deployed the canary again."""
    return next((e for e in events_of(events, DAG_ID, airflow_run_id) if (e.extra or {}).get("version") == version),
                None)


def _mark_challenger(reg: ModelRegistry, version: str, p: TrainRun, prior: AliasPointer | None, *,
                     reason: str | None = None) -> bool:
    """Move ``challenger`` to ``version`` from ``prior`` (the pointer the gate read first), unless
    :func:`_may_mark_challenger` says no or another run's gate moved it meanwhile; whether it moved (a rollout
    should follow)."""
    if not _may_mark_challenger(reg, version, p):
        return False
    if prior is not None and prior.version == version:
        return True  # marked by an earlier try of this decision
    try:
        reg.set_alias(CHALLENGER, version, expected=prior.version if prior else None,
                      reason=reason or f"run {p.airflow_run_id}: passed the offline gate", details={"run": p.airflow_run_id})
    except AliasConflict:
        log.info("challenger moved to %s while this run decided (another run's gate): left as it is",
                 reg.resolve(CHALLENGER))
        return False
    return True


def _same_model(reg: ModelRegistry, a: str, b: str) -> bool:
    """Whether versions ``a`` and ``b`` hold the same weights and preprocessing (by their files' SHA-256) and the
    same calibration (``meta.json``'s, less its report). The calibration is fitted after training and changes no
    weight: another method (``settings.training.calibration``) on the same data and seed gave other probabilities
    under the same files, and was recorded UNCHANGED, never compared."""
    def files(version: str) -> dict[str, str]:
        return {f.path: f.sha256 for f in reg.get(version, with_lineage=False).files
                if f.path in (WEIGHTS_FILE, PREPROCESSING_FILE)}

    def calibration(version: str) -> dict[str, Any]:
        return {k: v for k, v in (reg.meta(version).get("calibration") or {}).items() if k != "report"}

    ours = files(a)
    return len(ours) == 2 and ours == files(b) and calibration(a) == calibration(b)


def _may_mark_challenger(reg: ModelRegistry, version: str, p: TrainRun) -> bool:
    """Whether a gate that runs again (a retry, or its run cleared) may still mark ``version`` challenger.

    A retry after the decision was recorded moves the alias it may not have moved yet; a run cleared later
    neither takes the alias back from a newer challenger nor marks (and announces) a version a canary rejected.
    """
    if reg.canary_rejections(version):
        log.info("a canary already rejected %s: not marked challenger again", version)
        return False
    if reg.resolve(CHALLENGER) != version and any(
            h.version == version and h.details.get("run") == p.airflow_run_id for h in reg.alias_history(CHALLENGER)):
        log.info("challenger moved on from %s since this run set it: left as it is", version)
        return False
    return True


def comparison_table(evaluation: Evaluation | Mapping[str, Any], version: str | None = None) -> str:
    """The challenger, champion and baselines side by side (what the DAG logs and ``make demo`` prints)."""
    ev = Evaluation.from_xcom(evaluation)
    rows: list[tuple[str, Mapping[str, Any]]] = [(f"challenger {version or ''}".strip(), ev.challenger)]
    if ev.champion and ev.champion.get("metrics"):
        rows.append((f"champion {ev.champion['version']}", ev.champion["metrics"]))
    if ev.challenger.get("uncalibrated"):
        rows.insert(1, ("  the challenger uncalibrated", ev.challenger["uncalibrated"]))
    rows += [(f"baseline {k}", v) for k, v in ev.baselines.items()]
    lines = [f"{'model':<44}{'auc':>8}{'log_loss':>10}{'brier':>8}{'ece':>8}"]
    lines += [f"{name:<44}{m['auc']:>8.4f}{m['log_loss']:>10.4f}{m['brier']:>8.4f}"
              + (f"{m['ece']:>8.4f}" if isinstance(m.get("ece"), (int, float)) else f"{'-':>8}") for name, m in rows]
    calibrator = ev.challenger.get("calibrator")
    if calibrator:
        lines.append(f"challenger calibration: {calibrator.get('description')} (fitted on the validation slice)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Every step in this process, without Airflow (the run conf as the DAG takes it)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tenfold.pipelines.train_model", description=main.__doc__)
    parser.add_argument("--conf", default="{}", help=f"JSON run conf with any of {', '.join(CONF_KEYS)}")
    parser.add_argument("--run-id", default=None, help="default: manual__<UTC time>")

    def body(settings: Settings, args: argparse.Namespace) -> int:
        run_id = args.run_id or f"manual__{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%S}"
        from tenfold.training.errors import TrainingFailed

        planned = plan(settings, run_id, args.conf)
        try:
            trained = train(settings, planned)
        except (TrainingFailed, ValueError) as exc:  # a timeout is a TimeoutError, a rank's failure no code fault:
            raise PipelineError(str(exc)) from exc  # said as they are (with the log), not as an outage or a bug
        evaluation = evaluate(settings, planned, trained)
        registered = register(settings, planned, trained, evaluation)
        decision = gate(settings, planned, evaluation, registered)
        print(comparison_table(evaluation, registered.version))
        print(decision["summary"])
        return 0

    return run_main(parser, argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
