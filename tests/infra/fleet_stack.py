"""The offline-inference fleet, synthesized on its own until its worker module lands.

The platform stack deploys only fleets whose module exists (``tests/unit/test_deployables.py``), so the
inference fleet waits for ``tenfold.inference.worker``. Its construct (template, group and the
Pub/Sub-backlog autoscaler) is kept tested here, built by the platform stack's own ``gpu_fleet``.
"""

from __future__ import annotations

from cdktn import TerraformStack
from cdktn_provider_google.service_account import ServiceAccount
from constructs import Construct

from infra.components.gpu_fleet import PubsubBacklogScaling
from infra.stacks.common import configure
from infra.stacks.platform import gpu_fleet
from tenfold.config import Settings
from tenfold.fleets import startup_script


def stack_name(settings: Settings) -> str:
    return f"{settings.prefix}-inference-fleet"


class InferenceFleetStack(TerraformStack):
    def __init__(self, scope: Construct, settings: Settings) -> None:
        name = stack_name(settings)
        super().__init__(scope, name)
        configure(self, settings, name)
        s, g = settings, settings.inference.fleet
        account = ServiceAccount(self, "inference-sa", account_id=s.service_accounts.inference, project=s.project_id)
        gpu_fleet(self, "inference", s, g,
                  subnetwork=f"projects/{s.project_id}/regions/{s.region}/subnetworks/{s.network.subnet}",
                  service_account_email=account.email,
                  startup_script=startup_script(s, g, "inference", ["true"], detach=True), tags=[f"{s.prefix}-ssh"],
                  autoscaling=PubsubBacklogScaling(s.messaging.subscriptions["requests"].name, s.inference.backlog_per_worker))
