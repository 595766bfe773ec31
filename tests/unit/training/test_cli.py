"""``tenfold train`` / ``tenfold evaluate`` refuse bad input with exit code 2 and a message to act on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tenfold.cli import app
from tenfold.config import get_settings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path))
    monkeypatch.setenv("TENFOLD_ENV", "local")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_train_on_unpublished_months_is_refused_before_launching(home: Path) -> None:
    out = CliRunner().invoke(app, ["train", "--train-months", "2013-01:2013-02", "--out", str(home / "run")])
    assert out.exit_code == 2
    assert "2013-01, 2013-02 have no _SUCCESS manifest" in out.output and "build_features" in out.output
    assert not (home / "run" / "model").exists()
    # A re-run into a folder of an earlier run (whose window was published then; a month withdrawn since): the months
    # are named, not "a different config (changed: data_digest)", which told the user to throw its checkpoints away.
    (home / "again").mkdir()
    (home / "again" / "train_config.json").write_text('{"data_digest": "abc", "train_months": ["2013-01", "2013-02"]}')
    out = CliRunner().invoke(app, ["train", "--train-months", "2013-01:2013-02", "--out", str(home / "again")])
    assert out.exit_code == 2 and "2013-01, 2013-02 have no _SUCCESS manifest" in out.output, out.output
    assert "different config" not in out.output


def test_evaluate_a_folder_that_is_not_a_model(home: Path) -> None:
    out = CliRunner().invoke(app, ["evaluate", "--model", str(home / "nothing")])
    assert out.exit_code == 2 and "meta.json is missing" in out.output


def test_evaluate_refuses_a_holdout_inside_the_training_window(home: Path) -> None:
    out = CliRunner().invoke(app, ["evaluate", "--model", str(home), "--holdout-months", "2013-03:2013-04"])
    assert out.exit_code == 2 and "does not come after the training window" in out.output


def test_evaluate_refuses_a_holdout_inside_the_models_own_training_window(home: Path) -> None:
    """Only the --train-months argument (default Jan-Sep) was checked: a model trained on Jan-Nov was scored on
    Oct-Dec, two months it had learnt, under a title that said "trained on 2013-01..2013-09"."""
    import json

    model = home / "model"
    model.mkdir()
    (model / "meta.json").write_text(json.dumps({"version": 1, "extra": {"train_config": {
        "train_months": [f"2013-{m:02d}" for m in range(1, 12)]}}}))
    out = CliRunner().invoke(app, ["evaluate", "--model", str(model)])  # the window defaults to the model's own
    assert out.exit_code == 2 and "does not come after the training window (ends 2013-11)" in out.output, out.output
    out = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--train-months", "2013-01:2013-03"])
    assert out.exit_code == 2, out.output
    assert ("was trained on 2013-01..2013-11: holdout 2013-10..2013-12 does not come after it" in out.output
            and "give --holdout-months after 2013-11" in out.output), out.output
    # Nor a holdout before the model's own window (a model that learnt from later months, scored on the past)
    out = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--train-months", "2013-01:2013-01",
                                   "--holdout-months", "2013-02:2013-02"])
    assert out.exit_code == 2 and "holdout 2013-02..2013-02 does not come after it" in out.output, out.output


def test_evaluate_refuses_a_month_that_is_not_one(home: Path) -> None:
    out = CliRunner().invoke(app, ["evaluate", "--model", str(home), "--holdout-months", "2013-1x"])
    assert out.exit_code == 2 and "'2013-1x' is not a month" in out.output
    assert "Traceback" not in out.output


@pytest.mark.parametrize(("command", "flag", "first", "last"), [("train", "--train-months", "2013-03", "2013-01"),
                                                                ("evaluate", "--train-months", "2013-03", "2013-01"),
                                                                ("evaluate", "--holdout-months", "2013-09", "2013-08")])
def test_a_backwards_month_range_is_refused_naming_both_months(home: Path, command: str, flag: str, first: str,
                                                               last: str) -> None:
    """A range whose first month is after its last holds no month: train said "train_months is empty" and evaluate
    that a window needs at least one month, neither saying the range was given backwards."""
    model = ["--model", str(home / "model")] if command == "evaluate" else []
    out = CliRunner().invoke(app, [command, *model, flag, f"{first}:{last}"])
    assert out.exit_code == 2, out.output
    assert out.output == f"error: {flag} {first}:{last}: {first} is after {last}: give the first month first\n"
    assert not (home / "runs").exists()  # refused before any run folder


def test_evaluate_refuses_a_model_whose_config_is_not_a_mapping(home: Path) -> None:
    model = home / "model"
    model.mkdir()
    (model / "meta.json").write_text('{"version": 1, "config": null, "vocab_sizes": {}, "categorical_columns": [], "num_inputs": 1, '
                                     '"weights_sha256": "0"}')
    out = CliRunner().invoke(app, ["evaluate", "--model", str(model)])
    assert out.exit_code == 2 and "meta.json lacks or garbles" in out.output, out.output


def test_train_on_a_corrupt_features_file_is_a_one_line_refusal(home: Path) -> None:
    """Only MissingFeaturesError and ValueError were caught: a corrupt (or stale, or re-published) partition, another
    LakeError, ended `tenfold train` in a traceback instead of the lake's message."""
    from tenfold.data.lake import Lake, month_range
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    lake = Lake.from_settings(get_settings())
    publish_synthetic_features(lake, month_range("2013-01", "2013-02"), 50, seed=1)
    data = sorted((home / "lake").rglob("*.parquet"))
    assert data, "no features file was published"
    data[0].write_bytes(data[0].read_bytes()[: len(data[0].read_bytes()) // 2])  # bit rot: half the file is gone
    out = CliRunner().invoke(app, ["train", "--train-months", "2013-01:2013-02", "--batch-size", "16",
                                   "--out", str(home / "run")])
    assert out.exit_code == 2, out.output
    assert out.output.startswith("error: ") and "is corrupt" in out.output and "re-publish the partition" in out.output
    assert "Traceback" not in out.output and not (home / "run" / "model").exists()


def test_train_with_zero_workers_per_node_is_refused_before_any_run_folder(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nproc_per_node=0 was accepted: `tenfold train` divided by zero in the launcher after creating the run folder."""
    monkeypatch.setenv("TENFOLD_TRAINING__NPROC_PER_NODE", "0")
    out = CliRunner().invoke(app, ["train", "--out", str(home / "run")])
    assert out.exit_code == 2 and isinstance(out.exception, SystemExit), (repr(out.exception), out.output)
    assert out.output.startswith("error: invalid settings: TrainingSettings.nproc_per_node: Input should be greater "
                                 "than or equal to 1 (got 0). Fix the TENFOLD_* environment variable")
    assert not (home / "run").exists()


@pytest.mark.parametrize("option", [["--nproc", "0"], ["--nproc", "-2"], ["--timeout-s", "0"], ["--timeout-s", "-5"]])
def test_train_refuses_no_workers_or_no_time_before_any_run_folder(home: Path, option: list[str]) -> None:
    """--nproc 0 fell back to the settings' workers in silence (-2 reached torchrun), and --timeout-s 0 or -5 killed
    the job as soon as it started ("ran past its -5 s bound")."""
    out = CliRunner().invoke(app, ["train", "--out", str(home / "run"), *option])
    assert out.exit_code == 2 and isinstance(out.exception, SystemExit), (repr(out.exception), out.output)
    said = " ".join(out.output.replace("│", " ").split())  # typer's error box, its lines joined
    assert f"Invalid value for '{option[0]}'" in said and "greater than or equal to 1" in said, said
    assert not (home / "run").exists()


@pytest.mark.parametrize("command", [["train"], ["evaluate", "--model", "m"]])
def test_an_unknown_env_option_is_one_line_naming_the_option(home: Path, command: list[str]) -> None:
    """`tenfold train --env staging` read the settings outside the command's error handling: a traceback that blamed
    TENFOLD_ENV, which the user never set."""
    out = CliRunner().invoke(app, [*command, "--env", "staging"])
    assert out.exit_code == 2 and isinstance(out.exception, SystemExit), (repr(out.exception), out.output)
    assert out.output == "error: --env staging is not an environment: choose one of local, dev, prod\n"


@pytest.mark.parametrize("command", [["train", "--help"], ["quality", "check", "--help"]])
def test_the_help_does_not_assume_the_flights_workload(command: list[str]) -> None:
    out = CliRunner().invoke(app, command, terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "flight-delay" not in out.output and "flights or features" not in out.output
    assert "workload" in out.output


def test_an_out_folder_the_system_refuses_is_one_line_naming_it(home: Path) -> None:
    """--out under a regular file (as a full disk or a read-only folder would): an OSError from the launch ended
    `tenfold train` in a traceback."""
    from tenfold.data.lake import Lake, month_range
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    publish_synthetic_features(Lake.from_settings(get_settings()), month_range("2013-01", "2013-02"), 50)
    (home / "afile").write_text("not a folder")
    out = CliRunner().invoke(app, ["train", "--train-months", "2013-01:2013-02", "--out", str(home / "afile" / "run")])
    assert out.exit_code == 1, out.output
    assert out.output.startswith("error: `tenfold train` cannot go on: ") and f"{home / 'afile'}" in out.output
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1


def test_the_demo_on_a_home_the_system_refuses_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setenv("TENFOLD_HOME", str(tmp_path / "afile" / "home"))
    monkeypatch.setenv("TENFOLD_ENV", "local")
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(app, ["demo"])
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 1, out.output
    assert out.output.startswith("error: `tenfold demo` cannot go on: ") and "TENFOLD_HOME" in out.output
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1, out.output


def test_train_into_a_uri_writes_there_not_into_a_local_folder_named_after_it(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--out went through Path: gs://b/run became the local folder gs:/b/run (file:///x/run the folder file:/x/run),
    so the run trained into the working folder instead of the bucket."""
    from tenfold.data.lake import Lake, month_range
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    publish_synthetic_features(Lake.from_settings(get_settings()), month_range("2013-01", "2013-02"), 300, seed=3)
    monkeypatch.chdir(tmp_path)
    bucket = tmp_path / "bucket"
    out = CliRunner().invoke(app, ["train", "--train-months", "2013-01:2013-02", "--out", f"{bucket.as_uri()}/run",
                                   "--nproc", "1", "--max-steps", "4", "--epochs", "1", "--batch-size", "32"])
    assert out.exit_code == 0, out.output
    assert (bucket / "run" / "model").is_dir()
    assert not (tmp_path / "file:").exists()


def test_train_pins_the_windows_content_so_a_rerun_after_a_republish_is_refused(home: Path) -> None:
    """Run without a digest, a re-run with the same --out after a month was re-published resumed silently on the new
    rows, its (epoch, batch) position pointing into another permutation, with the old vocabularies. A real run first,
    so the refusal is the launch's own comparison with the folder's config, and what it protects is on disk."""
    from tenfold.data.lake import Lake, month_range
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    lake, table = Lake.from_settings(get_settings()), get_settings().storage.features_table
    window = month_range("2013-01", "2013-02")
    publish_synthetic_features(lake, window, 300, seed=3)
    run = home / "run"
    args = ["train", "--train-months", "2013-01:2013-02", "--out", str(run), "--nproc", "1", "--max-steps", "4",
            "--epochs", "1", "--batch-size", "32"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output

    def kept() -> dict[str, bytes]:
        """The files a resume would build on: the checkpoints, the model, and the pinned config (overwritten before
        the refusal, the next re-run would resume on the new rows)."""
        files = [*run.glob("checkpoints/**/*"), *run.glob("model/**/*"), run / "train_config.json"]
        return {f.relative_to(run).as_posix(): f.read_bytes() for f in files if f.is_file()}

    before = kept()
    assert any(name.startswith("checkpoints/") for name in before), sorted(before)
    digest = lake.content_digest(table, window)
    publish_synthetic_features(lake, month_range("2013-02", "2013-02"), 300, seed=4)  # February's rows, redrawn
    assert lake.content_digest(table, window) != digest
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2, out.output
    assert (f"{run} holds a run with a different config (changed: ['data_digest']); use a fresh output folder"
            in out.output), out.output
    assert kept() == before


@pytest.mark.parametrize("command", [["train"], ["evaluate", "--model", "m"], ["models", "list"]])
def test_env_settings_that_do_not_parse_are_one_line_not_pydantics_dump(home: Path, command: list[str],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The root checks TENFOLD_ENV's settings only: a check of prod's alone (a canary group's size) printed
    pydantic's multi-line dump under --env prod, where `tenfold config get` said it in one line."""
    monkeypatch.setenv("TENFOLD_PROJECT_ID", "tenfold-test-1")
    monkeypatch.setenv("TENFOLD_SERVING__CANARY_FLEET__MAX_REPLICAS", "2")
    get_settings.cache_clear()
    out = CliRunner().invoke(app, [*command, "--env", "prod"])
    get_settings.cache_clear()
    assert out.exit_code == 2, out.output
    (line,) = out.output.strip().splitlines()
    assert line.startswith("error: invalid settings:") and "pydantic.dev" not in line, line


def test_train_under_a_cloud_env_is_refused_before_reading_the_lake(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dev and prod train on 2 nodes: `tenfold train --env dev` read the cloud lake, then asked for an rdzv_host, and
    with one set, torchrun waited for a second node that never came."""
    monkeypatch.setenv("TENFOLD_PROJECT_ID", "tenfold-test-1")
    get_settings.cache_clear()
    out = CliRunner().invoke(app, ["train", "--env", "dev", "--train-months", "2013-01:2013-02"])
    get_settings.cache_clear()
    assert out.exit_code == 2, out.output
    assert "the dev settings train on 2 nodes" in out.output and "rdzv_host" not in out.output


def test_evaluate_takes_the_file_uri_train_prints(home: Path) -> None:
    """--model was a Path: `tenfold train --out file:///x/run` prints "model saved in file:///x/run/model", and that
    URI became the relative folder file:/x/run/model ("meta.json is missing ... not a saved model")."""
    import torch

    from tenfold.data.lake import Lake, month_range
    from tenfold.model import Preprocessor, save_model
    from tenfold.workloads.flights import WORKLOAD
    from tenfold.workloads.flights.contract import CONTRACT
    from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig
    from tenfold.workloads.flights.synthetic import publish_synthetic_features, synthetic_features

    holdout = month_range(*get_settings().training.holdout_months)
    publish_synthetic_features(Lake.from_settings(get_settings()), holdout, 100, seed=2)
    pre = Preprocessor.fit(synthetic_features(holdout[0], 100, seed=1), CONTRACT)
    config = ModelConfig(embedding_dim=4, hidden=(8,), dropout=0.0)
    torch.manual_seed(0)
    model = home / "a run" / "model"  # a space: the URI has it percent-escaped
    save_model(model, FlightDelayModel(config, list(pre.vocab_sizes.values()), pre.num_inputs), config, pre,
               workload=WORKLOAD.name)
    out = CliRunner().invoke(app, ["evaluate", "--model", model.as_uri(), "--no-baselines"])
    assert out.exit_code == 0, out.output
    scored = next(line.split() for line in out.output.splitlines() if line.startswith("model "))
    assert scored[-2] == "300", out.output  # the model scored on the whole holdout: 3 months of 100 rows


def test_evaluate_refuses_a_model_in_a_bucket_naming_its_uri(home: Path) -> None:
    """gs://b/run/model went through Path: "gs:/b/run/model/meta.json is missing ... not a saved model", the URI
    mangled and the cause misdiagnosed."""
    out = CliRunner().invoke(app, ["evaluate", "--model", "gs://b/run/model"])
    assert out.exit_code == 2, out.output
    assert out.output.strip() == ("error: --model gs://b/run/model is not on this machine: `tenfold evaluate` reads a "
                                  "model folder here; copy it first (e.g. `gcloud storage cp --recursive "
                                  "gs://b/run/model .`) and pass that folder"), out.output


@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_a_seed_out_of_range_is_refused_by_the_option_before_any_lake_is_read(home: Path, seed: str) -> None:
    """`--seed` carries TrainConfig's bound (MAX_SEED) itself: refused as the option, before the window's months are
    checked or its content digested (the config's own refusal came after both, naming `seed`, not `--seed`)."""
    from tenfold.training.config import MAX_SEED

    out = CliRunner().invoke(app, ["train", "--train-months", "2013-01:2013-02", "--seed", seed,
                                   "--out", str(home / "run")])
    assert out.exit_code == 2, out.output
    assert "Invalid value for '--seed'" in out.output, out.output
    assert (str(MAX_SEED) if seed != "-1" else "greater than or equal to 0") in out.output, out.output
    assert "unpublished" not in out.output and not (home / "run").exists()
