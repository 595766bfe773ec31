"""The flights workload's feature contract: what its Spark transform writes, the gate checks and training reads.

Only values known at scheduled departure time are features (the scheduled hour's observed weather stands
in for its forecast: docs/features.md, the leakage rule). Historical aggregates for month M use
months strictly before M. Models read the column groups below rather than spelling column names,
so a new feature is added here once.

Label: ``label = 1`` when the flight arrived 15+ minutes late, **or was cancelled or diverted**
(``arr_delay`` is null). A traveller experiences a cancellation as at least as bad as a delay, and
dropping those rows would make the model blind to the worst days. ``cancelled`` is kept for
analysis; it is not a feature.

Light on purpose (no pyarrow, pyspark or torch at import): DAG files reach it through
:func:`tenfold.workloads.get_workload`.
"""

from __future__ import annotations

import hashlib

from tenfold.workloads import VERSION_KEY, FeatureContract

__all__ = [
    "AGGREGATES",
    "ALL_COLUMNS",
    "ANALYSIS_COLUMNS",
    "CATEGORICAL_COLUMNS",
    "COLUMN_TYPES",
    "CONTRACT",
    "DELAY_THRESHOLD_MIN",
    "DRIFT_REPORT_ONLY",
    "FEATURES_VERSION",
    "HISTORY_COLUMNS",
    "KEY_COLUMNS",
    "LABEL",
    "LOOKUP_TABLES",
    "NON_NULL_COLUMNS",
    "NUMERIC_COLUMNS",
    "REQUIRED_IN_FILE",
    "TAILNUM_BUCKETS",
    "UNKNOWN_TAILNUM_BUCKET",
    "VERSION_KEY",
    "WEATHER_COLUMNS",
    "tailnum_bucket",
]

LABEL = "label"
DELAY_THRESHOLD_MIN = 15

# Identify a row; never fed to a model.
KEY_COLUMNS = ("year", "month", "day", "carrier", "flight", "origin", "time_hour")

# Categorical features: embedded by the model (vocabularies fit on the training window).
CATEGORICAL_COLUMNS = ("carrier", "origin", "dest", "tailnum_bucket", "sched_dep_hour", "day_of_week")

# Numeric features: standardised by the model (statistics fit on the training window); may be null.
# ``<group>_flights`` are flights per history month (not a count over the window, which would grow
# through the year and encode the month); 0 when the group, or the whole history, is empty.
NUMERIC_COLUMNS = (
    "distance",
    "sched_dep_minute_of_day",
    "sched_block_minutes",
    "plane_age",
    "plane_seats",
    "temp",
    "dewp",
    "humid",
    "wind_speed",
    "wind_gust",
    "precip",
    "pressure",
    "visib",
    "route_delay_rate",
    "route_mean_delay",
    "route_flights",
    "carrier_delay_rate",
    "carrier_mean_delay",
    "carrier_flights",
    "origin_hour_delay_rate",
    "origin_hour_mean_delay",
    "origin_hour_flights",
)

# The hourly observations joined at (origin, time_hour).
WEATHER_COLUMNS = ("temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib")

# Historical aggregates: feature prefix -> grouping keys (of the flight being scored).
AGGREGATES: dict[str, tuple[str, ...]] = {
    "route": ("origin", "dest"),
    "carrier": ("carrier",),
    "origin_hour": ("origin", "sched_dep_hour"),
}

# The history aggregates' columns: each is recomputed every month over a window that rolls with it.
HISTORY_COLUMNS = tuple(f"{p}_{s}" for p in AGGREGATES for s in ("delay_rate", "mean_delay", "flights"))

# Drift the monitor reports but never retrains on (docs/drift.md): the weather moves with the season by
# nature; the history aggregates move by construction (a new window each month, and delays peak in summer
# and December); the weekday mix follows the calendar (4 or 5 of each weekday in a month). What triggers
# retraining is a shift in what is flown: carriers, airports, routes, schedules and planes.
DRIFT_REPORT_ONLY = WEATHER_COLUMNS + HISTORY_COLUMNS + ("day_of_week",)

# Features the table keeps but models are not fed (docs/training.md, "Model inputs"): the absolute
# temperature and dew point are seasonal levels. Inside a training window of a few months they stand in
# for the time of year, and a network learns the season's trend instead of the weather's effect: trained
# on January-March 2013, where the warmer days had fewer delays, it put warm April (17 F warmer, delay rate
# 0.31) at 0.19 on average and its log loss was worse than the route/carrier rate's. Without them it puts
# April at 0.24 and beats both baselines there, and costs about 0.001 in log loss on the full-year split
# (bench/RESULTS.md). Humidity, wind, precipitation, pressure and visibility stay: they describe the hour's
# weather, not the season. Online assembly still builds both and the drift monitor reports them.
NOT_MODEL_INPUTS = ("temp", "dewp")

# What build_features publishes beside each month's features for online assembly (the transform's
# ``lookups``; ``docs/features.md``): the airports' time zones, the carriers, each route's scheduled
# distance, the planes, the month's weather, and one history roll-up per aggregate.
LOOKUP_TABLES = ("airports", "carriers", "routes", "planes", "weather", *(f"{p}_history" for p in AGGREGATES))

# Kept for analysis and monitoring, never a feature.
ANALYSIS_COLUMNS = ("tailnum", "cancelled", "arr_delay")

TAILNUM_BUCKETS = 64
UNKNOWN_TAILNUM_BUCKET = -1

ALL_COLUMNS = tuple(dict.fromkeys(KEY_COLUMNS + CATEGORICAL_COLUMNS + NUMERIC_COLUMNS + ANALYSIS_COLUMNS + (LABEL,)))

# Column types, as Arrow type names (the Parquet the job writes carries exactly these). Every numeric
# feature is float64 so a model standardises them uniformly; categoricals are never null (an unknown
# tail number goes to bucket -1, see ``tailnum_bucket``).
COLUMN_TYPES: dict[str, str] = {
    "year": "int32",
    "month": "int32",
    "day": "int32",
    "carrier": "string",
    "flight": "int32",
    "origin": "string",
    "time_hour": "timestamp[us, tz=UTC]",
    "dest": "string",
    "tailnum_bucket": "int32",
    "sched_dep_hour": "int32",
    "day_of_week": "int32",  # ISO: Monday = 1 ... Sunday = 7
    **{name: "float64" for name in NUMERIC_COLUMNS},
    "tailnum": "string",
    "cancelled": "bool",
    "arr_delay": "float64",
    LABEL: "int32",
}
# Never null in a published partition (the features suite checks it).
NON_NULL_COLUMNS = KEY_COLUMNS + CATEGORICAL_COLUMNS + ("cancelled", LABEL)
# Marked required (not null) in the Parquet schema: the columns the transform builds non-null by
# construction. Spark marks every column read from a file nullable, so the keys stay optional in the
# file even though they are never null; ``arrow_schema`` and the Spark output agree on this exactly.
REQUIRED_IN_FILE = ("tailnum_bucket", "route_flights", "carrier_flights", "origin_hour_flights", "cancelled", LABEL)

# Bump when a column's *meaning* changes but its type does not (the schema hash cannot see that):
# every features manifest records the version it was built with, and readers refuse partitions of
# another version, so a model never trains or is evaluated on a mix of definitions.
# v2: the history *_flights columns are flights per history month, not totals.
# v3: sched_block_minutes of an overnight flight on a night the clocks change uses the arrival day's offset.
FEATURES_VERSION = 3

CONTRACT = FeatureContract(
    key_columns=KEY_COLUMNS,
    label=LABEL,
    categorical_columns=CATEGORICAL_COLUMNS,
    numeric_columns=NUMERIC_COLUMNS,
    column_types=COLUMN_TYPES,
    non_null_columns=NON_NULL_COLUMNS,
    required_in_file=REQUIRED_IN_FILE,
    analysis_columns=ANALYSIS_COLUMNS,
    version=FEATURES_VERSION,
    lookup_tables=LOOKUP_TABLES,
    drift_report_only=DRIFT_REPORT_ONLY,
    not_model_inputs=NOT_MODEL_INPUTS,
)


def tailnum_bucket(tailnum: str | None) -> int:
    """The stable bucket of a tail number: ``int(md5(tailnum)[:8], 16) % TAILNUM_BUCKETS``.

    Spark, DuckDB and a serving process all compute the same value (md5 is in each of them); Python's
    own ``hash`` is salted per process and Spark's ``hash`` is Murmur3 with a seed, so neither is used.
    """
    if tailnum is None:
        return UNKNOWN_TAILNUM_BUCKET
    return int(hashlib.md5(tailnum.encode()).hexdigest()[:8], 16) % TAILNUM_BUCKETS
