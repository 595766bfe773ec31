"""The feedback sink in the platform stack: what its VM runs, as whom, and what that account may touch.

Without it nothing lands predictions and feedback in the cloud lake: the canary's accuracy check would see no
labelled prediction (every rollout fails safe) and retraining would get no feedback rows.
"""

from __future__ import annotations

from typing import Any

import pytest

from infra.stacks.synthesized import Synthesized as Synth
from infra.stacks.synthesized import account_lid, resources, startup_command
from tenfold import fleets
from tenfold.config import get_settings

ENVS = ("dev", "prod")


@pytest.mark.parametrize("env", ENVS)
def test_one_vm_runs_the_sink_in_the_image_as_the_feedback_account(synth: Synth, env: str) -> None:
    s = get_settings(env)
    stack = synth.stack(s.infra.platform_stack)
    g = s.feedback.fleet
    template, script, run = startup_command(stack, g.instance_template)
    assert run.endswith(f"{s.container_image} python -m tenfold.cli feedback sink")
    assert "-d --restart=always --name tenfold-feedback" in run and f"-e TENFOLD_ENV={env}" in run
    assert script == fleets.feedback_startup_script(s) and "tenfold.cli" in fleets.LAUNCHED_MODULES
    assert "guest_accelerator" not in template and "nvidia" not in script
    lid = account_lid(stack, s.service_accounts.feedback)
    assert template["service_account"]["email"] == f"${{google_service_account.{lid}.email}}"
    (group,) = [m for m in resources(stack, "google_compute_region_instance_group_manager").values()
                if m["name"] == g.instance_group]
    assert group["target_size"] == 1
    assert not [a for a in resources(stack, "google_compute_region_autoscaler").values() if g.instance_group in str(a)]


@pytest.mark.parametrize("env", ENVS)
def test_the_feedback_account_writes_only_the_sinks_folders_and_pulls_only_its_subscriptions(
    synth: Synth, env: str, condition_allows: Any
) -> None:
    s = get_settings(env)
    st, subs = s.storage, s.messaging.subscriptions
    stack = synth.stack(s.infra.platform_stack)
    member = f"${{google_service_account.{account_lid(stack, s.service_accounts.feedback)}.member}}"
    grants = {rtype: [g for g in resources(stack, rtype).values() if g["member"] == member]
              for rtype in ("google_project_iam_member", "google_storage_bucket_iam_member", "google_pubsub_topic_iam_member",
                            "google_pubsub_subscription_iam_member", "google_secret_manager_secret_iam_member")}
    assert sorted(g["role"] for g in grants["google_project_iam_member"]) == ["roles/logging.logWriter"]
    assert sorted((g["subscription"], g["role"]) for g in grants["google_pubsub_subscription_iam_member"]) == sorted(
        [(subs["predictions"].name, "roles/pubsub.subscriber"), (subs["feedback"].name, "roles/pubsub.subscriber")])
    assert grants["google_pubsub_topic_iam_member"] == [] and grants["google_secret_manager_secret_iam_member"] == []
    # No one else pulls the sink's subscriptions: a second puller takes messages away from the sink.
    pullers = {(g["subscription"], g["member"]) for g in resources(stack, "google_pubsub_subscription_iam_member").values()
               if g["subscription"] in (subs["predictions"].name, subs["feedback"].name)}
    assert pullers == {(subs["predictions"].name, member), (subs["feedback"].name, member)}
    lake = grants["google_storage_bucket_iam_member"]
    assert {(g["bucket"], g["role"]) for g in lake} == {(st.lake_bucket, "roles/storage.objectUser")}
    # One binding per folder (IAM's 12 logical operators per condition): allowed if any binding allows it.
    expression = " || ".join(f"({g['condition']['expression']})" for g in lake)
    objects = f"projects/_/buckets/{st.lake_bucket}/objects/"
    staging = st.lake_layout.staging_dir(st.labelled_table, "year=2013", "month=02", "feedback-join-x")
    for name in (f"{st.predictions_table}/year=2013/month=02/part-1.parquet",
                 f"{st.feedback_table}/year=2013/month=02/part-1.parquet",
                 f"{st.labelled_table}/year=2013/month=02/_SUCCESS", f"{st.labelled_table}/_join.lock",
                 f"{staging}/part-00000.parquet",
                 # where the join moves a log file it cannot read (tenfold.feedback.log.quarantined_path): refused,
                 # the move failed every join after it, and the labelled table stopped
                 st.lake_layout.quarantine_dir(st.predictions_table, "year=2013", "month=2", "unreadable-logs", "l.parquet"),
                 st.lake_layout.quarantine_dir(st.feedback_table, "year=2013", "month=2", "unreadable-logs", "l.parquet"),
                 # where its publish of a labelled month moves a data folder whose withdrawal died before the move
                 # (Lake._collect_garbage): refused, every publish of that month failed after its commit
                 st.lake_layout.quarantine_dir(st.labelled_table, "year=2013", "month=2", "corrupt-x", "part-00000.parquet")):
        assert condition_allows(expression, obj=objects + name), name
    refused_batch = st.lake_layout.quarantine_dir(st.features_table, "year=2013", "month=2", "k1", "part-0.parquet")
    assert not condition_allows(expression, obj=objects + refused_batch)
    for prefix in (f"{st.predictions_table}/", f"{st.feedback_table}/year=2013/", f"{st.labelled_table}/"):
        assert condition_allows(expression, list_prefix=prefix), prefix
    for other in (st.features_table, "raw_flights", s.inference.work_prefix, st.lake_layout.quarantine):
        assert not condition_allows(expression, obj=f"{objects}{other}/year=2013/month=02/x.parquet"), other
        assert not condition_allows(expression, list_prefix=f"{other}/"), other
