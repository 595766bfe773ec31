"""Data Docs show the batch's values as text, never as HTML a browser runs (stored XSS).

GX 1.24's Jinja environment autoescapes ``.html``/``.xml`` templates only, and its templates are ``*.j2``: a value
of a delivered month that fails its expectation reached the validation page raw (the unexpected-values table, the
observed value), and a refusal's alert sends the operator to exactly that page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tenfold.data.lake import Partition
from tenfold.quality.gate import run_suite, to_frame
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights.synthetic import synthetic_features

IMG = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert(1)</script>"
COLUMN = "<svg onload=alert(1)>"


def test_values_from_the_batch_are_escaped_on_the_validation_page(settings):
    part = Partition(2013, 7)
    frame = to_frame(synthetic_features(part, 500, seed=7))
    frame.loc[:4, "carrier"] = IMG  # fails the carrier regex
    frame.loc[5:9, "origin"] = SCRIPT  # fails the origin value set
    frame.loc[10:14, "dest"] = "</script><script>alert(1)</script>"  # fails the dest regex
    frame[COLUMN] = 0  # a column the file should not have: the observed value of the column list names it
    report = run_suite(settings, frame, table="features", part=part, suite_name=WORKLOAD.features_suite,
                       batch_uri="file:///staged", run_name=f"{part.label}-xss")
    assert not report.success and report.data_docs is not None
    failed = {(o.expectation, o.column) for o in report.failures}
    assert {("expect_table_columns_to_match_ordered_list", None), ("expect_column_values_to_match_regex", "carrier"),
            ("expect_column_values_to_be_in_set", "origin"), ("expect_column_values_to_match_regex", "dest")} <= failed
    html = Path(unquote(urlsplit(report.data_docs).path)).read_text()
    # shown, as text: the unexpected-values tables hold the escaped values
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;svg onload=alert(1)&gt;" in html
    # and never as markup, anywhere on the page
    assert "<img src=x" not in html and "<svg" not in html
    assert "<script>alert(1)" not in html and "</script><script>alert(" not in html
    # GX's own markup still renders: its tables, the status icons and its scripts
    assert '<table' in html and 'class="fas fa-times text-danger"' in html
    assert len(re.findall(r"<script\b", html)) == len(re.findall(r"</script>", html)) > 0


def test_a_traceback_a_list_and_a_graph_from_the_batch_stay_text():
    """What the validation above does not reach: an expectation that raised on a value (GX makes the traceback the
    template of a <code> block, and the message a param), a cell holding a list or a dict of values, and a graph's
    Vega spec, written into a <script> as it is. Rendered by GX's own renderer and the site's page view."""
    from great_expectations.core import ExpectationValidationResult
    from great_expectations.expectations.core import ExpectColumnValuesToBeInSet
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
    from great_expectations.render import (
        RenderedDocumentContent,
        RenderedGraphContent,
        RenderedSectionContent,
        RenderedTableContent,
    )

    from tenfold.quality.datadocs import EscapingJinjaPageView

    config = ExpectationConfiguration(type="expect_column_values_to_be_in_set",
                                      kwargs={"column": "origin", "value_set": ["EWR"]})
    raised = ExpectationValidationResult(success=False, expectation_config=config, exception_info={
        "raised_exception": True, "exception_message": f"ValueError: {SCRIPT}",
        "exception_traceback": f"Traceback (most recent call last):\nValueError: {IMG}"})
    statement = ExpectColumnValuesToBeInSet._diagnostic_unexpected_statement_renderer(result=raised)
    assert statement and len(statement) == 2  # GX's message and its traceback's collapse
    spec = {"mark": "bar", "data": {"values": [{"values": "</script><script>alert(2)</script>", "fraction": 1.0}]}}
    graph = RenderedGraphContent(content_block_type="graph", graph=spec)
    table = RenderedTableContent(content_block_type="table", header_row=["Sampled Unexpected Values"],
                                 table=[[[COLUMN, "ok"]], [{"carrier": IMG}]])
    document = RenderedDocumentContent(sections=[RenderedSectionContent(
        section_name="origin", content_blocks=[*statement, table, graph])],
        renderer_type="ValidationResultsPageRenderer", expectation_suite_name="features")

    html = EscapingJinjaPageView().render(document, data_context_id=None, show_how_to_buttons=False)
    assert "ValueError: &lt;script&gt;alert(1)&lt;/script&gt;" in html  # the message (GX escapes it itself)
    assert "ValueError: &lt;img src=x onerror=alert(1)&gt;" in html  # the traceback
    assert "<span>&lt;svg onload=alert(1)&gt;</span>" in html  # an item of a list cell
    assert "{&#x27;carrier&#x27;: &#x27;&lt;img src=x onerror=alert(1)&gt;&#x27;}" in html  # a dict cell, as its str()
    assert "<img src=x" not in html and "<svg" not in html and "<script>alert(" not in html
    # the graph still draws: its spec reads back as the very one, the value with its '<'
    [written] = re.findall(r"vlSpec = (.*);\n", html)
    assert json.loads(written) == spec
