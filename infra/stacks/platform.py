"""The stateless stack: identities, network, fleets, load balancer, orchestration, alerts. Safe to redeploy."""

from __future__ import annotations

from cdktn import TerraformOutput, TerraformStack
from cdktn_provider_google.artifact_registry_repository_iam_member import ArtifactRegistryRepositoryIamMember
from cdktn_provider_google.data_google_project import DataGoogleProject
from cdktn_provider_google.service_account_iam_member import ServiceAccountIamMember
from constructs import Construct

from infra.components.gpu_fleet import GpuFleet, GpuFleetProps, LbUtilizationScaling, PubsubBacklogScaling
from infra.components.iam import AccountSpec, CustomRoleSpec, Iam, IamProps
from infra.components.load_balancer import (
    LIVENESS_PROBE,
    READINESS_PROBE,
    HttpLoadBalancer,
    HttpLoadBalancerProps,
    ServingHealthCheck,
)
from infra.components.network import Network, NetworkProps
from infra.components.observability import LogAlertProps, Observability, ObservabilityProps
from infra.components.orchestration import Orchestration, OrchestrationProps
from infra.stacks.common import configure
from tenfold import fleets as startup
from tenfold.config import Settings
from tenfold.config.settings import GpuGroupSettings, composer_env
from tenfold.monitoring.alerts import log_marker
from tenfold.rollout.cloud import REQUIRED_PERMISSIONS as ROLLOUT_PERMISSIONS
from tenfold.workloads import get_workload, lookup_table

PORT_NAME = "http"
LOG_WRITER, METRIC_WRITER = "roles/logging.logWriter", "roles/monitoring.metricWriter"
VIEWER, USER, ADMIN = "roles/storage.objectViewer", "roles/storage.objectUser", "roles/storage.objectAdmin"
PUBLISHER, SUBSCRIBER = "roles/pubsub.publisher", "roles/pubsub.subscriber"
SECRET_ACCESSOR = "roles/secretmanager.secretAccessor"
# What the DAGs do to the platform from Composer, and nothing else: run Dataproc batches, resize the
# training group, and roll out (the URL map, the serving groups' templates: tenfold.rollout.cloud). Each is a call
# the code makes (tests/infra/test_adapters_match_stacks.py holds the role to exactly those): no batch is listed,
# and a try cancels a batch it no longer waits for through the batch's operation (tenfold.features.runners).
ORCHESTRATOR_PERMISSIONS = tuple(dict.fromkeys((
    "dataproc.batches.create", "dataproc.batches.get", "dataproc.operations.get", "dataproc.operations.cancel",
    "compute.instanceGroupManagers.get", "compute.instanceGroupManagers.update", "compute.regionOperations.get",
    *ROLLOUT_PERMISSIONS,
)))


# The environments whose load balancer may serve plain HTTP (port 80, with a warning): dev, for test traffic. Any
# other, and any stack behind IAP, is refused without a domain (require_https).
PLAIN_HTTP_ENVS = ("dev",)


def require_https(settings: Settings) -> None:
    """Refuse (ValueError, one line) a stack whose load balancer would serve plain HTTP where it must not: prod's
    (every request's bearer token would cross the internet unencrypted) and any behind IAP (IAP needs HTTPS in front,
    docs/deploy.md). Without a domain the load balancer listens on port 80 only; synth used to warn and go on."""
    if settings.serving.load_balancer.domain:
        return
    how = "set TENFOLD_SERVING__LOAD_BALANCER__DOMAIN=<your domain> (the stack then serves HTTPS only; docs/deploy.md)"
    if settings.serving.server.auth_mode == "iap":
        raise ValueError(f"{settings.env}: serving.server.auth_mode is iap and serving.load_balancer.domain is not "
                         f"set, but IAP needs HTTPS in front of it: {how}")
    if settings.env not in PLAIN_HTTP_ENVS:
        raise ValueError(f"{settings.env}: serving.load_balancer.domain is not set, so its load balancer would serve "
                         f"plain HTTP and every request's bearer token would cross the internet unencrypted: {how}")


def served_tables(settings: Settings) -> list[str]:
    """The lake tables a serving replica reads: the features (which months are served) and each lookup table, each
    once, in that order (a name twice built the same IAM construct twice: jsii's raw "There is already a Construct")."""
    st = settings.storage
    return list(dict.fromkeys([
        st.features_table,
        *(lookup_table(st.lookups_table, name) for name in get_workload(settings).contract.lookup_tables)]))


def sink_folders(settings: Settings) -> list[str]:
    """The lake folders the feedback sink writes: its two logs, the labelled table and that table's staging, and
    the three tables' quarantine folders (where its join moves a log file that cannot be read: tenfold.feedback.log;
    and where its publish of a labelled month moves a data folder whose withdrawal, by another task, died before
    the move: Lake._collect_garbage)."""
    st = settings.storage
    return [st.predictions_table, st.feedback_table, st.labelled_table,
            st.lake_layout.staging_dir(st.labelled_table),
            st.lake_layout.quarantine_dir(st.predictions_table), st.lake_layout.quarantine_dir(st.feedback_table),
            st.lake_layout.quarantine_dir(st.labelled_table)]


def feature_job_folders(settings: Settings) -> tuple[list[str], list[str]]:
    """(read, written): the lake folders the features job reads on Dataproc (the workload's source tables for a
    month, and its history table) and writes (the features' staging folder, its lookups staged beside them; the
    DAG validates and publishes from there as the orchestrator)."""
    sources, st = get_workload(settings).sources, settings.storage
    read = list(dict.fromkeys((*sources.month_inputs, *filter(None, [sources.history_table]))))
    return read, [st.lake_layout.staging_dir(st.features_table)]


def accounts(settings: Settings, orchestrator_role: str) -> list[AccountSpec]:
    st, m, sa = settings.storage, settings.messaging, settings.service_accounts
    subs = m.subscriptions
    job_reads, job_writes = feature_job_folders(settings)
    # The VMs (serving, training, inference, feedback) write logs only: no agent or code on them writes Cloud
    # Monitoring points (a replica's /metrics is scraped, not pushed), and a metric writer there could write the
    # drift metric (custom.googleapis.com/<prefix>/feature_psi) and page for drift that is not there. The
    # orchestrator writes that metric (tenfold.monitoring.cloud_metrics) and Dataproc its batches' metrics.
    observe = (LOG_WRITER, METRIC_WRITER)
    vm = (LOG_WRITER,)
    return [
        # A replica loads its model from the registry and the lookup tables its online features are assembled
        # from (tenfold.features.online: it lists the published months of the features and lookup tables and
        # reads their manifests and files); nothing else of the lake.
        AccountSpec("serving", sa.serving, project_roles=vm,
                    bucket_roles=[(st.models_bucket, VIEWER)],
                    folder_roles=[(st.lake_bucket, VIEWER, served_tables(settings))],
                    topic_roles=[(m.predictions_topic, PUBLISHER), (m.feedback_topic, PUBLISHER)],
                    # The bearer token its startup script fetches: this one secret (of the data stack), nothing else;
                    # behind IAP (auth_mode "iap") the replicas fetch no token, so none.
                    secret_roles=[(settings.serving.token_secret, SECRET_ACCESSOR)]
                    if settings.serving.server.auth_mode == "bearer" else []),
        # The training group's nodes (tenfold.training.node, .worker): read the features table, and register,
        # checkpoint and write the model, result and marker under the runs' folder of the artifacts bucket (where
        # train_model also stages the config, the preprocessing and the feedback rows); nothing else of either
        # bucket, and not the registry (train_model registers the model as the orchestrator).
        AccountSpec("training", sa.training, project_roles=vm,
                    folder_roles=[(st.lake_bucket, VIEWER, [st.features_table]),
                                  (st.artifacts_bucket, USER, [settings.training.runs_prefix])]),
        # The offline-inference workers (tenfold.inference.worker): pull the requests, read the model versions,
        # and write each request's result and error record under the lake's work prefix; nothing else of the
        # lake (the DAG publishes the scores table). Poison messages reach the dead-letter topic as Pub/Sub's own
        # service agent (infra/components/messaging.py), so no dead-letter grant is theirs.
        AccountSpec("inference", sa.inference, project_roles=vm,
                    bucket_roles=[(st.models_bucket, VIEWER)],
                    prefix_roles=[(st.lake_bucket, USER, settings.inference.work_prefix)],
                    subscription_roles=[(subs["requests"].name, SUBSCRIBER)]),
        # The feedback sink (tenfold.feedback): pulls the two sink subscriptions, appends to the predictions and
        # feedback logs, and publishes the labelled table through its staging folder (with their locks); nothing
        # else of the lake.
        AccountSpec("feedback", sa.feedback, project_roles=vm,
                    folder_roles=[(st.lake_bucket, USER, sink_folders(settings))],
                    subscription_roles=[(subs["predictions"].name, SUBSCRIBER), (subs["feedback"].name, SUBSCRIBER)]),
        # The features job on Dataproc (tenfold.features.job, without --publish): the lake grants it the month's
        # source tables to read and its staging folder to write, not the whole bucket's objectUser. But Dataproc
        # Serverless requires roles/dataproc.worker on the project, and that role also holds storage.objects.* on
        # every bucket of the project: the folder grants do not confine this account (docs/deploy.md says so; a
        # custom role without storage, verified on a live batch, would).
        AccountSpec("dataproc", sa.dataproc, project_roles=("roles/dataproc.worker", *observe),
                    bucket_roles=[(st.dataproc_staging_bucket, ADMIN)],
                    folder_roles=[(st.lake_bucket, VIEWER, job_reads), (st.lake_bucket, USER, job_writes)]),
        # roles/composer.worker: Composer requires it on its environment's account, and it is project-wide (every
        # bucket's objects, every topic and subscription, the image repository): granted only where Composer runs.
        # Without Composer (dev by default) this account is the identity an operator's own Airflow impersonates
        # (docs/deploy.md), which needs the grants below and nothing of Composer's.
        AccountSpec("composer", sa.composer, project_roles=(
                        *(["roles/composer.worker"] if settings.airflow.composer_enabled else []), *observe),
                    custom_roles=[orchestrator_role],
                    # The Dataproc staging bucket read only: no DAG writes there (operators upload the job's code by
                    # hand, docs/deploy.md), and writing it would let any DAG replace the code Dataproc runs as its
                    # own account.
                    bucket_roles=[(st.lake_bucket, USER), (st.models_bucket, USER), (st.artifacts_bucket, USER),
                                  (st.dataproc_staging_bucket, VIEWER)],
                    # The predictions and feedback topics for `tenfold feedback dead-letters --replay`, which sends the
                    # sink's dead letters back to their stream's topic (pulled below, they could not be replayed, and
                    # were lost with the subscription's retention).
                    topic_roles=[(m.requests_topic, PUBLISHER), (m.predictions_topic, PUBLISHER),
                                 (m.feedback_topic, PUBLISHER)],
                    # The dead letters only (tenfold dlq, tenfold feedback dead-letters): the live sink subscriptions
                    # are the feedback sink's alone, since a second puller would take half their messages away from it.
                    subscription_roles=[(sub.dead_letter_subscription, SUBSCRIBER) for sub in subs.values()],
                    act_as=["dataproc", "serving"]),  # serving: the templates a rollout derives run as it
    ]


def gpu_fleet(scope: Construct, cid: str, s: Settings, g: GpuGroupSettings, *, subnetwork: str,
              service_account_email: str, startup_script: str, tags: list[str], **kw: object) -> GpuFleet:
    """One fleet of ``settings``: its template, group and (optional) autoscaler, named by ``g``."""
    return GpuFleet(scope, cid, GpuFleetProps(
        template_name_prefix=g.instance_template, group_name=g.instance_group, region=s.region,
        machine_type=g.machine_type, source_image=g.source_image, disk_size_gb=g.disk_size_gb,
        subnetwork=subnetwork, service_account_email=service_account_email,
        startup_script=startup_script, tags=tags, accelerator_type=g.accelerator_type,
        accelerator_count=g.accelerator_count, spot=g.spot, min_replicas=g.min_replicas,
        max_replicas=g.max_replicas, labels={"role": cid},
        zones=[f"{s.region}-{z}" for z in g.zone_suffixes], target_shape=g.target_shape, **kw,  # type: ignore[arg-type]
    ))


class PlatformStack(TerraformStack):
    def __init__(self, scope: Construct, settings: Settings) -> None:
        require_https(settings)  # before anything is built: infra.main turns it into its one-line refusal
        name = settings.infra.platform_stack
        super().__init__(scope, name)
        configure(self, settings, name)
        s, lb, sv = settings, settings.serving.load_balancer, settings.serving
        role_id = s.infra.orchestrator_role_id
        self.iam = Iam(self, "iam", IamProps(
            project=s.project_id,
            accounts=accounts(s, role_id),
            custom_roles=[CustomRoleSpec(role_id, f"Tenfold orchestrator ({s.prefix})", ORCHESTRATOR_PERMISSIONS)],
        ))
        for component in ("serving", "training", "inference", "feedback"):
            ArtifactRegistryRepositoryIamMember(
                self, f"{component}-image-reader", repository=s.infra.artifact_repository, location=s.region,
                role="roles/artifactregistry.reader", member=self.iam.accounts[component].member)

        serving_tag, ssh_tag = s.network.serving_tag, s.network.ssh_tag
        self.network = Network(self, "network", NetworkProps(
            network_name=s.network.network, subnet_name=s.network.subnet, subnet_cidr=s.network.subnet_cidr,
            region=s.region, router_name=s.network.router, nat_name=s.network.nat,
            serving_port=sv.port, serving_tag=serving_tag, ssh_tag=ssh_tag,
            peer_tags=[s.network.training_tag, s.network.dataproc_tag],
        ))
        # Two checks on the replicas' port. The load balancer routes on readiness (false while a replica
        # loads its model or drains); autohealing recreates a VM only when liveness fails. The readiness
        # check keeps the construct id the single check had, so Terraform updates it in place.
        ready = ServingHealthCheck(self, "health-check", name=lb.health_check, port=sv.port,
                                   path=sv.server.ready_path, probe=READINESS_PROBE)
        live = ServingHealthCheck(self, "liveness-check", name=lb.autohealing_check, port=sv.port,
                                  path=sv.health_path, probe=LIVENESS_PROBE)

        def fleet(cid: str, g: GpuGroupSettings, account: str, script: str, tags: list[str], **kw: object) -> GpuFleet:
            return gpu_fleet(self, cid, s, g, subnetwork=self.network.subnet.id,
                             service_account_email=self.iam.accounts[account].email, startup_script=script, tags=tags, **kw)

        serving_kw = dict(named_port=(PORT_NAME, sv.port), health_check_id=live.check.id,
                          initial_delay_s=sv.autohealing_initial_delay_s,
                          autoscaling=LbUtilizationScaling(sv.target_utilization))
        self.stable = fleet("serve-stable", sv.stable_fleet, "serving",
                            startup.serving_startup_script(s, sv.stable_fleet, "stable"), [serving_tag, ssh_tag], **serving_kw)
        self.canary = fleet("serve-canary", sv.canary_fleet, "serving",
                            startup.serving_startup_script(s, sv.canary_fleet, "canary"), [serving_tag, ssh_tag], **serving_kw)
        self.training = fleet("training", s.training.fleet, "training", startup.training_startup_script(s), [s.network.training_tag, ssh_tag],
                              target_size=0, externally_resized=True)
        # Offline-inference workers: as many as the requests subscription's backlog needs, inference.backlog_per_worker
        # undelivered messages each, down to min_replicas (0: none while nothing waits).
        self.inference = fleet("inference", s.inference.fleet, "inference", startup.inference_startup_script(s), [ssh_tag],
                               autoscaling=PubsubBacklogScaling(s.messaging.subscriptions["requests"].name,
                                                                s.inference.backlog_per_worker))

        # The feedback sink: without it nothing lands predictions and feedback in the lake, and a canary's
        # accuracy check (and retraining with feedback) never gets a labelled prediction.
        self.feedback = fleet("feedback", s.feedback.fleet, "feedback", startup.feedback_startup_script(s), [ssh_tag],
                              target_size=s.feedback.fleet.min_replicas)

        self.lb = HttpLoadBalancer(self, "load-balancer", HttpLoadBalancerProps(
            address_name=lb.address, health_check_id=ready.check.id, port_name=PORT_NAME,
            stable_backend_name=lb.stable_backend, canary_backend_name=lb.canary_backend,
            stable_group=self.stable.group.instance_group, canary_group=self.canary.group.instance_group,
            max_rate_per_instance=sv.replica_max_rate, url_map_name=lb.url_map, proxy_name=lb.http_proxy,
            bucket_header=lb.bucket_header,
            forwarding_rule_name=lb.forwarding_rule, domain=lb.domain, armor_policy_name=lb.cloud_armor_policy,
            rate_limit_per_ip_per_minute=lb.rate_limit_per_ip_per_minute,
            iap=sv.server.auth_mode == "iap",
        ))

        composer_needs: list[object] = []
        if s.airflow.composer_enabled:
            # Composer's service agent must be able to act for the environment's account (Composer 2/3).
            project = DataGoogleProject(self, "project", project_id=s.project_id)
            agent = ServiceAccountIamMember(
                self, "composer-agent-ext", service_account_id=self.iam.accounts["composer"].name,
                role="roles/composer.ServiceAgentV2Ext",
                member=f"serviceAccount:service-{project.number}@cloudcomposer-accounts.iam.gserviceaccount.com")
            # Creating the environment fails without its account, the account's roles/composer.worker and the agent's
            # grant: Terraform's depends_on on the environment (a construct's node.add_dependency synthesizes nothing in
            # CDK Terrain, and a first deploy created them all at once).
            composer_needs = [self.iam.accounts["composer"], self.iam.project_grants[("composer", "roles/composer.worker")],
                              agent]
        self.orchestration = Orchestration(self, "orchestration", OrchestrationProps(
            enabled=s.airflow.composer_enabled, environment_name=s.airflow.composer_environment, region=s.region,
            image_version=s.airflow.composer_image_version,
            # The account's email by reference (the same address), so Terraform also knows the environment needs it.
            service_account_email=self.iam.accounts["composer"].email,
            env_variables=composer_env(s),
        ), depends_on=composer_needs)

        mo, subs = s.monitoring, s.messaging.subscriptions
        Observability(self, "observability", ObservabilityProps(
            name_prefix=s.prefix, notification_email=mo.notification_email, url_map_name=lb.url_map,
            p99_latency_ms=mo.p99_latency_ms, error_rate_5xx=mo.error_rate_5xx,
            dead_letter_subscriptions=[sub.dead_letter_subscription for sub in subs.values()],
            dead_letter_backlog=mo.dead_letter_backlog, work_subscriptions=[sub.name for sub in subs.values()],
            oldest_unacked_age_s=mo.oldest_unacked_age_s, drift_metric=mo.drift_metric, drift_threshold=mo.drift_psi,
            # The DAGs' alerts are log lines; in Composer they reach Cloud Logging, and this policy pages on them.
            airflow_alerts=LogAlertProps(s.airflow.composer_environment, log_marker(s.env))
            if self.orchestration.composer is not None else None,
        ))

        TerraformOutput(self, "lb-address", value=self.lb.address.address)
        TerraformOutput(self, "url-map", value=self.lb.url_map.name)
        TerraformOutput(self, "composer-airflow-uri",
                        value=self.orchestration.airflow_uri or "Composer disabled (settings.airflow.composer_enabled)")
        for key, bucket in (("lake", s.storage.lake_bucket), ("models", s.storage.models_bucket),
                            ("artifacts", s.storage.artifacts_bucket), ("dataproc-staging", s.storage.dataproc_staging_bucket)):
            TerraformOutput(self, f"bucket-{key}", value=bucket)
