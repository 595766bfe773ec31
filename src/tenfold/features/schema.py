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

TABLE = "features"
RAW_TABLES = ("flights", "weather", "planes", "airlines", "airports")
LABEL = "label"
DELAY_THRESHOLD_MIN = 15

# Identify a row; never fed to a model.
KEY_COLUMNS = ("year", "month", "day", "carrier", "flight", "origin", "time_hour")

# Categorical features: embedded by the model (vocabularies fit on the training window).
CATEGORICAL_COLUMNS = ("carrier", "origin", "dest", "tailnum_bucket", "sched_dep_hour", "day_of_week")

# Numeric features: standardised by the model (statistics fit on the training window); may be null.
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
