"""The champion/challenger gate: promote a challenger only if it beats the current champion.

Every score the gate sees is a :class:`Scored`: metrics together with *which model* produced them
(a registry version id, or ``baseline:<name>``) and *which holdout* they were measured on (the
holdout partitions and their manifest digests). That makes the classic pipeline bug, where the
"champion" metrics handed to the gate are really the challenger's own (so a model is compared with
itself and the gate is meaningless), structurally detectable:

* a champion with the same version id as the challenger is refused (:class:`SelfComparisonError`);
* scores from different holdouts are refused (:class:`HoldoutMismatch`): a challenger is never
  compared with a champion number from another window;
* a champion whose metrics are bit-for-bit the challenger's is never promoted over and is flagged
  (two different models virtually never tie exactly; a tie means the same predictions were scored).

The pipeline (:mod:`tenfold.pipelines.train_model`) builds the champion's score only by resolving the
``champion`` alias in the registry, downloading that version (hash-verified) and evaluating it on the
challenger's holdout, and :class:`Decision` records both version ids.

Ranking is not enough: serving returns "the probability that this flight is delayed", so the gate
checks the probabilities too. Against each baseline in ``beat_baselines`` the challenger must have a
higher AUC *and* a log loss and a Brier score no worse than the baseline's (within
``baseline_log_loss_margin`` / ``baseline_brier_margin``). A model that ranks well but is overconfident
(the ``make demo`` champion of issue 11: AUC 0.657 above the rate baseline's 0.592, log loss 0.647
above its 0.612) is refused, and the decision says which check failed first in its summary. The
challenger's calibration (method, the holdout's expected calibration error before and after, the
calibration table) is copied into :attr:`Decision.calibration`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tenfold.config import Settings

BASELINE_PREFIX = "baseline:"


class GateError(ValueError):
    """The gate was called with inputs that cannot give a trustworthy decision."""

    retryable = False  # the same inputs give the same refusal


class SelfComparisonError(GateError):
    """The challenger was about to be compared with itself."""


class HoldoutMismatch(GateError):
    """Scores measured on different holdouts were about to be compared."""


@dataclass(frozen=True)
class HoldoutRef:
    """The identity of a holdout: its partitions and a digest over their manifests."""

    partitions: tuple[str, ...]
    digest: str

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> HoldoutRef:
        return cls(partitions=tuple(body["partitions"]), digest=str(body["digest"]))


@dataclass(frozen=True)
class Scored:
    """Metrics of one model on one holdout."""

    model: str  # registry version id, or "baseline:<name>"
    holdout: HoldoutRef
    auc: float
    log_loss: float
    brier: float
    rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the calibration table

    @classmethod
    def of(cls, model: str, holdout: HoldoutRef, metrics: Any) -> Scored:
        """From a metrics mapping or an object with ``auc``, ``log_loss`` and ``brier`` attributes."""
        if isinstance(metrics, Mapping):
            body = dict(metrics)
        elif dataclasses.is_dataclass(metrics) and not isinstance(metrics, type):
            body = dataclasses.asdict(metrics)
        else:
            body = {k: getattr(metrics, k) for k in ("auc", "log_loss", "brier", "rows", "n") if hasattr(metrics, k)}
        try:
            auc, ll, brier = (float(body[k]) for k in ("auc", "log_loss", "brier"))
        except (KeyError, TypeError, ValueError) as exc:
            raise GateError(f"metrics of {model} lack auc, log_loss or brier ({exc}): evaluate the model first") from exc
        rows = body.get("rows") or body.get("n") or 0
        extra = {k: v for k, v in body.items() if k not in {"auc", "log_loss", "brier", "rows", "n"}}
        return cls(model=model, holdout=holdout, auc=auc, log_loss=ll, brier=brier, rows=int(rows), extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Scored:
        return cls(model=body["model"], holdout=HoldoutRef.from_dict(body["holdout"]), auc=float(body["auc"]),
                   log_loss=float(body["log_loss"]), brier=float(body["brier"]), rows=int(body.get("rows", 0)),
                   extra=dict(body.get("extra", {})))

    @property
    def headline(self) -> tuple[float, float, float]:
        return (self.auc, self.log_loss, self.brier)


@dataclass(frozen=True)
class GatePolicy:
    # AUC by which a challenger must beat the champion; negative: how far below it may stay (non-inferiority,
    # when a canary rollout judges it online next).
    margin: float = 0.002
    min_auc: float = 0.5  # absolute floor: better than chance
    max_log_loss: float | None = None  # absolute ceiling, if any
    # Floors: each of these baselines must be beaten on AUC and matched on log loss and Brier score.
    beat_baselines: tuple[str, ...] = ("rate",)
    # A challenger may not buy AUC with much worse calibration than the champion's.
    max_log_loss_increase: float = 0.01
    # How much worse than a baseline's log loss / Brier score a challenger's may be (0: no worse).
    baseline_log_loss_margin: float = 0.0
    baseline_brier_margin: float = 0.0
    max_ece: float | None = None  # ceiling on the holdout's expected calibration error, if any

    def __post_init__(self) -> None:
        if min(self.max_log_loss_increase, self.baseline_log_loss_margin, self.baseline_brier_margin) < 0:
            raise ValueError("max_log_loss_increase and the baseline margins must be >= 0")
        if not -0.05 <= self.margin <= 0.2:
            raise ValueError(f"the champion margin {self.margin} is out of range: from -0.05 (a tolerated AUC loss) to 0.2")

    @classmethod
    def from_settings(cls, settings: Settings, workload_baselines: Sequence[str],
                      evaluated: Sequence[str] | None = None) -> GatePolicy:
        """The policy of ``settings.training``; ``workload_baselines`` (the workload's own baselines) are those to
        beat when ``gate_beat_baselines`` is None. ``evaluated``: every baseline a run evaluates; a
        ``gate_beat_baselines`` naming another is a ValueError naming the setting and those (it failed only at the
        gate, after the whole training run, saying to evaluate them)."""
        t = settings.training
        beat = t.gate_beat_baselines if t.gate_beat_baselines is not None else workload_baselines
        unknown = [b for b in beat if evaluated is not None and b not in evaluated]
        if unknown:
            raise ValueError(f"TENFOLD_TRAINING__GATE_BEAT_BASELINES (settings.training.gate_beat_baselines) names "
                             f"{', '.join(repr(b) for b in unknown)}, which no run evaluates: give some of "
                             f"{', '.join(repr(b) for b in evaluated or ())}, or () to beat none")
        return cls(
            margin=t.promote_margin,
            min_auc=t.gate_min_auc,
            max_log_loss=t.gate_max_log_loss,
            beat_baselines=tuple(beat),
            max_log_loss_increase=t.gate_max_log_loss_increase,
            baseline_log_loss_margin=t.gate_baseline_log_loss_margin,
            baseline_brier_margin=t.gate_baseline_brier_margin,
            max_ece=t.gate_max_ece,
        )


@dataclass(frozen=True)
class Decision:
    promote: bool
    challenger_version: str
    champion_version: str | None
    holdout: HoldoutRef
    checks: dict[str, bool]
    reasons: tuple[str, ...]
    challenger: Scored
    champion: Scored | None
    baselines: dict[str, Scored]
    policy: GatePolicy
    suspect_self_comparison: bool = False
    # The challenger's calibration on the holdout: method, ECE before/after, the calibration table.
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> tuple[str, ...]:
        """The names of the checks that failed, in the order they ran."""
        return tuple(name for name, ok in self.checks.items() if not ok)

    @property
    def summary(self) -> str:
        """The verdict, both versions, then the reasons with every failure first (so a refusal leads with why)."""
        verdict = "PROMOTE" if self.promote else "KEEP CHAMPION" if self.champion_version else "REJECT"
        ordered = [r for r in self.reasons if r.startswith("FAIL")] + [r for r in self.reasons if not r.startswith("FAIL")]
        return f"{verdict}: challenger {self.challenger_version} vs champion {self.champion_version or '(none)'}; " + "; ".join(ordered)

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["summary"] = self.summary
        return body

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Decision:
        return cls(
            promote=bool(body["promote"]),
            challenger_version=body["challenger_version"],
            champion_version=body.get("champion_version"),
            holdout=HoldoutRef.from_dict(body["holdout"]),
            checks=dict(body["checks"]),
            reasons=tuple(body["reasons"]),
            challenger=Scored.from_dict(body["challenger"]),
            champion=Scored.from_dict(body["champion"]) if body.get("champion") else None,
            baselines={k: Scored.from_dict(v) for k, v in body.get("baselines", {}).items()},
            policy=GatePolicy(**{**body["policy"], "beat_baselines": tuple(body["policy"]["beat_baselines"])}),
            suspect_self_comparison=bool(body.get("suspect_self_comparison", False)),
            calibration=dict(body.get("calibration") or {}),
        )


def _finite(s: Scored) -> bool:
    return all(math.isfinite(x) for x in s.headline)


def calibration_record(scored: Scored) -> dict[str, Any]:
    """The calibration figures a score carries (from the evaluation): ECE before/after, method, table."""
    extra = scored.extra
    record: dict[str, Any] = {}
    if "ece" in extra:
        record["ece"] = extra["ece"]
    uncalibrated = extra.get("uncalibrated")
    if isinstance(uncalibrated, Mapping):
        record["ece_uncalibrated"] = uncalibrated.get("ece")
        record["log_loss_uncalibrated"] = uncalibrated.get("log_loss")
        record["auc_uncalibrated"] = uncalibrated.get("auc")
    calibrator = extra.get("calibrator")
    if isinstance(calibrator, Mapping):
        record["method"] = calibrator.get("description") or calibrator.get("method")
    if "calibration" in extra:
        record["table"] = extra["calibration"]
    return record


def decide(challenger: Scored, champion: Scored | None, baselines: Mapping[str, Scored], policy: GatePolicy) -> Decision:
    """Decide whether ``challenger`` replaces ``champion`` (None: there is no champion yet).

    Floors (always): finite metrics, AUC >= ``min_auc``; against each baseline in ``policy.beat_baselines``
    a higher AUC, and a log loss and a Brier score at most the baseline's plus its margin; log loss <=
    ``max_log_loss`` and holdout ECE <= ``max_ece`` when set. Against a champion (when there is one): AUC
    at least ``margin`` higher, and log loss at most ``max_log_loss_increase`` higher. With no champion
    the first challenger that passes the floors is promoted.
    """
    if challenger.model.startswith(BASELINE_PREFIX):
        raise GateError(f"the challenger must be a registered model version, not {challenger.model}")
    if champion is not None:
        if champion.model == challenger.model:
            raise SelfComparisonError(
                f"the champion and the challenger are the same version {challenger.model}: the gate would compare a "
                "model with itself. Score the champion by resolving the `champion` alias in the registry and "
                "evaluating that version on the challenger's holdout (tenfold.pipelines.train_model.evaluate)"
            )
        if champion.holdout != challenger.holdout:
            raise HoldoutMismatch(
                f"champion {champion.model} was scored on {champion.holdout.partitions} ({champion.holdout.digest[:12]}) "
                f"but the challenger on {challenger.holdout.partitions} ({challenger.holdout.digest[:12]}): "
                "re-evaluate the champion on the challenger's holdout"
            )
    for name, base in baselines.items():
        if base.holdout != challenger.holdout:
            raise HoldoutMismatch(f"baseline {name} was scored on another holdout than the challenger; evaluate it on the same split")
    missing = [b for b in policy.beat_baselines if b not in baselines]
    if missing:
        raise GateError(f"baselines {missing} were not evaluated but the policy requires beating them; evaluate them in the same run")

    checks: dict[str, bool] = {}
    reasons: list[str] = []

    def check(name: str, ok: bool, why: str) -> None:
        checks[name] = bool(ok)
        reasons.append(("ok " if ok else "FAIL ") + why)

    c = challenger
    check("finite", _finite(c), f"metrics finite (auc={c.auc:.4f}, log_loss={c.log_loss:.4f}, brier={c.brier:.4f})")
    check("min_auc", c.auc >= policy.min_auc, f"AUC {c.auc:.4f} >= floor {policy.min_auc:.4f}")
    for name in policy.beat_baselines:
        b = baselines[name]
        check(f"beats_{name}", c.auc > b.auc, f"AUC {c.auc:.4f} > baseline {name} {b.auc:.4f}")
        m = policy.baseline_log_loss_margin
        check(f"log_loss_vs_{name}", c.log_loss <= b.log_loss + m,
              f"log loss {c.log_loss:.4f} <= baseline {name} {b.log_loss:.4f} + margin {m:.4f} (probabilities no worse "
              "than the baseline's)")
        m = policy.baseline_brier_margin
        check(f"brier_vs_{name}", c.brier <= b.brier + m,
              f"Brier {c.brier:.4f} <= baseline {name} {b.brier:.4f} + margin {m:.4f}")
    if policy.max_log_loss is not None:
        check("max_log_loss", c.log_loss <= policy.max_log_loss, f"log loss {c.log_loss:.4f} <= {policy.max_log_loss:.4f}")
    calibration = calibration_record(c)
    if policy.max_ece is not None:
        ece = calibration.get("ece")
        check("max_ece", isinstance(ece, (int, float)) and ece <= policy.max_ece,
              f"holdout ECE {ece if ece is None else f'{ece:.4f}'} <= {policy.max_ece:.4f}")
    if isinstance(calibration.get("ece"), (int, float)):
        before = calibration.get("ece_uncalibrated")
        method = f" ({calibration['method']})" if calibration.get("method") else ""
        reasons.append(f"calibration{method}: holdout ECE {calibration['ece']:.4f}"
                       + (f" (uncalibrated {before:.4f})" if isinstance(before, (int, float)) else ""))

    suspect = False
    if champion is not None:
        ch = champion
        gain = c.auc - ch.auc
        # A margin of 0 asks for a gain: a tie keeps the champion (what the reason then says, ">").
        check("beats_champion", gain >= policy.margin and (gain > 0 or policy.margin < 0),
              f"AUC gain over champion {ch.model} {gain:+.4f} (champion {ch.auc:.4f}) "
              f"{'>' if policy.margin == 0 else '>='} margin {policy.margin:+.4f}")
        check("log_loss_vs_champion", c.log_loss <= ch.log_loss + policy.max_log_loss_increase,
              f"log loss {c.log_loss:.4f} <= champion {ch.log_loss:.4f} + {policy.max_log_loss_increase:.4f}")
        if c.headline == ch.headline:
            suspect = True
            check("distinct_scores", False,
                  "champion scores are identical to the challenger's: the champion was probably scored with the challenger's model")
    else:
        reasons.append("no champion yet: the first challenger passing the floors becomes champion")

    return Decision(
        promote=all(checks.values()),
        challenger_version=c.model,
        champion_version=champion.model if champion else None,
        holdout=c.holdout,
        checks=checks,
        reasons=tuple(reasons),
        challenger=c,
        champion=champion,
        baselines=dict(baselines),
        policy=policy,
        suspect_self_comparison=suspect,
        calibration=calibration,
    )
