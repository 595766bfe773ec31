"""Cloud Composer 3 (optional) running Tenfold's DAGs; Dataproc Serverless needs no standing resources."""

from __future__ import annotations

from dataclasses import dataclass, field

from cdktn_provider_google.composer_environment import ComposerEnvironment
from constructs import Construct


@dataclass(frozen=True)
class OrchestrationProps:
    enabled: bool
    environment_name: str
    region: str
    image_version: str
    service_account_email: str
    env_variables: dict[str, str] = field(default_factory=dict)  # TENFOLD_ENV, TENFOLD_PROJECT_ID
    environment_size: str = "ENVIRONMENT_SIZE_SMALL"


class Orchestration(Construct):
    def __init__(self, scope: Construct, id_: str, props: OrchestrationProps) -> None:
        super().__init__(scope, id_)
        self.composer: ComposerEnvironment | None = None
        if not props.enabled:
            return
        self.composer = ComposerEnvironment(
            self, "composer",
            name=props.environment_name,
            region=props.region,
            config={
                "environment_size": props.environment_size,
                "software_config": {"image_version": props.image_version, "env_variables": props.env_variables},
                # Composer 3 runs its cluster in a Google tenant project; only the identity is ours.
                "node_config": {"service_account": props.service_account_email},
            },
        )

    @property
    def airflow_uri(self) -> str | None:
        return self.composer.config.airflow_uri if self.composer else None
