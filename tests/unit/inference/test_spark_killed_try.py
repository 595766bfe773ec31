"""A batch_inference score task SIGKILLed while its Spark scoring job ran never ran its cleanup: the job, in a session of
its own, went on writing a staging folder of its own (a fresh one per try) that nothing discarded, beside the retry's
job. The retry stops it before its own job starts, and scores into (then discards) the same folder. No Spark here:
spark-submit is a stand-in shell, as in tests/unit/features/test_submit_interrupt.py."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from tenfold.config import Settings
from tenfold.data.lake import Lake, Partition
from tenfold.features import submit
from tenfold.inference import spark
from tenfold.serving import loading
from tenfold.workloads.flights.synthetic import publish_synthetic_features

PART = Partition(2013, 6)
RUN_ID = "scheduled__2013-07-01T00:00:00+00:00"

# The first try of the score task in a process of its own (an Airflow task): score_partition, its spark-submit replaced
# by a shell that writes into the job's --output, then starts a grandchild (as spark-submit starts the driver's JVM)
# and waits for it.
_FIRST_TRY = """
import sys
from pathlib import Path
from tenfold.config import build_settings
from tenfold.data.lake import Partition
from tenfold.features import submit
from tenfold.inference import spark
from tenfold.serving import loading

home, run_id, script = sys.argv[1:4]
settings = build_settings("local", {"TENFOLD_HOME": home})
settings = settings.model_copy(update={"spark": settings.spark.model_copy(update={"class_sharing": False})})
loading.resolve_and_download = lambda settings, ref: ("v1", Path(home) / "v1")
submit.submit_prefix = lambda *a, **k: ["sh", "-c", script, "sh"]  # the job's own arguments follow: $1, $2...
spark.score_partition(settings, "v1", Partition(2013, 6), run_id=run_id)
"""


def test_a_retry_stops_the_scoring_job_a_killed_try_left_running(
        make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        killed_first_try: Callable[..., psutil.Process], orphan_probe: Callable[..., list[str]]) -> None:
    settings = make_settings(spark={"class_sharing": False})
    lake = Lake.from_settings(settings)
    publish_synthetic_features(lake, [PART], 10)
    table = settings.storage.scores_table
    stagings = Path(lake.uri_of(lake.staging_path(table, PART, "x")).removeprefix("file://")).parent
    pid_file, seen, records = tmp_path / "orphan.pid", tmp_path / "seen", settings.local.home / "spark-jobs"
    script = ('while [ "$1" != --output ]; do shift; done; out="${2#file://}"; mkdir -p "$out"; '
              f'touch "$out/scores-of-the-killed-try"; sleep 300 & echo $! > {shlex.quote(str(pid_file))}; wait')
    orphan = killed_first_try([sys.executable, "-c", _FIRST_TRY, str(settings.local.home), RUN_ID, script],
                              pid_file, records)
    (killed_try_staging,) = stagings.iterdir()

    monkeypatch.setattr(loading, "resolve_and_download", lambda settings, ref: ("v1", tmp_path / "v1"))
    monkeypatch.setattr(submit, "submit_prefix", lambda *a, **k: orphan_probe(orphan, seen))
    published: list[str] = []

    def publish(self: Lake, table: str, part: Partition, staged: str, **_: object) -> SimpleNamespace:
        published.append(staged)
        return SimpleNamespace(rows=10)

    monkeypatch.setattr(Lake, "publish", publish)
    assert spark.score_partition(settings, "v1", PART, run_id=RUN_ID) == 10
    assert seen.read_text() == "gone", "the killed try's job still ran when the retry's job started"
    assert not any(records.glob("*.json")), "the record of a job that ended stayed behind"
    # The retry scored into the killed try's folder (its job empties it first), and discarded it once published.
    assert [p.removeprefix("file://") for p in published] == [str(killed_try_staging)]
    assert not killed_try_staging.exists(), "the killed try's staging folder was left behind"
