"""batch_inference's plan refuses a bad run conf or an unpublished month with a message saying what to do."""

from __future__ import annotations

import pytest

from tenfold.data.lake import Partition
from tenfold.pipelines import batch_inference as pipeline
from tenfold.pipelines.common import PipelineError, PipelineInputError


def test_unknown_conf_keys_and_bad_months_are_refused(settings) -> None:
    with pytest.raises(PipelineInputError, match=r"unknown run conf keys \['monht'\]: use any of \['month', 'version'\]"):
        pipeline.plan(settings, "r1", {"monht": "2013-07"})
    with pytest.raises(PipelineInputError, match="run conf month"):
        pipeline.plan(settings, "r1", {"month": "2013-13"})
    with pytest.raises(PipelineInputError, match="must be a string"):
        pipeline.plan(settings, "r1", {"month": 201307})


def test_an_unpublished_month_names_build_features(settings, lake) -> None:
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    publish_synthetic_features(lake, [Partition(2013, 6)], 50)
    with pytest.raises(PipelineError, match=r"features partition 2013-07 is not published .*published: 2013-06.*build_features"):
        pipeline.plan(settings, "r1", {"month": "2013-07"})


def test_without_a_month_the_newest_published_one_is_scored(settings, lake) -> None:
    from tenfold.workloads.flights.synthetic import publish_synthetic_features

    with pytest.raises(PipelineError, match="no features partition is published"):
        pipeline.default_month(settings)
    publish_synthetic_features(lake, [Partition(2013, 5), Partition(2013, 6)], 50)
    assert pipeline.default_month(settings) == Partition(2013, 6)
