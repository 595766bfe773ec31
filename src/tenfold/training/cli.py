"""``tenfold train`` and ``tenfold evaluate``: train with torchrun, evaluate next to the baselines.

Examples::

    tenfold train --out .tenfold/runs/ref                 # settings' training window, 2 gloo workers
    tenfold train --out /tmp/run --epochs 1 --max-steps 200 --train-months 2013-01:2013-03
    tenfold evaluate --model .tenfold/runs/ref/model      # settings' holdout, both baselines

Heavy imports (torch, scikit-learn) happen inside the commands so ``tenfold --help`` stays fast.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer

from tenfold.config import command_settings
from tenfold.outages import ending


def _months(value: str | None, default: tuple[str, str], flag: str) -> tuple[str, str]:
    """The FIRST and LAST month of ``flag``'s ``value`` (``default`` when not given); a backwards range is refused.

    Backwards, the range held no month: train said "train_months is empty" and evaluate that a window needs a month,
    neither naming the range given the wrong way round."""
    from tenfold.data.partition import Partition

    if not value:
        return default
    first, _, last = value.partition(":")
    last = last or first
    if Partition.parse(first) > Partition.parse(last):
        raise ValueError(f"{flag} {value}: {first} is after {last}: give the first month first")
    return first, last


def train_command(
    out: Annotated[str | None, typer.Option(help="output folder or URI (gs://..., file://...) for model/ and "
                                            "checkpoints/; default <home>/runs/<time>")] = None,
    env: Annotated[str | None, typer.Option(help="local, dev or prod; default TENFOLD_ENV")] = None,
    train_months: Annotated[str | None, typer.Option(help="FIRST:LAST months, e.g. 2013-01:2013-09; default settings")] = None,
    nproc: Annotated[int | None, typer.Option(min=1, help="workers on this node; default "
                                                "settings.training.nproc_per_node")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="ceiling; default settings.training.max_epochs "
                                                 "(early stopping on the validation slice picks the epoch)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="per worker")] = 512,
    max_steps: Annotated[int | None, typer.Option(min=1)] = None,
    # The bound of tenfold.training.config.MAX_SEED (not imported here: `tenfold --help` stays light).
    seed: Annotated[int, typer.Option(min=0, max=2**63 - 1)] = 0,
    timeout_s: Annotated[float | None, typer.Option(min=1, help="wall-clock bound in seconds; default "
                                                    "settings.training.job_timeout_s")] = None,
) -> None:
    """Train the workload's model with torchrun (DDP); a re-run with the same --out resumes."""
    from tenfold.data.lake import Lake, LakeError, month_range
    from tenfold.training.config import TrainConfig
    from tenfold.training.data import require_published
    from tenfold.training.launch import TrainingFailed, run_torchrun

    settings = command_settings(env)
    if settings.training.nnodes > 1:  # torchrun here would wait for nodes that never come, then time out
        typer.echo(f"error: `tenfold train` trains on this machine, and the {settings.env} settings train on "
                   f"{settings.training.nnodes} nodes (the GPU group the train_model DAG launches, docs/deploy.md): "
                   "trigger train_model there, or train locally without --env / TENFOLD_ENV", err=True)
        raise typer.Exit(2)
    try:
        first, last = _months(train_months, settings.training.train_months, "--train-months")
        # A URI as given (a Path would make gs://b/run a local folder gs:/b/run), a folder from here.
        target: str | Path = out or settings.local.home / "runs" / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        window = month_range(first, last)
        # The window's content pinned, as train_model pins it: the ranks refuse other rows, and a re-run with the same
        # --out after a month was re-published is refused (it resumed silently on the new rows, mid-permutation).
        lake, table = Lake.from_settings(settings), settings.storage.features_table
        # A month never published (or withdrawn) is refused here, naming every one: pinned as None, a re-run with the
        # same --out was refused as "a different config" instead, its checkpoints thrown away for nothing.
        require_published(lake, table, window)
        digest = lake.content_digest(table, window)
        cfg = TrainConfig.from_settings(
            settings, train_months=tuple(p.label for p in window), batch_size=batch_size,
            max_steps=max_steps, seed=seed, data_digest=digest, **({"epochs": epochs} if epochs else {}),
        )
        result = run_torchrun(settings, cfg, target, nproc=nproc, timeout_s=timeout_s)
    except (LakeError, ValueError) as exc:  # LakeError: missing, stale, re-published or corrupt features
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except TrainingFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except OSError as exc:  # --out under a file or not writable, a full disk
        typer.echo(ending(exc, "tenfold train", settings.local.home, debug_hint="with TENFOLD_DEBUG=1"),
                   err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps({k: v for k, v in result.to_dict().items() if k not in ("manifests", "config")}, indent=2))
    typer.echo(f"model saved in {result.model_dir}")


def evaluate_command(
    model: Annotated[str, typer.Option(help="a model folder (meta.json, weights.pt, preprocessing.json), or its "
                                       "file:// URI as `tenfold train` prints it")],
    env: Annotated[str | None, typer.Option(help="local, dev or prod; default TENFOLD_ENV")] = None,
    train_months: Annotated[str | None, typer.Option(help="FIRST:LAST window the baselines fit on; default the model's own training months (its meta.json), else settings.training.train_months")] = None,
    holdout_months: Annotated[str | None, typer.Option(help="FIRST:LAST later months to evaluate on; default settings")] = None,
    baselines: Annotated[bool, typer.Option(help="also fit and score the rate and gradient-boosting baselines")] = True,
    report: Annotated[Path | None, typer.Option(help="write the metrics as JSON here")] = None,
) -> None:
    """Score a model on the time-based holdout, side by side with the baselines."""
    from tenfold.data.lake import Lake, LakeError, month_range
    from tenfold.model.io import ModelLoadError
    from tenfold.training.evaluate import (
        EvaluationReport,
        calibration_text,
        check_time_split,
        compare,
        evaluate_model,
        evaluate_with_baselines,
    )

    settings = command_settings(env)
    try:
        model_dir = _model_folder(model)
        learnt = _trained_on(model_dir)
        # The baselines' window defaults to the model's own (the table's title names both), not the settings' split.
        default_train = (learnt[0], learnt[-1]) if learnt else settings.training.train_months
        train = month_range(*_months(train_months, default_train, "--train-months"))
        holdout = month_range(*_months(holdout_months, settings.training.holdout_months, "--holdout-months"))
        lake = Lake.from_settings(settings)
        check_time_split(train, holdout)
        if learnt and holdout[0].label <= learnt[-1]:
            # Held out months the model learnt, or months before the last it learnt: scored on data it saw, or on the
            # past of what it knows, it would look better than it is (time leaks backwards as well as forwards).
            raise ValueError(f"the model in {model} was trained on {learnt[0]}..{learnt[-1]}: holdout "
                             f"{holdout[0].label}..{holdout[-1].label} does not come after it; give --holdout-months "
                             f"after {learnt[-1]}")
        table = settings.storage.features_table
        if baselines:
            result = evaluate_with_baselines(model_dir, lake, train, holdout, table=table)
        else:
            result = EvaluationReport([p.label for p in train], [p.label for p in holdout],
                                      evaluate_model(model_dir, lake, holdout, table=table))
    except (LakeError, ModelLoadError, ValueError) as exc:  # LakeError: missing, stale or unreadable features
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(result.table(learnt) if baselines else compare([result.model]))
    typer.echo("")
    if result.calibration:
        typer.echo(f"calibration: {result.calibration['description']} (fitted on the validation slice)")
    typer.echo(calibration_text(result.model))
    if report:
        try:
            result.save(report)
        except OSError as exc:  # --report under a file or not writable, a full disk
            typer.echo(ending(exc, "tenfold evaluate", settings.local.home,
                              debug_hint="with TENFOLD_DEBUG=1"), err=True)
            raise typer.Exit(1) from exc
        typer.echo(f"report written to {report}")


def _model_folder(model: str) -> Path:
    """The local folder ``--model`` names: a path, or a ``file://`` URI (``tenfold train --out file://...`` prints
    one). It was a Path: file:///x/model became the relative folder file:/x/model, and gs://b/run/model the folder
    gs:/b/run/model, "missing meta.json, not a saved model". A model in a bucket is refused, naming the URI as given."""
    from tenfold.fsio import file_uri_path

    if model.startswith("file://"):
        return file_uri_path(model)
    if "://" in model:
        raise ValueError(f"--model {model} is not on this machine: `tenfold evaluate` reads a model folder here; copy "
                         f"it first (e.g. `gcloud storage cp --recursive {model} .`) and pass that folder")
    return Path(model)


def _trained_on(model: Path) -> list[str]:
    """The months the model in ``model`` was trained on, from its ``meta.json`` (none known: [])."""
    from tenfold.model.io import ModelLoadError, read_meta

    try:
        months = read_meta(model).get("extra", {}).get("train_config", {}).get("train_months") or []
    except (ModelLoadError, AttributeError):  # the load below names what is wrong with the folder
        return []
    return sorted(str(m) for m in months)


def register(app: typer.Typer) -> None:
    """Mount ``train`` and ``evaluate`` on the top-level ``tenfold`` app."""
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
