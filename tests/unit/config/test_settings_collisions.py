"""Settings that pass alone and collide with what they configure: a lake table named like a workload's lookup table,
and a cloud training node given more nccl ranks than its VM has GPUs."""

from __future__ import annotations

import pytest

from tenfold.config import build_settings, settings_refusal
from tenfold.workloads import WorkloadError, get_workload


@pytest.mark.parametrize("env", ["local", "dev"])
@pytest.mark.parametrize(("variable", "table"), [
    ("TENFOLD_STORAGE__FEATURES_TABLE", "lookups_weather"),
    ("TENFOLD_STORAGE__LABELLED_TABLE", "lookups_routes"),
])
def test_a_lake_table_named_like_a_lookup_table_of_the_workload_is_refused_naming_its_variable(
        env: str, variable: str, table: str) -> None:
    """The flights workload's lookups are published as lookups_<name>: a features table of that name got the features
    and the weather lookup published into one table (each overwriting the other), and synth crashed in jsii. The name
    passes the settings alone (it is one lowercase name, unlike the other tables); the workload refuses it, as
    every command and synth reach it (get_workload with the settings), in one line naming the variable."""
    settings = build_settings(env, {variable: table})  # type: ignore[arg-type]
    with pytest.raises(ValueError) as refused:
        get_workload(settings)
    assert isinstance(refused.value, WorkloadError)  # a refusal, never retried (tenfold.outages)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{variable}={table!r} is also the lake table of lookup {table.split('_', 1)[1]!r} "
                              "of workload 'flights'"), message
    assert f"set {variable} to another name" in message, message
    assert settings_refusal(refused.value) == f"error: {message}"


def test_a_lake_layout_folder_named_like_a_lookup_table_is_refused_naming_its_setting() -> None:
    """The layout folders are set in settings only (no variable): the refusal names the setting."""
    s = build_settings("dev")
    layout = s.storage.lake_layout.model_copy(update={"quarantine": "lookups_weather"})
    relaid = s.model_copy(update={"storage": s.storage.model_copy(update={"lake_layout": layout})})
    with pytest.raises(WorkloadError, match=r"^storage\.lake_layout\.quarantine='lookups_weather' is also the lake "
                                            r"table of lookup 'weather'.*; set storage\.lake_layout\.quarantine to "
                                            "another name"):
        get_workload(relaid)


def test_a_lake_table_that_only_shares_the_lookups_prefix_is_accepted() -> None:
    """Only the workload's own lookup tables collide: lookups_archive is no lookup of flights."""
    settings = build_settings("dev", {"TENFOLD_STORAGE__FEATURES_TABLE": "lookups_archive"})
    assert get_workload(settings).name == "flights"
    moved = build_settings("dev", {"TENFOLD_STORAGE__FEATURES_TABLE": "lookups_weather",
                                   "TENFOLD_STORAGE__LOOKUPS_TABLE": "online"})
    assert get_workload(moved).name == "flights"  # the lookups now live in online_<name>


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_more_cloud_nccl_ranks_per_node_than_the_training_vms_have_gpus_are_refused(env: str) -> None:
    """nccl gives each rank a GPU: TENFOLD_TRAINING__NPROC_PER_NODE=2 on the one-L4 training VMs passed settings and
    synth, and failed only inside a booted (paid) GPU node (the worker's TooFewGpus)."""
    assert build_settings(env).training.fleet.accelerator_count == 1  # type: ignore[arg-type]
    with pytest.raises(ValueError) as refused:
        build_settings(env, {"TENFOLD_TRAINING__NPROC_PER_NODE": "2"})  # type: ignore[arg-type]
    line = settings_refusal(refused.value)
    assert "\n" not in line
    assert "TENFOLD_TRAINING__NPROC_PER_NODE=2" in line and "training.fleet.accelerator_count" in line, line
    assert "have 1 GPU each" in line and "set TENFOLD_TRAINING__NPROC_PER_NODE to at most 1" in line, line


def test_nccl_ranks_within_the_training_vms_gpus_are_accepted() -> None:
    base = build_settings("dev")
    fleet = base.training.fleet.model_copy(update={"machine_type": "g2-standard-24", "accelerator_count": 2})
    two_gpus = base.training.model_copy(update={"nproc_per_node": 2, "fleet": fleet})
    s = build_settings("dev", training=two_gpus)
    assert (s.training.backend, s.training.nproc_per_node, s.training.fleet.accelerator_count) == ("nccl", 2, 2)
    assert build_settings("dev", {"TENFOLD_TRAINING__NPROC_PER_NODE": "1"}).training.nproc_per_node == 1


def test_gloo_ranks_need_no_gpu() -> None:
    """Local training (gloo, on CPU) starts any number of ranks, and so does a cloud node set to gloo."""
    assert build_settings("local", {"TENFOLD_TRAINING__NPROC_PER_NODE": "2"}).training.nproc_per_node == 2
    cpu = build_settings("dev", {"TENFOLD_TRAINING__NPROC_PER_NODE": "2", "TENFOLD_TRAINING__BACKEND": "gloo"})
    assert (cpu.training.backend, cpu.training.nproc_per_node) == ("gloo", 2)
