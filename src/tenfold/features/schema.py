"""The contract of the ``features`` table: what the Spark job writes, GX checks and training reads.

Only values known at scheduled departure time are features. Historical aggregates for month M use
months strictly before M. Models read the column groups below rather than spelling column names,
so a new feature is added here once.

Label: ``label = 1`` when the flight arrived 15+ minutes late, **or was cancelled or diverted**
(``arr_delay`` is null). A traveller experiences a cancellation as at least as bad as a delay, and
dropping those rows would make the model blind to the worst days. ``cancelled`` is kept for
analysis; it is not a feature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

TABLE = "features"
RAW_TABLES = ("flights", "weather", "planes", "airlines", "airports")
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

# Kept for analysis and monitoring, never a feature.
ANALYSIS_COLUMNS = ("tailnum", "cancelled", "arr_delay")

TAILNUM_BUCKETS = 64

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
# Never null in a published partition (the GX suite checks it).
NON_NULL_COLUMNS = KEY_COLUMNS + CATEGORICAL_COLUMNS + ("cancelled", LABEL)
# Marked required (not null) in the Parquet schema: the columns the transform builds non-null by
# construction. Spark marks every column read from a file nullable, so the keys stay optional in the
# file even though they are never null; ``arrow_schema`` and the Spark output agree on this exactly.
REQUIRED_IN_FILE = ("tailnum_bucket", "route_flights", "carrier_flights", "origin_hour_flights", "cancelled", LABEL)
UNKNOWN_TAILNUM_BUCKET = -1

assert tuple(COLUMN_TYPES) == ALL_COLUMNS, "COLUMN_TYPES must list ALL_COLUMNS in order"


def tailnum_bucket(tailnum: str | None) -> int:
    """The stable bucket of a tail number: ``int(md5(tailnum)[:8], 16) % TAILNUM_BUCKETS``.

    Spark, DuckDB and a serving process all compute the same value (md5 is in each of them); Python's
    own ``hash`` is salted per process and Spark's ``hash`` is Murmur3 with a seed, so neither is used.
    """
    if tailnum is None:
        return UNKNOWN_TAILNUM_BUCKET
    import hashlib

    return int(hashlib.md5(tailnum.encode()).hexdigest()[:8], 16) % TAILNUM_BUCKETS


def arrow_schema() -> pa.Schema:
    """The features table's Arrow schema; its ``lake.schema_hash`` is the one every manifest carries."""
    import pyarrow as pa

    def arrow_type(name: str) -> pa.DataType:
        if name.startswith("timestamp"):
            return pa.timestamp("us", tz="UTC")
        return pa.type_for_alias(name)

    return pa.schema([pa.field(c, arrow_type(t), nullable=c not in REQUIRED_IN_FILE) for c, t in COLUMN_TYPES.items()])

# Bump when a column's *meaning* changes but its type does not (the schema hash cannot see that):
# every features manifest records the version it was built with, and readers refuse partitions of
# another version, so a model never trains or is evaluated on a mix of definitions.
# v2: the history *_flights columns are flights per history month, not totals.
FEATURES_VERSION = 2
VERSION_KEY = "features_version"


def manifest_extra(**extra: object) -> dict[str, object]:
    """The ``extra`` of a features manifest: what the caller records plus the definition version."""
    return {**extra, VERSION_KEY: FEATURES_VERSION}
