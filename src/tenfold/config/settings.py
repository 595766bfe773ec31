"""Typed settings for each environment: the only place where resource names are spelled.

The environment is chosen once, by ``TENFOLD_ENV`` (``local``, ``dev`` or ``prod``; default
``local``), in :func:`get_settings`: the one place that reads ``os.environ``. :func:`build_settings`
takes the process environment as an explicit mapping (parsed by :class:`EnvironSettings`), so the
same inputs always give the same settings. Everything else receives a :class:`Settings` as an argument.
Names are derived from one prefix per environment so that a rename is a one-line change, and every
name is validated against Google Cloud's naming rules when the settings are built.

This module imports nothing heavy (pydantic only): the Makefile, the DAG files and shell scripts
read it through ``tenfold config get KEY``.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from tenfold.config.names import (
    BucketName,
    ProjectId,
    PubSubName,
    ResourceName,
    RoleId,
    ServiceAccountId,
    check_project_id,
)
from tenfold.config.pipelines import DagSettings, PipelineSettings, check_months
from tenfold.config.serving import FIXED_PATHS, URL_PATH, FleetSettings, RolloutSettings, ServerSettings

Env = Literal["local", "dev", "prod"]
# The lake table the feature job publishes and training reads (``storage.features_table``'s default);
# processes started without settings (the Spark job, torchrun ranks) default to it too.
FEATURES_TABLE = "features"
# The reference workload (tenfold.workloads.flights); ``settings.workload`` chooses another.
DEFAULT_WORKLOAD = "flights"
ENVIRONMENTS: tuple[Env, ...] = ("local", "dev", "prod")


class _Frozen(BaseModel):
    # No inf or NaN: pydantic takes "inf" for a float, which a bound such as gt=0 lets through (a timeout that never
    # ends, or an OverflowError where it is made an int).
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class KmsSettings(_Frozen):
    key_ring: ResourceName
    storage_key: ResourceName
    pubsub_key: ResourceName
    # Secret Manager's key (the serving token's secret): each service's agent may use only its own key.
    secrets_key: ResourceName
    rotation_period: str = "7776000s"  # 90 days


class LakeLayout(_Frozen):
    """Folders of the lake besides its tables (see :mod:`tenfold.data.lake`), and how long the bucket keeps them.

    The lake, the Dataproc batch and the lake bucket's lifecycle rules all read these, so a rename here
    moves all three together.
    """

    staging: str = "_staging"  # <staging>/<table>/year=/month=/<attempt>/: written before validation
    quarantine: str = "quarantine"  # <quarantine>/<table>/year=/month=/<attempt>/: refused batches
    staging_retention_days: int = Field(default=7, ge=1)
    quarantine_retention_days: int = Field(default=30, ge=1)

    @field_validator("staging", "quarantine")
    @classmethod
    def _one_folder(cls, value: str) -> str:
        if not value or "/" in value or value in (".", ".."):
            raise ValueError(f"lake layout folder {value!r}: use one non-empty path segment (no '/')")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> LakeLayout:
        if self.staging == self.quarantine:
            raise ValueError("lake layout: staging and quarantine must be different folders")
        return self

    def staging_dir(self, table: str, *parts: str) -> str:
        """``<staging>/<table>/<parts...>``, relative to the lake root."""
        return "/".join((self.staging, table, *parts))

    def quarantine_dir(self, table: str, *parts: str) -> str:
        """``<quarantine>/<table>/<parts...>``, relative to the lake root."""
        return "/".join((self.quarantine, table, *parts))

    @property
    def retention_days(self) -> dict[str, int]:
        """Bucket lifecycle: object-name prefix -> days after which objects under it are deleted."""
        return {f"{self.staging}/": self.staging_retention_days, f"{self.quarantine}/": self.quarantine_retention_days}


_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class StorageSettings(_Frozen):
    lake_bucket: BucketName
    models_bucket: BucketName
    artifacts_bucket: BucketName
    dataproc_staging_bucket: BucketName
    tf_state_bucket: BucketName
    # Where the lake lives, as a Hadoop-style URI that Spark, pyarrow and the DAGs all accept:
    # file:// on one machine (Spark's GCS connector cannot be downloaded offline), gs:// in the cloud.
    lake_uri: str
    # GCS endpoint override; set only for the local emulator.
    emulator_host: str | None = None
    # The registry's folder in the models bucket (TENFOLD_STORAGE__REGISTRY_PREFIX): lowercase path parts, no dots.
    registry_prefix: str = Field(default="registry", pattern=r"^[a-z0-9][a-z0-9_-]*(/[a-z0-9][a-z0-9_-]*)*$")
    # The feature table every workload publishes to (the platform's, not a workload's, name).
    features_table: str = FEATURES_TABLE
    # What build_features publishes beside the features for online assembly (one table per lookup:
    # ``<lookups_table>_<name>``), versioned with the feature definition.
    lookups_table: str = "lookups"
    # The feedback loop (tenfold.feedback): sampled predictions, observed outcomes, and their join.
    predictions_table: str = "predictions"
    feedback_table: str = "feedback"
    labelled_table: str = "labelled"
    # Offline inference's output: one row per scored features row (tenfold.inference).
    scores_table: str = "scores"
    lake_layout: LakeLayout = LakeLayout()
    kms: KmsSettings

    @model_validator(mode="after")
    def _tables(self) -> StorageSettings:
        """Each table a folder of the lake of its own: one path segment, distinct, never a layout folder."""
        names = {f: getattr(self, f) for f in type(self).model_fields if f.endswith("_table")}
        for field, name in names.items():
            if not _TABLE_NAME.fullmatch(name):
                raise ValueError(f"storage.{field}={name!r}: a table is one lowercase name ([a-z][a-z0-9_]*), e.g. "
                                 "tiny_features")
        taken = {*names.values()}
        if len(taken) < len(names) or taken & {self.lake_layout.staging, self.lake_layout.quarantine}:
            raise ValueError(f"storage tables {sorted(names.values())} must differ from each other and from the lake's "
                             f"{self.lake_layout.staging!r} and {self.lake_layout.quarantine!r} folders")
        return self

    def table_uri(self, table: str) -> str:
        """The URI of a lake table, e.g. ``gs://<lake bucket>/features``."""
        return f"{self.lake_uri.rstrip('/')}/{table}"

    def registry_object(self, *parts: str) -> str:
        """An object name in the models bucket under ``registry_prefix``, e.g. ``registry/aliases/champion``."""
        return "/".join((self.registry_prefix.strip("/"), *parts))

    def alias_uri(self, alias: str) -> str:
        """The registry's pointer object for ``alias``: also the Airflow Asset URI of that alias's events."""
        return f"gs://{self.models_bucket}/{self.registry_object('aliases', alias)}"


class SubscriptionSettings(_Frozen):
    name: PubSubName
    topic: PubSubName
    dead_letter_topic: PubSubName
    dead_letter_subscription: PubSubName
    ack_deadline_s: int = Field(default=60, ge=10, le=600)
    max_delivery_attempts: int = Field(default=5, ge=5, le=100)
    min_retry_backoff_s: int = Field(default=10, ge=0, le=600)
    max_retry_backoff_s: int = Field(default=600, ge=0, le=600)

    @model_validator(mode="after")
    def _backoff_rises(self) -> SubscriptionSettings:
        """Pub/Sub's retry policy backs off from the minimum to the maximum: the other way round went to
        create_subscription (and the stacks) as given."""
        if self.min_retry_backoff_s > self.max_retry_backoff_s:
            raise ValueError(f"subscription {self.name}: min_retry_backoff_s {self.min_retry_backoff_s} is above "
                             f"max_retry_backoff_s {self.max_retry_backoff_s}: give min <= max")
        return self


class MessagingSettings(_Frozen):
    requests_topic: PubSubName
    predictions_topic: PubSubName
    feedback_topic: PubSubName
    subscriptions: dict[str, SubscriptionSettings]
    emulator_host: str | None = None  # host:port, local only

    @model_validator(mode="before")
    @classmethod
    def _drop_retired(cls, data: Any) -> Any:
        """Settings files written before the model-updates topic was retired (a running fleet's
        ``fleet-settings.json``) still read: the topic and its subscription are dropped, not refused."""
        if isinstance(data, dict) and "model_updates_topic" in data:
            data = {k: v for k, v in data.items() if k != "model_updates_topic"}
            if isinstance(data.get("subscriptions"), dict):
                data["subscriptions"] = {k: v for k, v in data["subscriptions"].items() if k != "model_updates"}
        return data

    @property
    def topics(self) -> list[str]:
        """Every topic, dead-letter topics included, in a stable order."""
        names = [self.requests_topic, self.predictions_topic, self.feedback_topic]
        for sub in self.subscriptions.values():
            names.append(sub.dead_letter_topic)
        return list(dict.fromkeys(names))


class NetworkSettings(_Frozen):
    network: ResourceName
    subnet: ResourceName
    subnet_cidr: str = "10.10.0.0/20"
    router: ResourceName
    nat: ResourceName
    # Instance network tags the firewall rules target: serving VMs (health checks, LB), SSH via IAP, and the two
    # kinds of VM that reach each other inside the subnet: training nodes (torchrun's rendezvous, NCCL) among
    # themselves, and Dataproc Serverless's driver and executors among themselves (the batch's network_tags).
    serving_tag: ResourceName
    ssh_tag: ResourceName
    training_tag: ResourceName
    dataproc_tag: ResourceName


class ServiceAccounts(_Frozen):
    serving: ServiceAccountId
    training: ServiceAccountId
    inference: ServiceAccountId
    feedback: ServiceAccountId
    dataproc: ServiceAccountId
    composer: ServiceAccountId


class SparkSettings(_Frozen):
    master: str = "local[2,4]"  # 2 cores, 4 task attempts: plain local[N] never retries a task
    driver_memory: str = "2g"
    shuffle_partitions: int = 8
    # The local driver JVM's options. C1 only (-XX:TieredStopAtLevel=1): a month's job in a fresh JVM spends
    # about half the CPU (no C2 compilations) and finishes sooner, but a long job over much data runs ~25%
    # slower (bench/RESULTS.md, features): drop the flag for big local jobs.
    driver_java_options: str = "-XX:+UseSerialGC -Xss4m -XX:TieredStopAtLevel=1"
    # Class-data sharing for the local driver JVM: the first job writes an archive of the classes it loaded
    # (~190 MB, once per Java, Spark and options, beside the venv) and every later job maps it instead of
    # loading and verifying them again (tenfold.features.submit.class_sharing).
    class_sharing: bool = True
    # Dataproc Serverless runtime 3.0 ships Spark 4, the major version the jobs are written for.
    dataproc_runtime_version: str = "3.0"
    dataproc_batch_prefix: ResourceName
    # Where spark_jobs/ and the zipped tenfold package are staged in the Dataproc staging bucket.
    dataproc_code_prefix: str = "code"


class AssetUris(_Frozen):
    """Airflow Asset URIs: the events that chain the DAGs (features -> drift -> training -> rollout)."""

    features: str
    challenger: str
    champion: str
    # monitor_drift's event when drift crosses the threshold on a triggering feature (train_model runs on it).
    drift: str

    @classmethod
    def of(cls, storage: StorageSettings, drift_reports: str = "reports/drift") -> AssetUris:
        """Derived, never set: the features table's URI, the registry's alias pointer objects and the lake
        folder of the drift reports (``monitoring.drift.reports_prefix``)."""
        return cls(features=storage.table_uri(storage.features_table),
                   challenger=storage.alias_uri("challenger"), champion=storage.alias_uri("champion"),
                   drift=storage.table_uri(drift_reports.strip("/")))


class AirflowSettings(_Frozen):
    gcp_conn_id: str = "google_cloud_default"
    admin_user: str = "admin"
    composer_enabled: bool = False
    composer_environment: ResourceName
    # The DAGs use the Airflow 3 SDK (airflow.sdk), so Composer 3 must run an Airflow 3 build.
    composer_image_version: str = "composer-3-airflow-3.1.0"


# Accelerators that Compute Engine attaches only to one machine family (a mismatch fails only at deploy).
_GPU_MACHINE_FAMILIES = {"nvidia-l4": "g2-", "nvidia-tesla-a100": "a2-", "nvidia-a100-80gb": "a2-",
                         "nvidia-h100-80gb": "a3-", "nvidia-h100-mega-80gb": "a3-", "nvidia-h200-141gb": "a3-"}


class GpuGroupSettings(_Frozen):
    """A managed instance group of (optionally GPU) VMs."""

    instance_group: ResourceName
    instance_template: ResourceName
    machine_type: str = Field(pattern=r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$")  # e.g. g2-standard-8
    accelerator_type: str | None = None
    accelerator_count: int = Field(default=0, ge=0, le=8)
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=1, ge=0)
    spot: bool = False
    disk_size_gb: int = Field(default=100, ge=10, le=65536)  # the boot disk holds the COS image (10 GB)
    # Container-Optimized OS: runs the tenfold image; `cos-extensions install gpu` adds the driver.
    source_image: str = "projects/cos-cloud/global/images/family/cos-stable"
    # Zones of the region the group may use (suffixes): those that offer its GPU (L4: us-central1-a/b/c).
    zone_suffixes: tuple[str, ...] = ("a", "b", "c")
    # EVEN spreads serving over the zones; ANY_SINGLE_ZONE keeps a training job's nodes together (NCCL
    # traffic); BALANCED puts spot inference workers where there is capacity first. Only EVEN and BALANCED may be
    # autoscaled (Compute Engine's rule: infra.components.gpu_fleet refuses the others with an autoscaler).
    target_shape: Literal["EVEN", "BALANCED", "ANY", "ANY_SINGLE_ZONE"] = "EVEN"

    @model_validator(mode="after")
    def _bounds(self) -> GpuGroupSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"{self.instance_group}: min_replicas exceeds max_replicas")
        if bool(self.accelerator_type) != (self.accelerator_count > 0):
            raise ValueError(f"{self.instance_group}: set accelerator_type and accelerator_count together")
        family = _GPU_MACHINE_FAMILIES.get(self.accelerator_type or "")
        if family and not self.machine_type.startswith(family):
            raise ValueError(f"{self.instance_group}: {self.accelerator_type} GPUs attach only to {family}* machine "
                             f"types, not {self.machine_type} (e.g. {family}standard-8 for an L4)" if family == "g2-"
                             else f"{self.instance_group}: {self.accelerator_type} GPUs attach only to {family}* "
                             f"machine types, not {self.machine_type}")
        return self


class TrainingSettings(_Frozen):
    backend: Literal["gloo", "nccl"] = "gloo"
    nproc_per_node: int = Field(default=2, ge=1)
    nnodes: int = Field(default=1, ge=1)
    rdzv_port: int = Field(default=29400, ge=1, le=65535)
    # Multi-node c10d rendezvous host (the first training VM); None with nnodes == 1 (a file rendezvous on the machine).
    rdzv_host: str | None = None
    max_restarts: int = Field(default=1, ge=0)
    # train_model's train task's own Airflow retries (not settings.pipelines.train_model.retries: one try can take up
    # to the job's bound on the GPU group); a retry resumes from the newest checkpoint.
    task_retries: int = Field(default=1, ge=0)
    checkpoint_every: int = Field(default=50, ge=1)
    keep_checkpoints: int = Field(default=3, ge=0)
    # Bounds so a training job never hangs: the whole torchrun job, and each collective/store wait.
    job_timeout_s: int = Field(default=3600, ge=10)
    collective_timeout_s: int = Field(default=120, ge=5)
    fleet: GpuGroupSettings
    # Months (YYYY-MM, inclusive) of the reference time-based split.
    train_months: tuple[str, str] = ("2013-01", "2013-09")
    holdout_months: tuple[str, str] = ("2013-10", "2013-12")
    # The train_model DAG's default (rolling) split over what is published: the newest months are
    # the holdout (up to holdout_window, and at most a quarter of the run), up to train_window before.
    holdout_window: int = Field(default=3, ge=1)
    train_window: int = Field(default=9, ge=1)
    # Model quality (docs/training.md): the newest validation_days of the training window, by time, are
    # the validation slice that early stopping, the epoch choice and the calibration use (the holdout
    # stays untouched for the gate); 0 turns it off. max_epochs is a ceiling; None patience never stops early.
    max_epochs: int = Field(default=10, ge=1)
    early_stopping_patience: int | None = Field(default=2, ge=1)
    validation_days: float = Field(default=14.0, ge=0)
    # A categorical value seen in fewer rows of the training window than this is fit as the out-of-vocabulary
    # value (docs/training.md): the OOV embedding is then trained (on rare values) for the values a model meets
    # only later, a new destination or carrier, which otherwise get its untrained random initial row.
    vocabulary_min_count: int = Field(default=20, ge=1)
    # tenfold.model.calibration.METHODS
    calibration: Literal["none", "temperature", "anchored_temperature", "isotonic"] = "anchored_temperature"
    # The model scored on the slice, kept and saved is the exponential moving average of the trained weights
    # over about this many epochs (torch.optim.swa_utils); 0 keeps the raw weights.
    average_epochs: float = Field(default=1.0, ge=0, le=10)
    # Retraining with feedback (docs/feedback.md): the labelled set of the feedback join whose served flights
    # fall in the training window joins the features rows, each such row counting feedback_weight features
    # rows in the loss; 0 leaves feedback out (the run is then exactly one without it). At most
    # feedback_max_rows of them (the latest observed) are used; the run conf's feedback_weight overrides.
    feedback_weight: float = Field(default=1.0, ge=0, le=100)
    feedback_max_rows: int = Field(default=200_000, ge=1)
    # The offline gate against the champion: the challenger's AUC minus the champion's must be at least this.
    # Negative is non-inferiority: with a canary rollout after the gate (rollout_model judges the challenger
    # on live traffic and alone moves champion), a retrained model on newer data goes out unless it is worse
    # offline by more than this. Positive: it must beat the champion.
    promote_margin: float = Field(default=-0.005, ge=-0.05, le=0.2)
    # Absolute floors of the promotion gate (tenfold.registry.gate), champion or not.
    gate_min_auc: float = Field(default=0.55, ge=0, le=1)
    gate_max_log_loss: float | None = None
    # The baselines a challenger must beat; None: every baseline the workload defines itself (the flights workload:
    # "rate"), so a workload of its own needs no setting; () beats none (the platform's "hgb" is only reported).
    gate_beat_baselines: tuple[str, ...] | None = None
    # Probabilities, not only ranking: against each gate_beat_baselines baseline the challenger's log loss
    # and Brier score may exceed the baseline's by at most these margins (0: no worse).
    gate_baseline_log_loss_margin: float = Field(default=0.0, ge=0)
    gate_baseline_brier_margin: float = Field(default=0.0, ge=0)
    # How much worse than the champion's log loss a challenger's may be; an optional ceiling on holdout ECE.
    gate_max_log_loss_increase: float = Field(default=0.01, ge=0)
    gate_max_ece: float | None = Field(default=None, gt=0)
    # Scheduled retraining, the baseline (train_model also runs on every drift Asset event): Mondays 03:00 UTC.
    retrain_cron: str = "0 3 * * 1"

    @field_validator("retrain_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        """Airflow parses the DAG with any text here and fails only when it computes the next run: the weekly retrain
        then never ran, with the DAG looking fine. croniter is Airflow's own parser (absent where Airflow is not)."""
        try:
            from croniter import croniter
        except ImportError:  # pragma: no cover - an install without Airflow never schedules it
            return value
        if not croniter.is_valid(value):
            raise ValueError(f"TENFOLD_TRAINING__RETRAIN_CRON {value!r} is not a cron expression: give five fields, "
                             "minute hour day-of-month month day-of-week, such as '0 3 * * 1' (Mondays 03:00 UTC)")
        return value
    # Cloud runs (tenfold.training.fleet): torchrun's entry module on the training fleet, where each
    # run's completion marker lands in the artifacts bucket, and bounds on every wait.
    entry_module: str = "tenfold.training.worker"
    runs_prefix: str = "training/runs"
    stable_timeout_s: int = Field(default=1800, gt=0)
    run_timeout_s: int = Field(default=6 * 3600, gt=0)
    poll_interval_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _months(self) -> TrainingSettings:
        for name in ("train_months", "holdout_months"):
            first, last = getattr(self, name)
            check_months(f"{name}[0]", first, f"{name}[1]", last)
        return self


class LoadBalancerSettings(_Frozen):
    address: ResourceName
    # Readiness (serving.server.ready_path): the backend services route only to replicas that pass it, so
    # a replica still loading its model or draining on SIGTERM gets no new requests.
    health_check: ResourceName
    # Liveness (serving.health_path): the serving groups' autohealing recreates a VM whose replica fails it.
    autohealing_check: ResourceName
    stable_backend: ResourceName
    canary_backend: ResourceName
    url_map: ResourceName
    http_proxy: ResourceName
    forwarding_rule: ResourceName
    domain: str | None = None  # a DNS name (api.example.com): the managed certificate's

    @field_validator("domain")
    @classmethod
    def _dns_name(cls, value: str | None) -> str | None:
        """A URL or a name with a port went into the managed certificate, and failed only at ``cdktn deploy``."""
        label = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
        if value is not None and (not re.fullmatch(rf"({label}\.)+{label}", value) or len(value) > 253
                                  or value.rsplit(".", 1)[-1].isdigit()):  # an IP address: no certificate names it
            raise ValueError(f"TENFOLD_SERVING__LOAD_BALANCER__DOMAIN {value!r}: give a lowercase DNS name such as "
                             "api.example.com (no scheme, path, port or IP address)")
        return value
    cloud_armor_policy: ResourceName | None = None
    # With a Cloud Armor policy: requests a minute one client address may send (counted on each backend service)
    # before it gets 429 (0: no limit).
    # The token is checked in the replica, so without it a flood of unauthenticated requests still counts toward
    # the backends' rate and scales the GPU groups out to their maximum.
    # TENFOLD_SERVING__LOAD_BALANCER__RATE_LIMIT_PER_IP_PER_MINUTE sets it.
    rate_limit_per_ip_per_minute: int = Field(default=6000, ge=0)

    @field_validator("rate_limit_per_ip_per_minute", mode="before")
    @classmethod
    def _whole_requests(cls, value: Any) -> Any:
        """Named by its variable: pydantic's "Input should be a valid integer" named only the field."""
        if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"TENFOLD_SERVING__LOAD_BALANCER__RATE_LIMIT_PER_IP_PER_MINUTE {value!r}: give a whole "
                             "number of requests a minute one client address may send, e.g. 20000 (0: no limit)")
        return value
    # The sticky split in the cloud (docs/rollout-cloud.md): a client that sends its bucket
    # (tenfold.rollout.split.bucket_of of its user key, 0-99) in this header stays on one arm; the URL map
    # matches it with rangeMatch. Requests without it get the weighted (not sticky) split.
    bucket_header: str = Field(default="X-Tenfold-Bucket", pattern=r"^[A-Za-z0-9-]+$")
    # Bound on waiting for one Compute operation (a URL map patch, an instance template insert).
    operation_timeout_s: int = Field(default=300, ge=10)


class ServingSettings(_Frozen):
    port: int = 8080
    health_path: str = Field(default="/healthz", pattern=URL_PATH)
    # Secret Manager secret (data stack, no version: operators add one, docs/deploy.md) whose latest version
    # the cloud replicas' startup script writes to the bearer token file (tenfold.fleets).
    token_secret: ResourceName
    # Autohealing waits this long after a VM starts before liveness counts: GPU driver install, image pull,
    # token fetch and container start. The model then loads behind a /healthz that already answers 200.
    autohealing_initial_delay_s: int = Field(default=600, ge=0, le=3600)
    stable_fleet: GpuGroupSettings
    canary_fleet: GpuGroupSettings
    # A cloud deploy (tenfold.rollout.cloud) waits this long for a pool's group to serve a new template:
    # surge VMs boot (GPU driver, image, model), pass readiness, and the old ones go, zone by zone.
    deploy_timeout_s: int = Field(default=3600, ge=60)
    deploy_poll_s: float = Field(default=20.0, gt=0)
    target_utilization: float = Field(default=0.7, gt=0, le=1)
    # Requests per second one serving VM is sized for: the cloud load balancer's RATE capacity per instance, of
    # which the autoscaler keeps target_utilization in use (CPU utilisation, the other mode, barely moves on a GPU
    # replica). The default is from a CPU benchmark (bench/RESULTS.md: one CPU replica answers ~3,000 req/s at p99
    # 17 ms): measure it on the serving groups' GPU machine type before relying on the autoscaler (docs/serving.md).
    replica_max_rate: float = Field(default=1000.0, gt=0)
    load_balancer: LoadBalancerSettings
    server: ServerSettings = ServerSettings()
    # The local fleet behind HAProxy (``tenfold serve``); the cloud one is stable_fleet/canary_fleet.
    fleet: FleetSettings = FleetSettings()
    # The canary analysis of the rollout_model DAG (local and cloud alike).
    rollout: RolloutSettings = RolloutSettings()

    @model_validator(mode="after")
    def _own_paths(self) -> ServingSettings:
        """Liveness, readiness and metrics each at a path of their own, outside the API and the server's fixed paths:
        the router answers one of two routes at a path, and the load balancer would health-check (or Prometheus
        scrape) the other's answer."""
        server = self.server
        paths = {"serving.health_path": self.health_path, "serving.server.ready_path": server.ready_path,
                 "serving.server.metrics_path": server.metrics_path}
        if len(set(paths.values())) < len(paths):
            raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in paths.items())}: give each its own path")
        for field, path in paths.items():
            if path in FIXED_PATHS or path == server.api_prefix or path.startswith(server.api_prefix + "/"):
                raise ValueError(f"{field}={path!r} is a path the server answers already (the API under "
                                 f"{server.api_prefix}, {', '.join(FIXED_PATHS)}): give it one of its own")
        return self

    @model_validator(mode="after")
    def _canary_can_take_stables_load(self) -> ServingSettings:
        if self.canary_fleet.max_replicas < self.stable_fleet.max_replicas:
            raise ValueError(
                f"serving.canary_fleet.max_replicas ({self.canary_fleet.max_replicas}) is below "
                f"serving.stable_fleet.max_replicas ({self.stable_fleet.max_replicas}): a rollout's last step sends "
                "every user to the canary group, so it must be able to grow as large (docs/rollout-cloud.md); set "
                "TENFOLD_SERVING__CANARY_FLEET__MAX_REPLICAS too")
        return self


class InferenceSettings(_Frozen):
    """Offline inference over Pub/Sub (tenfold.inference, docs/inference.md)."""

    fleet: GpuGroupSettings
    backlog_per_worker: int = 1000  # autoscaler target: undelivered messages per worker
    # The model a batch_inference run scores with unless its conf pins a version.
    model_ref: str = "champion"
    workers: int = Field(default=2, ge=1, le=64)  # the local pool (the cloud's is the instance group)
    rows_per_message: int = Field(default=2000, ge=1, le=100_000)  # feature rows per request message
    # How a request's Arrow body is compressed: zstd shrinks real flights features ~9x (a 10,000-row request
    # ~250 KB instead of 2.3 MB) for ~0.4 us a row each way; bytes are what Pub/Sub moves and bills.
    request_compression: Literal["zstd", "lz4", "none"] = "zstd"
    # Flow control of each worker's pulls: messages (and bytes) held but not yet acknowledged.
    max_messages: int = Field(default=8, ge=1)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Leases are extended while a batch is scored, for at most this long (since the message was pulled).
    max_lease_s: float = Field(default=3600.0, gt=0)
    # The longest single lease extension (seconds, 10-600; 0: the subscription's ack deadline).
    lease_extension_s: int = Field(default=0, ge=0, le=600)
    handler_threads: int = Field(default=2, ge=1)  # messages one worker handles at once
    # How long a worker retries loading a model while the object store or its disk fails (the message's lease
    # is kept meanwhile) before it gives the delivery back: an outage must not dead-letter the requests.
    transient_retry_s: float = Field(default=300.0, ge=0)
    torch_threads: int = Field(default=1, ge=1)  # intra-op threads per worker process
    # Above this many rows a partition is scored by the Spark bulk path (tenfold.inference.spark).
    spark_threshold_rows: int = Field(default=5_000_000, ge=0)
    # The share of a month's requests that may end dead-lettered with its other scores still published. 0: a month
    # with any dead letter publishes nothing (its scores partition keeps what it had) until they are replayed.
    max_dead_lettered_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    # A run waits this long for every request to be scored or dead-lettered, logging every progress_s.
    wait_timeout_s: int = Field(default=3600, gt=0)
    progress_s: float = Field(default=10.0, gt=0)
    poll_interval_s: float = Field(default=0.5, gt=0)
    # The runs' working folder in the lake (results per request, errors, dead letters).
    # Where a worker scores: "auto" = the GPU when torch sees one (the cloud fleet's L4), else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    work_prefix: str = "_inference"


class FeedbackSettings(_Frozen):
    """The feedback sink (tenfold.feedback, docs/feedback.md): in the cloud, ``fleet`` runs ``tenfold feedback sink``
    for the VM's life (locally it runs beside the serving fleet)."""

    fleet: GpuGroupSettings
    # Feedback received up to this many months after its prediction's month joins it. Every join (the sink's, the
    # CLI's, the canary's window, the metrics) uses this one value: a join with another would be undone by the next.
    horizon_months: int = Field(default=2, ge=0, le=24)


class DriftSettings(_Frozen):
    """The drift monitor (``tenfold.monitoring.drift``, the ``monitor_drift`` DAG; docs/drift.md)."""

    # Population stability index over the reference deciles: at or over psi_report a feature is reported,
    # at or over psi_drift it has drifted (the usual 0.1 / 0.25).
    psi_report: float = Field(default=0.1, gt=0)
    psi_drift: float = Field(default=0.25, gt=0)
    # A drifted PSI counts only when the KS (numeric) or chi-square (categorical) test agrees at this level:
    # PSI ignores the sample size, so a small partition's noise alone never fires.
    alpha: float = Field(default=0.01, gt=0, lt=1)
    bins: int = Field(default=10, ge=2, le=100)
    # The profile keeps a seeded sample of each numeric feature for the KS test, and scores at most this
    # many training rows for the reference prediction distribution.
    ks_sample_rows: int = Field(default=1000, ge=50)
    prediction_rows: int = Field(default=50_000, ge=100)
    # A partition with fewer rows is reported as too small to judge.
    min_rows: int = Field(default=200, ge=1)
    # Which drifted features trigger retraining: every feature except the workload's report-only ones
    # (FeatureContract.drift_report_only, e.g. weather); report_only replaces that list when set, and the
    # features in trigger always trigger. The prediction distribution triggers only with predictions_trigger.
    report_only: tuple[str, ...] | None = None
    trigger: tuple[str, ...] = ()
    predictions_trigger: bool = False
    # Where each partition's report goes: <lake>/<reports_prefix>/year=YYYY/month=M/report.{json,html}.
    reports_prefix: str = "reports/drift"

    @model_validator(mode="after")
    def _ordered(self) -> DriftSettings:
        if self.psi_report >= self.psi_drift:
            raise ValueError(f"drift: psi_report ({self.psi_report}) must be below psi_drift ({self.psi_drift})")
        return self


# Where a plain http:// webhook may be: this machine, or a private network's address (RFC 1918, carrier-grade NAT as
# private overlays use it, IPv6 unique local). Not ``is_private``, which also takes tunnels across the internet
# (Teredo's 2001::/32) and leaves out 100.64/10.
_PRIVATE_NETWORKS = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "::1/128",
                     "fc00::/7")


def private_host(host: str) -> bool:
    """``localhost``, or an IP address of this machine or of a private network (:data:`_PRIVATE_NETWORKS`); a name
    is not (where it resolves is not known here)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in map(ipaddress.ip_network, _PRIVATE_NETWORKS)
               if network.version == address.version)


def webhook_problem(url: str) -> str | None:
    """Why ``url`` cannot be the alert webhook (None when it can), said without the URL: it is a secret, and urllib's
    own errors quote it whole. Checked when the settings load, and again by the webhook hook before it posts."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # an unbalanced "[" in the host
        parts, host = None, None
    # A space or a control character: http.client refuses it quoting the path escaped (repr), which the log's
    # scrubbing could not find, so the secret went to the log on every alert.
    if parts is None or parts.scheme not in ("http", "https") or not host or any(
            c.isspace() or ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return ("TENFOLD_ALERT_WEBHOOK is not an http(s) URL with a host (a scheme missing, a space or a control "
                "character): fix the variable")
    # http.client fails each post on these (InvalidURL, UnicodeEncodeError): the hook was down for good, found at the
    # first alert.
    try:
        port = parts.port
    except ValueError:  # not a number, or outside 0-65535
        port = 0
    if port == 0:
        return "TENFOLD_ALERT_WEBHOOK has a port that is not a number from 1 to 65535: fix the variable"
    # The host is IDNA-encoded by http.client (and the socket); the path and query go on the wire as they are.
    if not url.replace(parts.netloc, "", 1).isascii():
        return ("TENFOLD_ALERT_WEBHOOK holds a character outside ASCII in its path or query: give it percent-encoded, "
                "as the service that issued it shows it")
    if parts.scheme == "http" and not private_host(host):
        # A Slack-style hook's secret is its path: posted over plain http it crossed the internet in clear text,
        # alert after alert, with nothing said. The host is not the secret, so it is named.
        return (f"TENFOLD_ALERT_WEBHOOK is a plain http:// URL to {host}: its secret would cross the network "
                "unencrypted; use its https:// form (http:// is taken for a hook on this machine or at a private IP "
                "address, such as an internal Alertmanager)")
    return None


class MonitoringSettings(_Frozen):
    # A refusal never quotes what it got (pydantic's input_value): a webhook URL is a secret, and a relay given as
    # user:password@host held one too, which went to every command's error and to Airflow's DAG import errors.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True, allow_inf_nan=False)

    notification_email: str
    p99_latency_ms: int = 250
    error_rate_5xx: float = 0.01
    dead_letter_backlog: int = 1
    oldest_unacked_age_s: int = 900
    drift: DriftSettings = DriftSettings()
    # Custom metric the drift monitor writes in dev and prod (tenfold.monitoring.cloud_metrics); the drift alert
    # policy watches it (threshold: drift_psi). Per environment (its prefix): one descriptor per project.
    drift_metric: str = "custom.googleapis.com/tenfold/feature_psi"
    # Alert hooks besides the log (tenfold.monitoring.alerts); none by default, set from the
    # environment because a webhook URL is a secret: TENFOLD_ALERT_WEBHOOK (Slack-compatible),
    # TENFOLD_ALERT_SMTP_HOST (e-mail to notification_email), TENFOLD_ALERT_FILE (JSON lines; a relative path is
    # taken from the working directory of the process that builds the settings and kept absolute).
    # The webhook URL is a SecretStr: repr, str and model_dump(_json) show ********** (a settings file written for a
    # child never holds it); only .get_secret_value() gives the URL, where a hook posts or a child's variable is set.
    alert_webhook_url: SecretStr | None = None
    alert_smtp_host: str | None = None
    alert_file: Path | None = None
    # Great Expectations Data Docs: <local.home>/<prefix> locally, gs://<artifacts bucket>/<prefix> in the cloud.
    data_docs_prefix: str = "data_docs"
    # The Airflow task failures that alerted, one small object per try under <lake>/<alert_records_prefix>/: a DAG's
    # failure callback alerts for a failed try with none, whose process was killed (SIGKILL, the OOM killer) or lost
    # before its own failure callback ran (tenfold.monitoring.alerts). Not a table's name: "_" starts none.
    alert_records_prefix: str = "_alerts"

    @property
    def drift_psi(self) -> float:
        """The cloud drift alert's PSI threshold: the monitor's own ``drift.psi_drift``, so both agree."""
        return self.drift.psi_drift

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook(cls, value: SecretStr | None) -> SecretStr | None:
        """Refused when the settings load: found at the first alert (months later, perhaps), it failed that alert
        alone, into the log, and the drift monitor's task for an alert not delivered."""
        if value is not None and (problem := webhook_problem(value.get_secret_value())) is not None:
            raise ValueError(problem)
        return value

    @field_validator("notification_email")
    @classmethod
    def _address(cls, value: str) -> str:
        if not re.fullmatch(r"[^@\s,;<>]+@[^@\s,;<>]+", value):  # one address; a local domain (root@localhost) too
            raise ValueError(f"TENFOLD_ALERT_EMAIL {value!r} is not one e-mail address (name@domain): the alert "
                             "e-mail and the cloud's notification channel need one")
        return value

    @field_validator("alert_smtp_host")
    @classmethod
    def _relay(cls, value: str | None) -> str | None:
        """``host`` or ``host:port`` (1 to 65535): a port that is not one made every alert's e-mail fail, and the drift
        monitor fail its tries for an undelivered alert, instead of one error here."""
        if value is None:
            return None
        host, colon, port = value.partition(":")
        if not host or any(c.isspace() or c in "/@" for c in host) or (
                colon and not (port.isdigit() and 1 <= int(port) <= 65535)):
            # Not quoted: a relay given with its login (user:password@host) would put the password in the error.
            raise ValueError("TENFOLD_ALERT_SMTP_HOST: give the mail relay as host or host:port (a port from 1 to "
                             "65535), e.g. relay.internal:25; a login in it (user:password@host) is not supported")
        return value


class LocalSettings(_Frozen):
    """Ports and paths of the embedded services; all bind to loopback only."""

    home: Path
    # A loopback IP address (HAProxy's runtime API takes addresses, not names). What listens here without a login
    # would be open beyond this machine on any other: the GCS and Pub/Sub emulators, the replicas' /metrics, /docs,
    # /openapi.json and detailed /readyz, and torch's rank-0 TCPStore while a model trains. (Airflow, the serving
    # API and HAProxy's stats page and exporter ask for a login.)
    bind_host: str = "127.0.0.1"
    # TCP ports (1-65535): one out of range is a clear settings error, not an OverflowError from the first socket.
    airflow_port: int = Field(default=8080, ge=1, le=65535)
    # Airflow's scheduler and triggerer each serve task logs on a port of their own.
    airflow_log_port: int = Field(default=8793, ge=1, le=65535)
    airflow_trigger_log_port: int = Field(default=8794, ge=1, le=65535)
    pubsub_port: int = Field(default=8085, ge=1, le=65535)
    gcs_port: int = Field(default=4443, ge=1, le=65535)
    lb_port: int = Field(default=8000, ge=1, le=65535)
    replica_base_port: int = Field(default=8101, ge=1, le=65535)
    # fake-gcs-server enforces generation preconditions (atomic alias moves need them);
    # gcp-storage-emulator is pure Python but ignores them. See tenfold.local.services.
    gcs_emulator: Literal["fake-gcs-server", "gcp-storage-emulator"] = "fake-gcs-server"

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        # ``replicas`` was never read (the fleet's pools have their own bounds) and is gone; a settings file a
        # running fleet or inference pool wrote before may still hold it.
        if isinstance(data, dict) and "replicas" in data:
            data = {k: v for k, v in data.items() if k != "replicas"}
        return data

    @field_validator("bind_host")
    @classmethod
    def _loopback(cls, value: str) -> str:
        import ipaddress

        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"local.bind_host {value!r} is not an IP address: use a loopback address such as "
                             "127.0.0.1 (HAProxy's runtime API takes addresses, not host names)") from None
        if not (address.version == 4 and address.is_loopback):  # IPv4: the services' URLs are host:port
            raise ValueError(f"local.bind_host {value!r} is not an IPv4 loopback address (127.x.x.x): the GCS and "
                             "Pub/Sub emulators, the model replicas' /metrics, /docs and detailed /readyz, and the "
                             "training store have no login, so the local platform listens on loopback only; use "
                             "127.0.0.1 (or deploy with TENFOLD_ENV=dev or prod to serve a network)")
        return value


LOCAL_ENV_PREFIX = "TENFOLD_LOCAL__"
SERVING_ENV_PREFIX = "TENFOLD_SERVING__"


class CloudGroupEnv(BaseModel):
    """What ``TENFOLD_SERVING__{STABLE,CANARY}_FLEET__<FIELD>`` sets of a cloud serving group: its sizing."""

    machine_type: str | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    spot: bool | None = None
    disk_size_gb: int | None = None


class LoadBalancerEnv(BaseModel):
    """What ``TENFOLD_SERVING__LOAD_BALANCER__<FIELD>`` sets of the cloud load balancer: the deployment's domain, and
    the Cloud Armor policy's per-client rate limit (a client that batches from one address above it needs it raised,
    docs/deploy.md). :class:`LoadBalancerSettings` checks the values."""

    domain: str | None = None
    rate_limit_per_ip_per_minute: int | None = Field(default=None, ge=0)


# Each section's model names the fields its variables may set (settings_env passes them on to child processes).
SERVING_ENV_SECTIONS: dict[str, type[BaseModel]] = {
    "server": ServerSettings, "fleet": FleetSettings, "rollout": RolloutSettings,
    "stable_fleet": CloudGroupEnv, "canary_fleet": CloudGroupEnv, "load_balancer": LoadBalancerEnv,
}
_LOCAL_OVERRIDABLE = tuple(sorted(set(LocalSettings.model_fields) - {"home"}))
TRAINING_ENV_PREFIX = "TENFOLD_TRAINING__"
TRAINING_ENV_FIELDS = tuple(f for f in TrainingSettings.model_fields if f != "fleet")
PIPELINES_ENV_PREFIX = "TENFOLD_PIPELINES__"
STORAGE_ENV_PREFIX = "TENFOLD_STORAGE__"
# TENFOLD_MONITORING__DRIFT__<FIELD>: the drift monitor's thresholds and triggers (docs/drift.md), so Airflow's tasks
# (settings_env) and the cloud's drift alert policy (deployed_env: its threshold is drift.psi_drift) use them.
MONITORING_ENV_PREFIX = "TENFOLD_MONITORING__"
MONITORING_ENV_SECTIONS: dict[str, type[BaseModel]] = {"drift": DriftSettings}
# The lake's table names: a workload of its own may name its tables (the buckets follow from the prefix); and the
# registry's folder in the models bucket, so a second registry (a staging one, a test's) shares the bucket.
STORAGE_ENV_FIELDS = (*(f for f in StorageSettings.model_fields if f.endswith("_table")), "registry_prefix")


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over an explicit mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class EnvironSettings(BaseSettings):
    """The ``TENFOLD_*`` variables :func:`build_settings` reads, parsed from a given mapping.

    ``TENFOLD_HOME``, ``TENFOLD_PROJECT_ID``, ``TENFOLD_WORKLOAD``, ``TENFOLD_ALERT_EMAIL``,
    ``TENFOLD_ALERT_WEBHOOK``, ``TENFOLD_ALERT_SMTP_HOST``, ``TENFOLD_ALERT_FILE``, ``TENFOLD_ROOT`` and
    ``TENFOLD_LOCAL__<FIELD>`` (any :class:`LocalSettings` field but ``home``), ``TENFOLD_SERVING__<SECTION>__<FIELD>``
    and ``TENFOLD_TRAINING__<FIELD>`` (any :class:`TrainingSettings` field but ``fleet``), ``TENFOLD_PIPELINES__``,
    ``TENFOLD_STORAGE__`` and ``TENFOLD_MONITORING__DRIFT__`` ones. Empty values count as unset; a ``TENFOLD_<X>__...`` of any other X is refused (it
    would set nothing), and so is a ``TENFOLD_ALERT_*`` that is none of the four above (named, never quoted: its value
    may be the webhook URL); other variables are ignored. Only :meth:`from_environ` fills it: never ``os.environ``.
    """

    # hide_input_in_errors: pydantic's message quotes what it got, and a TENFOLD_MONITORING__* or TENFOLD_ALERT_*
    # variable may hold the webhook URL (a secret: see MonitoringSettings).
    model_config = SettingsConfigDict(env_prefix="TENFOLD_", env_nested_delimiter="__", env_ignore_empty=True,
                                      extra="ignore", frozen=True, hide_input_in_errors=True)

    home: Path | None = None
    project_id: str | None = None
    workload: str | None = None
    alert_email: str | None = None
    alert_webhook: SecretStr | None = None  # (a secret: see MonitoringSettings.alert_webhook_url)
    alert_smtp_host: str | None = None
    alert_file: Path | None = None
    root: Path | None = None
    local: dict[str, str] = Field(default_factory=dict)
    # TENFOLD_SERVING__{SERVER,FLEET,ROLLOUT}__<FIELD>: the replica's, the local fleet's and the rollout's
    # settings, so a replica or fleet process started with settings_env() runs with its parent's; and the cloud's
    # TENFOLD_SERVING__{STABLE_FLEET,CANARY_FLEET}__<FIELD> (their sizing) and TENFOLD_SERVING__LOAD_BALANCER__DOMAIN
    # and __RATE_LIMIT_PER_IP_PER_MINUTE.
    serving: dict[str, dict[str, str]] = Field(default_factory=dict)
    # TENFOLD_TRAINING__<FIELD>: any TrainingSettings field but its fleet (e.g. TENFOLD_TRAINING__GATE_MIN_AUC), so
    # Airflow's tasks, started with settings_env(), train and gate as their parent's settings say.
    training: dict[str, str] = Field(default_factory=dict)
    # TENFOLD_PIPELINES__<DAG>__<FIELD> (e.g. TENFOLD_PIPELINES__BUILD_FEATURES__FIRST_MONTH=2020-01) and
    # TENFOLD_STORAGE__<TABLE> (the table names, e.g. TENFOLD_STORAGE__FEATURES_TABLE): what a workload of its own
    # sets (docs/workloads.md), reaching Airflow's tasks and the replicas through settings_env() too.
    pipelines: dict[str, dict[str, str]] = Field(default_factory=dict)
    storage: dict[str, str] = Field(default_factory=dict)
    # TENFOLD_MONITORING__DRIFT__<FIELD> (e.g. TENFOLD_MONITORING__DRIFT__PSI_DRIFT=0.3): the drift monitor's.
    monitoring: dict[str, dict[str, str]] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # values come only from the mapping handed to from_environ

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> EnvironSettings:
        _settable_sections_only(environ)
        return cls(**_MappingEnvSource(cls, environ)())

    # The checks run before pydantic's type check: a variable one level off (TENFOLD_SERVING__TARGET_UTILIZATION,
    # a field where a section goes) is refused by name, not as "Input should be a valid dictionary".
    @field_validator("local", mode="before")
    @classmethod
    def _known_local_fields(cls, value: Any) -> Any:
        return _known_fields(value, LOCAL_ENV_PREFIX, _LOCAL_OVERRIDABLE, "local setting")

    @field_validator("training", mode="before")
    @classmethod
    def _known_training_fields(cls, value: Any) -> Any:
        return _known_fields(value, TRAINING_ENV_PREFIX, TRAINING_ENV_FIELDS, "training setting")

    @field_validator("storage", mode="before")
    @classmethod
    def _known_storage_fields(cls, value: Any) -> Any:
        return _known_fields(value, STORAGE_ENV_PREFIX, STORAGE_ENV_FIELDS, "table or registry setting")

    @field_validator("serving", mode="before")
    @classmethod
    def _known_serving_fields(cls, value: Any) -> Any:
        return _known_sections(value, SERVING_ENV_PREFIX, SERVING_ENV_SECTIONS, "serving section")

    @field_validator("monitoring", mode="before")
    @classmethod
    def _known_monitoring_fields(cls, value: Any) -> Any:
        return _known_sections(value, MONITORING_ENV_PREFIX, MONITORING_ENV_SECTIONS,
                               "monitoring section (the alert hooks' variables are TENFOLD_ALERT_*)")

    @field_validator("pipelines", mode="before")
    @classmethod
    def _known_pipeline_fields(cls, value: Any) -> Any:
        return _known_sections(value, PIPELINES_ENV_PREFIX, dict.fromkeys(PipelineSettings.model_fields, DagSettings),
                               "DAG")


# The sections whose fields TENFOLD_<SECTION>__<FIELD> variables set (EnvironSettings' dict fields).
# Of monitoring, only the drift section: TENFOLD_MONITORING__ALERT_WEBHOOK_URL (a secret meant for TENFOLD_ALERT_WEBHOOK)
# is refused here, before pydantic, whose refusals quote the value.
ENV_SECTION_PREFIXES = (LOCAL_ENV_PREFIX, SERVING_ENV_PREFIX, TRAINING_ENV_PREFIX, PIPELINES_ENV_PREFIX,
                        STORAGE_ENV_PREFIX, MONITORING_ENV_PREFIX + "DRIFT__")


def _settable_sections_only(environ: Mapping[str, str]) -> None:
    """A ``TENFOLD_<X>__...`` variable whose X is no section the environment sets (``TENFOLD_INFERENCE__WORKERS``,
    ``TENFOLD_MONITORING__ALERT_WEBHOOK_URL``) is refused, not ignored: the setting it was meant for would keep
    its default with nothing said (an alert webhook that is never called). So is a ``TENFOLD_ALERT_*`` that is no
    alert hook's variable (``TENFOLD_ALERT_WEBHOOK_URL``, spelt after monitoring.alert_webhook_url): named, not
    quoted, as its value may be the webhook URL."""
    alert_variables = [f"TENFOLD_{f.upper()}" for f in EnvironSettings.model_fields if f.startswith("alert_")]
    for name, value in environ.items():
        upper = name.upper()
        if upper.startswith("TENFOLD_ALERT_") and value and upper not in alert_variables:
            raise ValueError(f"{name} names no alert hook (theirs are {', '.join(alert_variables)}): unset it and "
                             "set the one meant")
        if (upper.startswith("TENFOLD_") and "__" in upper and value
                and not upper.startswith(ENV_SECTION_PREFIXES)):
            raise ValueError(
                f"{name} names no setting that the environment sets: {upper.split('__')[0]}__* is not one of "
                f"{', '.join(p + '*' for p in ENV_SECTION_PREFIXES)}, and the other settings have variables of "
                "their own (TENFOLD_HOME, TENFOLD_PROJECT_ID, TENFOLD_WORKLOAD, TENFOLD_ALERT_WEBHOOK, "
                "TENFOLD_ALERT_EMAIL, ...: tenfold.config.settings.EnvironSettings); unset it")


def _known_fields(value: Any, prefix: str, fields: Sequence[str], what: str) -> Any:
    """``<prefix><FIELD>`` variables must name one of ``fields``: a typo is an error naming the right ones."""
    if not isinstance(value, dict):
        return value  # the section's own variable (TENFOLD_LOCAL=...): settings_refusal names it
    for name, field_value in value.items():
        if name not in fields:
            raise ValueError(f"{prefix}{name.upper()} names no {what}: use one of "
                             f"{', '.join(prefix + f.upper() for f in fields)}")
        if isinstance(field_value, dict):  # TENFOLD_TRAINING__FLEET__MACHINE_TYPE: a field with parts of its own
            raise ValueError(f"{prefix}{name.upper()}__{'/'.join(k.upper() for k in field_value)} sets a part of "
                             f"{prefix}{name.upper()}, which is set only whole, or not from the environment; "
                             f"use one of {', '.join(prefix + f.upper() for f in fields)}")
    return value


def _known_sections(value: Any, prefix: str, sections: Mapping[str, type[BaseModel]], what: str) -> Any:
    """``<prefix><SECTION>__<FIELD>`` variables must name a section and one of its model's fields."""
    if not isinstance(value, dict):
        return value
    for section, fields in value.items():
        known = sections.get(section)
        if known is None:
            raise ValueError(f"{prefix}{section.upper()}{'__*' if isinstance(fields, dict) else ''} names no {what}: use one of "
                             f"{', '.join(prefix + s.upper() + '__<FIELD>' for s in sections)}")
        if not isinstance(fields, dict):  # TENFOLD_SERVING__SERVER=x: a value where the section's fields go
            raise ValueError(f"{prefix}{section.upper()} is set, but it is a section: unset it and set each field as "
                             f"{prefix}{section.upper()}__<FIELD> (one of {', '.join(f.upper() for f in known.model_fields)})")
        for name, field_value in fields.items():
            if name not in known.model_fields:
                raise ValueError(f"{prefix}{section.upper()}__{name.upper()} names no field of {known.__name__}: use "
                                 f"one of {', '.join(f.upper() for f in known.model_fields)}")
            if isinstance(field_value, dict):  # TENFOLD_SERVING__SERVER__AUTH_MODE__X: parts of a field
                raise ValueError(f"{prefix}{section.upper()}__{name.upper()}__{'/'.join(k.upper() for k in field_value)} "
                                 f"sets a part of {prefix}{section.upper()}__{name.upper()}, which is set only whole")
    return value


def env_text(value: Any) -> str:
    """A ``TENFOLD_TRAINING__*`` value as text :func:`env_value` reads back as ``value``: plain text when it reads back
    the same (``gloo``, a cron line), else its ``repr`` (tuples, None, numbers, and text such as ``'2024'`` or
    ``'None'`` that would read back as another type)."""
    return value if isinstance(value, str) and env_value(value) == value else repr(value)


def env_value(text: str) -> Any:
    """A ``TENFOLD_TRAINING__*`` value as its field expects it: Python literals (``('rate',)``, ``None``,
    ``0.5``) are decoded, anything else (``gloo``, a cron line) stays text for pydantic to check."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # TypeError: "{[]: 1}" (unhashable)
        return text


def local_env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """Fields of :class:`LocalSettings` overridden by ``TENFOLD_LOCAL__<FIELD>`` variables of ``environ``.

    Tests and subprocesses (``airflow dags test``, spark-submit) run against their own ports this way,
    e.g. ``TENFOLD_LOCAL__GCS_PORT=14443``, so they never collide with ``make up``; ``TENFOLD_HOME``
    moves the home (``home`` itself is not overridable here).
    """
    return dict(EnvironSettings.from_environ(environ).local)


class InfraSettings(_Frozen):
    data_stack: ResourceName
    platform_stack: ResourceName
    state_prefix: str
    # Artifact Registry (Docker) repository holding the one tenfold image (serving, training, workers).
    artifact_repository: ResourceName = "tenfold-images"
    # The custom IAM role the orchestrator (Composer) account holds; role ids allow no '-'.
    orchestrator_role_id: RoleId
    image_name: str = "tenfold"
    image_tag: str = "latest"


class Settings(_Frozen):
    env: Env
    project_id: ProjectId
    # dev or prod built with no project (no TENFOLD_PROJECT_ID): ``project_id`` is the synth-only placeholder
    # (:func:`project_refusal`). Not dumped: what a dump is read back into is a process's own settings again.
    project_placeholder: bool = Field(default=False, exclude=True)
    region: str
    zone: str
    prefix: ResourceName
    # The workload the pipelines run: the reference one ("flights") or a user's ``module:attribute``.
    workload: str = DEFAULT_WORKLOAD
    storage: StorageSettings
    messaging: MessagingSettings
    network: NetworkSettings
    service_accounts: ServiceAccounts
    spark: SparkSettings
    airflow: AirflowSettings
    training: TrainingSettings
    serving: ServingSettings
    inference: InferenceSettings
    feedback: FeedbackSettings
    monitoring: MonitoringSettings
    infra: InfraSettings
    local: LocalSettings
    # The DAGs: the months each covers, task bounds and retries (tenfold.pipelines.common.default_args).
    pipelines: PipelineSettings = PipelineSettings()

    @model_validator(mode="after")
    def _local_trains_on_one_node(self) -> Settings:
        """The local train_model DAG ran torchrun --nnodes=2 without the loopback rendezvous, which then waited for
        a node that never comes (`tenfold train` refused it; the settings and the DAG did not)."""
        if self.is_local and self.training.nnodes > 1:
            raise ValueError(f"TENFOLD_TRAINING__NNODES={self.training.nnodes}: the local settings train on this "
                             "machine alone (torchrun would wait for nodes that never come); unset it, or train on "
                             "several nodes with TENFOLD_ENV=dev or prod (the training GPU group)")
        return self

    @model_validator(mode="after")
    def _one_gpu_per_cloud_rank(self) -> Settings:
        """nccl gives each of a node's nproc_per_node ranks a GPU of its own: more ranks than the training group's VMs
        have GPUs passed settings and synth, and failed only on the booted GPU nodes (the worker's TooFewGpus), after
        the group was resized and its VMs paid for. Local training (gloo, on CPU) starts any number of ranks."""
        t = self.training
        if self.is_local or t.backend != "nccl" or t.nproc_per_node <= t.fleet.accelerator_count:
            return self
        gpus = t.fleet.accelerator_count
        fewer = (f"set TENFOLD_TRAINING__NPROC_PER_NODE to at most {gpus}" if gpus
                 else "set TENFOLD_TRAINING__BACKEND=gloo to train on CPU")
        raise ValueError(
            f"TENFOLD_TRAINING__NPROC_PER_NODE={t.nproc_per_node}: backend nccl runs one process per GPU, and the "
            f"{self.env} training group's VMs ({t.fleet.machine_type}) have {gpus} GPU{'' if gpus == 1 else 's'} each "
            "(training.fleet.accelerator_count, set in tenfold.config.settings.build_settings: no environment "
            f"variable sets it): {fewer}, or give the training group more GPUs per VM there "
            "(training.fleet.machine_type, accelerator_type and accelerator_count)")
        return self

    @model_validator(mode="after")
    def _report_folders(self) -> Settings:
        """The drift and the rollout reports each in a folder of the lake under no table or folder of the platform's.
        The drift folder is also the URI of the drift Asset that schedules train_model: set to "features" it was the
        features table's, so every build_features publish retrained (and each retrain started a canary); and "../x"
        (or "../../etc" for the rollouts') wrote outside the lake. The two may share a folder: the drift monitor
        reads only its year=/month= reports there, and the rollout reports are no Asset."""
        storage, layout = self.storage, self.storage.lake_layout
        taken = {getattr(storage, f) for f in type(storage).model_fields if f.endswith("_table")}
        taken |= {layout.staging, layout.quarantine, self.inference.work_prefix.strip("/").split("/")[0],
                  self.monitoring.alert_records_prefix.strip("/").split("/")[0]}
        for variable, prefix, example in (
                ("TENFOLD_MONITORING__DRIFT__REPORTS_PREFIX", self.monitoring.drift.reports_prefix, "reports/drift"),
                ("TENFOLD_SERVING__ROLLOUT__REPORTS_PREFIX", self.serving.rollout.reports_prefix, "reports/rollouts")):
            parts = prefix.split("/")
            if any(part in ("", ".", "..") for part in parts):  # a leading "/" is an empty first segment
                raise ValueError(f"{variable}={prefix!r}: give a folder of the lake as relative path segments, e.g. "
                                 f"{example} (no leading '/', no empty, '.' or '..' segment)")
            if parts[0] in taken or parts[0].startswith(storage.lookups_table + "_"):
                raise ValueError(f"{variable}={prefix!r} is under the lake's {parts[0]!r}, a table or folder the "
                                 f"platform writes: give a folder of its own, e.g. {example}")
        return self

    @model_validator(mode="after")
    def _one_port_each(self) -> Settings:
        """Every listening service of the local platform on a port of its own: two sharing one validated, and the
        second failed to bind only when it started (or a health check reached the other service)."""
        if not self.is_local:
            return self
        ports = {f"local.{k}": v for k, v in self.local.model_dump().items() if k.endswith("_port")
                 and k != "replica_base_port"}  # replicas take free ports from there upward
        # (training.rdzv_port is not among them: one node meets through a file rendezvous, and locally there is one.)
        ports["serving.fleet.lb_metrics_port"] = self.serving.fleet.lb_metrics_port
        by_port: dict[int, list[str]] = {}
        for name, port in ports.items():
            by_port.setdefault(port, []).append(name)
        if clashes := [names for names in by_port.values() if len(names) > 1]:
            def variable(name: str) -> str:
                return "TENFOLD_" + name.upper().replace(".", "__")

            raise ValueError("two local services on one port: " + "; ".join(
                f"{' and '.join(names)} share port {ports[names[0]]}" for names in clashes)
                + ": give each a port of its own (" + ", ".join(variable(n) for names in clashes for n in names) + ")")
        return self

    @model_validator(mode="after")
    def _routable_email(self) -> Settings:
        """In the cloud the address is a Cloud Monitoring e-mail channel's, which mails it over the internet: a local
        domain (root@localhost, fine for a local relay) deployed a channel that could never deliver an alert."""
        domain = self.monitoring.notification_email.rpartition("@")[2]
        if not self.is_local and not re.fullmatch(r"[^.]+(\.[^.]+)+", domain):
            raise ValueError(f"TENFOLD_ALERT_EMAIL {self.monitoring.notification_email!r} has no internet domain "
                             f"({domain!r}): the {self.env} notification channel mails it from Google's servers, so "
                             "give an address such as oncall@your-company.com")
        return self

    @property
    def is_local(self) -> bool:
        return self.env == "local"

    @property
    def assets(self) -> AssetUris:
        """The Airflow Asset URIs (features, challenger, champion, drift), derived from ``storage``, never set."""
        return AssetUris.of(self.storage, self.monitoring.drift.reports_prefix)

    def service_account_email(self, account_id: str) -> str:
        """The e-mail of a service account the infrastructure creates in this environment's project."""
        return f"{account_id}@{self.project_id}.iam.gserviceaccount.com"

    @property
    def container_image(self) -> str:
        """The tenfold image in this environment's Artifact Registry repository."""
        i = self.infra
        return f"{self.region}-docker.pkg.dev/{self.project_id}/{i.artifact_repository}/{i.image_name}:{i.image_tag}"

    def get(self, key: str) -> Any:
        """Look up a dotted key, e.g. ``storage.lake_bucket`` (what ``tenfold config get`` serves)."""
        value: Any = self
        for part in key.split("."):
            if isinstance(value, BaseModel) and part in type(value).model_fields:
                value = getattr(value, part)
            elif isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, BaseModel) and isinstance(getattr(type(value), part, None), property):
                value = getattr(value, part)
            else:
                raise KeyError(f"unknown settings key {key!r} (no {part!r})")
        return value


def project_root(environ: Mapping[str, str] | None = None) -> Path:
    """The checkout root (the folder holding pyproject.toml); ``TENFOLD_ROOT`` in ``environ`` overrides."""
    if environ is not None and (root := EnvironSettings.from_environ(environ).root):
        return root.resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() and (parent / "dags").is_dir():
            return parent
    return Path.cwd().resolve()


def _subscription(prefix: str, name: str, topic: str, **kw: Any) -> SubscriptionSettings:
    sub = f"{prefix}-{name}"
    return SubscriptionSettings(
        name=sub,
        topic=topic,
        dead_letter_topic=f"{sub}-dead-letter",
        dead_letter_subscription=f"{sub}-dead-letter-sub",
        **kw,
    )


def build_settings(
    env: Env,
    environ: Mapping[str, str] | None = None,
    *,
    project_id: str | None = None,
    prefix: str | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings of one environment from explicit inputs; keyword overrides replace top-level
    sections or fields.

    ``environ`` is the process environment to honour (``TENFOLD_*`` variables, see
    :class:`EnvironSettings`); ``None`` means none at all, so the result depends on the arguments only.
    ``project_id`` defaults to ``TENFOLD_PROJECT_ID`` or a placeholder for synth-only use; every name
    is derived from ``prefix`` (default ``tenfold-<env>``).
    """
    if env not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {env!r}: choose one of {', '.join(ENVIRONMENTS)}")
    given = EnvironSettings.from_environ(environ or {})
    prefix = prefix or f"tenfold-{env}"
    placeholder = not (project_id or given.project_id)
    project_id = project_id or given.project_id or f"tenfold-{env}-project"
    try:  # before the bucket names are made of it: an invalid id was blamed on the lake bucket's name
        check_project_id(project_id)
    except ValueError as exc:
        raise ValueError(f"TENFOLD_PROJECT_ID={project_id!r}: {exc}; set it to your Google Cloud project's id "
                         "(`gcloud projects list` shows it)") from None
    local_home = (given.home or project_root(environ) / ".tenfold").resolve()
    local = LocalSettings(home=local_home, **given.local)  # type: ignore[arg-type]
    is_local = env == "local"
    prod = env == "prod"
    # Bucket names are global: qualify them by project so two users of Tenfold never collide.
    bucket = f"{project_id}-{prefix}" if not is_local else prefix
    lake_bucket = f"{bucket}-lake"
    topic = functools.partial(str.format, prefix + "-{}")

    requests_topic, predictions_topic = topic("requests"), topic("predictions")
    feedback_topic = topic("feedback")
    subs = {
        "requests": _subscription(prefix, "requests-workers", requests_topic, ack_deadline_s=120),
        "predictions": _subscription(prefix, "predictions-sink", predictions_topic),
        "feedback": _subscription(prefix, "feedback-sink", feedback_topic),
    }

    def fleet(role: str, **kw: Any) -> GpuGroupSettings:
        return GpuGroupSettings(instance_group=f"{prefix}-{role}-mig", instance_template=f"{prefix}-{role}-tmpl", **kw)

    def serving_group(section: str, **kw: Any) -> GpuGroupSettings:
        return fleet(f"serve-{section.removesuffix('_fleet')}", **{**kw, **given.serving.get(section, {})})

    gpu = {"accelerator_type": "nvidia-l4", "accelerator_count": 1}
    values: dict[str, Any] = dict(
        env=env,
        project_id=project_id,
        project_placeholder=placeholder and env != "local",
        region="us-central1",
        zone="us-central1-a",
        prefix=prefix,
        storage=StorageSettings(
            lake_bucket=lake_bucket,
            models_bucket=f"{bucket}-models",
            artifacts_bucket=f"{bucket}-artifacts",
            dataproc_staging_bucket=f"{bucket}-dataproc",
            tf_state_bucket=f"{bucket}-tfstate",
            lake_uri=(local_home / "lake").as_uri() if is_local else f"gs://{lake_bucket}",
            emulator_host=f"http://{local.bind_host}:{local.gcs_port}" if is_local else None,
            kms=KmsSettings(key_ring=f"{prefix}-keyring", storage_key=f"{prefix}-storage", pubsub_key=f"{prefix}-pubsub",
                            secrets_key=f"{prefix}-secrets"),
        ),
        messaging=MessagingSettings(
            requests_topic=requests_topic,
            predictions_topic=predictions_topic,
            feedback_topic=feedback_topic,
            subscriptions=subs,
            emulator_host=f"{local.bind_host}:{local.pubsub_port}" if is_local else None,
        ),
        network=NetworkSettings(
            network=f"{prefix}-vpc", subnet=f"{prefix}-subnet", router=f"{prefix}-router", nat=f"{prefix}-nat",
            serving_tag=f"{prefix}-serving", ssh_tag=f"{prefix}-ssh", training_tag=f"{prefix}-training",
            dataproc_tag=f"{prefix}-dataproc",
        ),
        service_accounts=ServiceAccounts(
            serving=f"{prefix}-serving",
            training=f"{prefix}-training",
            inference=f"{prefix}-inference",
            feedback=f"{prefix}-feedback",
            dataproc=f"{prefix}-dataproc",
            composer=f"{prefix}-composer",
        ),
        spark=SparkSettings(dataproc_batch_prefix=f"{prefix}-features"),
        airflow=AirflowSettings(
            composer_enabled=prod,
            composer_environment=f"{prefix}-composer",
        ),
        training=TrainingSettings(**{  # type: ignore[arg-type]
            "backend": "gloo" if is_local else "nccl",
            "nproc_per_node": 2 if is_local else 1,
            "nnodes": 1 if is_local else 2,
            "fleet": fleet("train", machine_type="g2-standard-8", min_replicas=0, max_replicas=2, spot=not prod,
                           target_shape="ANY_SINGLE_ZONE", **gpu),
            **{k: env_value(v) for k, v in given.training.items()},
        }),
        serving=ServingSettings(
            stable_fleet=serving_group("stable_fleet", machine_type="g2-standard-4", min_replicas=1 if prod else 0,
                                       max_replicas=20 if prod else 2, **gpu),
            # As large as stable can grow: the last rollout step sends every user to the canary group, and
            # weighted backend services never spill one service's load onto the other (docs/rollout-cloud.md).
            canary_fleet=serving_group("canary_fleet", machine_type="g2-standard-4", min_replicas=1 if prod else 0,
                                       max_replicas=20 if prod else 2, **gpu),
            token_secret=f"{prefix}-serving-token",
            load_balancer=LoadBalancerSettings(
                address=f"{prefix}-lb-ip",
                health_check=f"{prefix}-serving-hc",
                autohealing_check=f"{prefix}-serving-live",
                stable_backend=f"{prefix}-stable-backend",
                canary_backend=f"{prefix}-canary-backend",
                url_map=f"{prefix}-url-map",
                http_proxy=f"{prefix}-proxy",
                forwarding_rule=f"{prefix}-fwd",
                cloud_armor_policy=f"{prefix}-armor" if prod else None,
                **given.serving.get("load_balancer", {}),  # type: ignore[arg-type]
            ),
            server=ServerSettings(**given.serving.get("server", {})),  # type: ignore[arg-type]
            fleet=FleetSettings(**given.serving.get("fleet", {})),  # type: ignore[arg-type]
            # The load balancer's logs reach Cloud Logging up to a minute late: longer windows in the cloud, each
            # read 90 s after it ends (a minute of delay and the backend's 30 s timeout).
            rollout=RolloutSettings(**{**({} if is_local else {"interval_s": 120.0, "traffic_lag_s": 90.0}),  # type: ignore[arg-type]
                                       **given.serving.get("rollout", {})}),
        ),
        inference=InferenceSettings(
            # BALANCED: zones with spot GPUs first, as ANY would, and a shape an autoscaler may drive (ANY's may
            # not: the deploy failed creating the group's backlog autoscaler).
            fleet=fleet("infer", machine_type="g2-standard-4", min_replicas=0, max_replicas=10 if prod else 2, spot=True,
                        target_shape="BALANCED", **gpu),
        ),
        # One sink: it lands both subscriptions' messages in the lake logs and joins them every 30 s while anything
        # lands (one join at a time per lake, tenfold.feedback.lock); a CPU VM is plenty.
        feedback=FeedbackSettings(fleet=fleet("feedback", machine_type="e2-standard-2", min_replicas=1, max_replicas=1,
                                              disk_size_gb=30)),
        monitoring=MonitoringSettings(
            drift=_section_settings(MONITORING_ENV_PREFIX + "DRIFT__", DriftSettings(), given.monitoring.get("drift", {})),
            notification_email=given.alert_email or f"ml-oncall+{env}@example.com",
            drift_metric=f"custom.googleapis.com/{prefix}/feature_psi",
            alert_webhook_url=given.alert_webhook,
            alert_smtp_host=given.alert_smtp_host,
            # Relative to this process's working directory, like TENFOLD_HOME: made absolute here, so the children
            # started with settings_env() (Airflow's tasks run in the home folder) append to the same file.
            alert_file=None if given.alert_file is None else Path(os.path.abspath(given.alert_file)),
        ),
        infra=InfraSettings(data_stack=f"{prefix}-data", platform_stack=f"{prefix}-platform", state_prefix=f"terraform/{prefix}",
                            artifact_repository=f"{prefix}-images",
                            orchestrator_role_id=prefix.replace("-", "_") + "_orchestrator"),
        local=local,
    )
    if given.workload:
        values["workload"] = given.workload
    if given.storage:  # validated like the rest (model_copy would not)
        values["storage"] = StorageSettings.model_validate({**values["storage"].model_dump(), **given.storage})
    if given.pipelines:
        base = PipelineSettings()
        values["pipelines"] = base.model_copy(update={
            dag_id: _section_settings(f"{PIPELINES_ENV_PREFIX}{dag_id.upper()}__", getattr(base, dag_id), fields)
            for dag_id, fields in given.pipelines.items()})
    values.update(overrides)
    return Settings(**values)


_M = TypeVar("_M", bound=BaseModel)


def _section_settings(prefix: str, base: _M, fields: Mapping[str, str]) -> _M:
    """``base`` with the values its ``<prefix><FIELD>`` variables give (Python literals as :func:`env_value` reads
    them: ``('temp',)``, ``None``, ``0.3``); a refusal names the variables, and the default a value was checked
    against (``FIRST_MONTH=2020-01`` alone is before the default last month)."""
    if not fields:
        return base
    try:
        return type(base)(**{**base.model_dump(), **{k: env_value(v) for k, v in fields.items()}})
    except ValueError as exc:
        given = ", ".join(f"{prefix}{k.upper()}={v}" for k, v in fields.items())
        why = (exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)).removeprefix("Value error, ")
        # A default the refusal names (the last month a first month was checked against): which variable sets it.
        named = [f"{k} is {v} by default ({prefix}{k.upper()})"
                 for k, v in base.model_dump().items() if k not in fields and v is not None and k in why]
        raise ValueError(f"{given}: {why}" + (f"; {', '.join(named)}" if named else "")) from None


def deployed_env(settings: Settings, base: Settings | None = None) -> dict[str, str]:
    """The ``TENFOLD_*`` variables that carry what ``settings`` set beyond its environment's defaults to the cloud's
    own processes: the workload (``TENFOLD_WORKLOAD``), its table names and registry (``TENFOLD_STORAGE__*``), the
    DAGs' settings (``TENFOLD_PIPELINES__<DAG>__<FIELD>``), the training settings (``TENFOLD_TRAINING__<FIELD>``:
    the training account's grant names ``runs_prefix``) and the serving sections (``TENFOLD_SERVING__<SECTION>__*``).
    The stacks are synthesized with them, so Composer gets them too, and the VMs' containers what they read of them
    (:func:`tenfold.fleets.vm_env`: the workload and tables, and only their role's serving or training settings), and
    run with what was deployed. No alert setting is among them (Composer's own variables add the on-call address: :func:`composer_env`):
    a change of one would make new instance templates and replace every VM for nothing. ``base``: the environment's
    defaults, when the caller has built them already."""
    base = base or build_settings(settings.env, project_id=settings.project_id, prefix=settings.prefix)
    env = tables_and_pipelines_env(settings, base)
    if settings.workload != base.workload:
        env["TENFOLD_WORKLOAD"] = settings.workload
    env.update(training_and_serving_env(settings, base))
    return env


def composer_env(settings: Settings) -> dict[str, str]:
    """Composer's ``TENFOLD_*`` variables: the environment, the project, :func:`deployed_env`, and the on-call address
    (``TENFOLD_ALERT_EMAIL``, where it is not the ``example.com`` placeholder: the stacks' alert channel mails it, and
    an e-mail hook set up in Composer sends to it). The other alert hooks never travel: a webhook URL is a secret
    (never in Terraform state), and a relay or file of the synthesizing shell is its own."""
    base = build_settings(settings.env, project_id=settings.project_id, prefix=settings.prefix)
    env = {"TENFOLD_ENV": settings.env, "TENFOLD_PROJECT_ID": settings.project_id, **deployed_env(settings, base)}
    if settings.monitoring.notification_email != base.monitoring.notification_email:
        env["TENFOLD_ALERT_EMAIL"] = settings.monitoring.notification_email
    return env


def training_and_serving_env(settings: Settings, base: Settings | None = None) -> dict[str, str]:
    """``TENFOLD_TRAINING__<FIELD>``, ``TENFOLD_MONITORING__DRIFT__<FIELD>`` and ``TENFOLD_SERVING__<SECTION>__<FIELD>``
    for ``settings``: every one, or with ``base`` those whose value differs from it (training and drift values as
    :func:`env_text` writes them, so tuples, None and literal-looking text come back as they went; an unset serving
    value as empty, which reads as unset)."""
    env: dict[str, str] = {}
    for field in TRAINING_ENV_FIELDS:
        value = getattr(settings.training, field)
        if base is None or value != getattr(base.training, field):
            env[TRAINING_ENV_PREFIX + field.upper()] = env_text(value)
    for field in DriftSettings.model_fields:
        value = getattr(settings.monitoring.drift, field)
        if base is None or value != getattr(base.monitoring.drift, field):
            env[f"{MONITORING_ENV_PREFIX}DRIFT__{field.upper()}"] = env_text(value)
    for section, fields in SERVING_ENV_SECTIONS.items():
        ours = getattr(settings.serving, section)
        for field in fields.model_fields:
            value = getattr(ours, field)
            if base is None or value != getattr(getattr(base.serving, section), field):
                env[f"{SERVING_ENV_PREFIX}{section.upper()}__{field.upper()}"] = "" if value is None else str(value)
    return env


def tables_and_pipelines_env(settings: Settings, base: Settings | None = None) -> dict[str, str]:
    """``TENFOLD_STORAGE__<X>_TABLE`` (and ``__REGISTRY_PREFIX``) and ``TENFOLD_PIPELINES__<DAG>__<FIELD>`` for
    ``settings``: every one, or
    with ``base`` those whose value differs from it (None as ``repr``, which :func:`env_value` reads back)."""
    env: dict[str, str] = {}
    for field in STORAGE_ENV_FIELDS:
        table = getattr(settings.storage, field)
        if base is None or table != getattr(base.storage, field):
            env[STORAGE_ENV_PREFIX + field.upper()] = table
    for dag_id in PipelineSettings.model_fields:
        ours = getattr(settings.pipelines, dag_id)
        for field in DagSettings.model_fields:
            value = getattr(ours, field)
            if base is None or value != getattr(getattr(base.pipelines, dag_id), field):
                env[f"{PIPELINES_ENV_PREFIX}{dag_id.upper()}__{field.upper()}"] = repr(value) if value is None else str(value)
    return env


@functools.lru_cache(maxsize=8)
def get_settings(env: str | None = None) -> Settings:
    """The settings of ``env`` (a command's ``--env``), or of ``TENFOLD_ENV`` (default ``local``), under this
    process's environment; an unknown environment is a ValueError naming where it came from.

    The one place in Tenfold that reads ``os.environ`` for settings; cached per ``env``.
    """
    chosen = env or os.environ.get("TENFOLD_ENV", "local")
    if chosen not in ENVIRONMENTS:
        given = f"--env {chosen}" if env else f"TENFOLD_ENV={chosen!r}"
        raise ValueError(f"{given} is not an environment: choose one of {', '.join(ENVIRONMENTS)}")
    return build_settings(chosen, os.environ)  # type: ignore[arg-type]


def project_refusal(settings: Settings) -> str | None:
    """Why a process must not work on ``settings``' cloud resources (None: it may): dev or prod built with no project
    (no ``TENFOLD_PROJECT_ID``). Its names are then the synth-only placeholder's (``tenfold-<env>-project-...``):
    bucket names are global, so anyone could have created those buckets and let everyone write to them, and a
    command sent the lake's, the registry's and the inference results' data there."""
    if not settings.project_placeholder:
        return None
    return (f"error: TENFOLD_PROJECT_ID is not set: {settings.env} names its buckets, topics and service accounts "
            f"after your Google Cloud project, and without it they are the placeholder {settings.project_id!r}'s "
            "(global bucket names anyone could have created): export TENFOLD_PROJECT_ID=<your project id>, or unset "
            "TENFOLD_ENV to work on the local platform")


def command_settings(env: str | None = None, *, placeholder_ok: bool = False) -> Settings:
    """:func:`get_settings` for a command's ``--env``: an unknown environment or a TENFOLD_* value that does not parse
    ends the command with :func:`settings_refusal`'s line and exit code 2 (bad usage), never as an outage; so does dev
    or prod without ``TENFOLD_PROJECT_ID`` (:func:`project_refusal`), unless ``placeholder_ok`` (a command that only
    shows the names, as ``tenfold config get`` does before a project is chosen)."""
    import typer

    try:
        settings = get_settings(env)
    except ValueError as exc:
        typer.echo(settings_refusal(exc), err=True)
        raise typer.Exit(2) from None
    if not placeholder_ok and (refusal := project_refusal(settings)):
        typer.echo(refusal, err=True)
        raise typer.Exit(2)
    return settings


def settings_refusal(exc: ValueError) -> str:
    """The one line a command ends with when :func:`get_settings` refuses this process's environment: each invalid
    field with the value it got (a TENFOLD_* variable that does not parse or names no setting) and what to do, or
    the error itself (an unknown TENFOLD_ENV); never pydantic's traceback."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    if isinstance(exc, SettingsError) and (section := re.search(r'field "(\w+)"', str(exc))):
        # A section's variable itself (TENFOLD_LOCAL=x) is read as JSON: pydantic-settings names only its source.
        name = f"TENFOLD_{section[1].upper()}"
        return (f"error: invalid settings: {name} is set, and a section's variable must hold its fields as a JSON "
                f"object: unset it and set each field as {name}__<FIELD> (`env | grep {name}`)")
    if not isinstance(exc, ValidationError):
        return f"error: {exc}"
    # A field's error shows the value it got, but not a monitoring one's (a webhook URL, a relay with its login: see
    # MonitoringSettings), nor an EnvironSettings monitoring or alert one's, whose input may hold them too
    # (TENFOLD_MONITORING='{"alert_webhook_url": ...}', TENFOLD_MONITORING__DRIFT__WEBHOOK=...: the monitoring
    # section's input is each of its variables); a check across fields (no loc) would show every setting: not that.
    def secret(e: Any) -> bool:
        return exc.title == MonitoringSettings.__name__ or str(e["loc"][0]).startswith(("monitoring", "alert_"))

    fields = "; ".join(f"{exc.title}.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                       + ("" if secret(e) else f" (got {e.get('input')!r})")
                       if e["loc"] else f"{exc.title}: {e['msg']}" for e in exc.errors())
    # A list-valued variable holds a Python or JSON list, which nothing else said ("Input should be a valid tuple").
    listed = any(e["type"] in ("tuple_type", "list_type") for e in exc.errors())
    how = (" A list-valued variable holds a JSON list, e.g. TENFOLD_TRAINING__TRAIN_MONTHS='[\"2020-01\", \"2020-09\"]'."
           if listed else "")
    return (f"error: invalid settings: {fields}. Fix the TENFOLD_* environment variable that sets it "
            f"(`env | grep TENFOLD_`).{how}")
