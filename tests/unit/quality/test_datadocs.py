"""Data Docs offline and complete: every file GX's pages load comes from the site itself, the vendor files are
the very ones GX pins, and the index keeps every validation the gate has documented.

The browser half (the index's table filled by JavaScript with every network request refused) is
``tests/ui/test_airflow_ui.py::test_data_docs_work_offline``.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tenfold.data.lake import Partition
from tenfold.quality import datadocs
from tenfold.quality.datadocs import ASSETS, GX_WEB_ASSETS, external_resources, missing_assets, vendor_assets_dir
from tenfold.quality.gate import data_docs_location, run_suite, to_frame
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights.synthetic import synthetic_features

SETUP_HINT = "run `make setup` (it installs requirements/npm/datadocs-assets into .tools/datadocs-assets)"


def _gx_view_files() -> list[Path]:
    import great_expectations

    view = Path(great_expectations.__file__).parent / "render" / "view"
    return sorted([*(view / "templates").glob("*.j2"), *(view / "static" / "styles").glob("*.css")])


def _installed() -> Path:
    node_modules = vendor_assets_dir()
    problems = missing_assets(node_modules)
    assert not problems, f"Data Docs vendor files missing from {node_modules}: {problems}; {SETUP_HINT}"
    return node_modules


def test_every_url_gx_templates_load_is_one_the_site_serves():
    known = {a.url for a in ASSETS}
    loaded: dict[str, str] = {}
    for path in _gx_view_files():
        text = path.read_text()
        for url in external_resources(text):
            loaded[url] = path.name
        # the navbar logo's folder is a Jinja variable set to a URL, not a literal src
        for url in re.findall(r'set static_images_dir = "(https?://[^"]+)"', text):
            loaded[url + "logo-long.png"] = path.name
    assert loaded, "no CDN URL found in GX's templates: has the template folder moved?"
    unknown = {u: f for u, f in loaded.items() if u not in known and not GX_WEB_ASSETS.fullmatch(u)}
    assert not unknown, f"GX's pages load files tenfold.quality.datadocs_assets.ASSETS does not serve: {unknown}"
    # and every asset is still one GX loads (a stale entry would hide a renamed URL)
    assert known <= set(loaded)


def test_the_vendor_files_are_byte_for_byte_the_ones_gx_pins():
    node_modules = _installed()
    pinned = {}
    for path in _gx_view_files():
        pinned.update(re.findall(r'src="(https://[^"]+)" integrity="sha384-([^"]+)"', path.read_text()))
    assert len(pinned) == 2  # popper.js and bootstrap.js carry Subresource Integrity hashes
    for url, digest in pinned.items():
        asset = next(a for a in ASSETS if a.url == url)
        local = (node_modules / asset.folder / asset.path).read_bytes()
        assert base64.b64encode(hashlib.sha384(local).digest()).decode() == digest, url


def _loaded_paths(page: Path) -> list[Path]:
    """The files ``page`` loads, resolved on disk (query strings dropped)."""
    html = page.read_text()
    refs = re.findall(r'<(?:script|img)\b[^>]*?\ssrc="([^"]+)"|<link\b[^>]*?\shref="([^"]+)"|url\(\'([^\')]+)', html)
    urls = [next(g for g in groups if g) for groups in refs]
    return [(page.parent / unquote(urlsplit(u).path)).resolve() for u in urls if not u.startswith("data:")]


@pytest.mark.slow
def test_the_site_loads_nothing_from_the_internet_and_keeps_every_validation(settings):
    _installed()
    features, raw = WORKLOAD.features_suite, WORKLOAD.raw_suites["flights"]
    # Two suites, one after the other: the second build must keep the first validation and its suite's page.
    for month, suite in ((3, features), (4, raw)):
        part = Partition(2013, month)
        frame = to_frame(synthetic_features(part, 2_000, seed=month))
        report = run_suite(settings, frame, table="features", part=part, suite_name=suite,
                           batch_uri=f"file:///staged/{part.label}", run_name=f"{part.label}-t")
        assert not report.success  # 2,000 feature rows fail both suites: a refusal's page, the one that matters
    site = Path(data_docs_location(settings))
    pages = sorted(site.rglob("*.html"))
    runs = {p.relative_to(site).parts[1:3] for p in pages if p.relative_to(site).parts[0] == "validations"}
    assert runs == {(features, "2013-03-t"), (raw, "2013-04-t")}
    assert {p.name for p in (site / "expectations").glob("*.html")} == {f"{features}.html", f"{raw}.html"}
    index = (site / "index.html").read_text()
    assert "2013-03-t" in index and "2013-04-t" in index
    for page in pages:
        html = page.read_text()
        assert external_resources(html) == [], page
        assert "integrity=" not in html and 'crossorigin="anonymous"' not in html
        missing = [str(p) for p in _loaded_paths(page) if not p.is_file()]
        assert not missing, f"{page.relative_to(site)} loads files the site does not have: {missing}"
    # the site's copies are the vendor files at the versions GX names
    for asset in ASSETS:
        assert (site / asset.site_path).read_bytes() == (vendor_assets_dir() / asset.folder / asset.path).read_bytes()
    assert (site / "static/vendor/@fortawesome/fontawesome-free@6.6.0/webfonts/fa-solid-900.woff2").is_file()


def test_without_the_vendor_files_the_pages_keep_the_cdn_and_say_so(settings, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(datadocs, "vendor_assets_dir", lambda root=None: tmp_path / "node_modules")
    part = Partition(2013, 5)
    frame = to_frame(synthetic_features(part, 500, seed=5))
    with caplog.at_level("WARNING", logger="tenfold.quality.datadocs"):
        run_suite(settings, frame, table="features", part=part, suite_name=WORKLOAD.features_suite,
                  batch_uri="file:///staged", run_name="nocdn")
    assert "Run `make setup`" in caplog.text and "jquery@3.7.1 (not installed)" in caplog.text
    index = (Path(data_docs_location(settings)) / "index.html").read_text()
    assert "https://code.jquery.com/jquery-3.7.1.min.js" in index
    assert not (Path(data_docs_location(settings)) / "static" / "vendor").exists()


def _validate(settings, month: int) -> str | None:
    """Run the gate's suite over a small features month with Data Docs; the page it wrote (None: docs failed)."""
    part = Partition(2013, month)
    return run_suite(settings, to_frame(synthetic_features(part, 500, seed=month)), table="features", part=part,
                     suite_name=WORKLOAD.features_suite, batch_uri="file:///staged", run_name=f"{part.label}-d").data_docs


@contextlib.contextmanager
def _bound(folder: Path, to: Path) -> Iterator[None]:
    """``to`` mounted at ``folder`` (a bind mount: GX lists a site's pages without following symbolic links)."""
    folder.mkdir(parents=True)
    to.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(to), str(folder)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=False, capture_output=True)


def test_a_validation_on_a_full_disk_leaves_no_torn_result_and_the_site_as_it_was(settings, small_disk, tmp_path):
    """GX wrote each file in place: a validation that met a full disk left a torn result in the site's results store,
    which every later index build listed. GX saves the result before it builds the pages, so here the full disk cuts
    the result short (the index's own rewrite is the next test's); the index and the results live on a real full disk,
    the site's megabytes (GX's static files and the pages) on the ordinary disk, mounted in."""
    site = small_disk.path / "site"
    Path(data_docs_location(settings)).symlink_to(site)
    with contextlib.ExitStack() as mounts:
        for big in ("static", "validations", "expectations"):
            mounts.enter_context(_bound(site / big, tmp_path / "big" / big))
        assert _validate(settings, 3) is not None
        index = (site / "index.html").read_bytes()
        assert b"2013-03-d" in index

        small_disk.fill()
        assert _validate(settings, 4) is None  # the build failed (the gate validated again without Data Docs)
        assert (site / "index.html").read_bytes() == index
        results = sorted((site / datadocs.RESULTS_FOLDER).rglob("*.json"))
        assert [r.relative_to(site).parts[2] for r in results] == ["2013-03-d"]  # no result of the failed build
        for result in results:
            json.loads(result.read_text())  # whole, not torn
        assert not [p for p in site.rglob("*") if ".tmp-" in p.name]

        small_disk.free()  # space back: the next build lists the earlier validation and its own
        assert _validate(settings, 5) is not None
        index = (site / "index.html").read_bytes()
        assert b"2013-03-d" in index and b"2013-05-d" in index and b"2013-04-d" not in index


def test_an_index_rewritten_on_a_full_disk_keeps_the_old_one(settings, small_disk):
    """The index is rewritten by every build: written in place, a full disk cut it short, the old index already
    gone. Written through the store the gate configures for a local site, the old one stays whole."""
    from tenfold.quality.gate import _docs_site

    site = small_disk.path / "site"
    store = datadocs.OfflineHtmlSiteStore(_docs_site(settings, site)["store_backend"], None, None)
    old = "<html>" + "a validation " * 1_000 + "</html>"
    store.write_index_page(old)
    small_disk.fill()
    with pytest.raises(OSError) as failed:
        store.write_index_page("<html>" + "more validations " * 10_000 + "</html>")  # far more than the old one freed
    assert failed.value.errno == errno.ENOSPC  # a real full disk
    assert (site / "index.html").read_text() == old
    assert sorted(p.name for p in site.iterdir()) == ["index.html"]  # no temporary file left beside it


@pytest.mark.slow
def test_the_cloud_site_is_built_from_the_bucket_and_pushed_back(gcs_emulator, storage_client):
    """GX 1.x has no GCS backend: the site is pulled to a working folder, built, and what changed is pushed."""
    from tenfold.config import get_settings

    dev = get_settings("dev")
    settings = dev.model_copy(update={
        "storage": dev.storage.model_copy(update={"emulator_host": gcs_emulator}),
        "monitoring": dev.monitoring.model_copy(update={"data_docs_prefix": f"docs-{uuid.uuid4().hex[:8]}"}),
    })
    bucket = storage_client.bucket(settings.storage.artifacts_bucket)
    prefix = settings.monitoring.data_docs_prefix
    generations: dict[str, int] = {}
    for month in (3, 4):
        part = Partition(2013, month)
        report = run_suite(settings, to_frame(synthetic_features(part, 500, seed=month)), table="features", part=part,
                           suite_name=WORKLOAD.features_suite, batch_uri="gs://x", run_name=f"{part.label}-c")
        page = f"gs://{bucket.name}/{prefix}/validations/{WORKLOAD.features_suite}/{part.label}-c/"
        assert report.data_docs and report.data_docs.startswith(page) and report.data_docs.endswith(".html")
        blobs = {b.name: b for b in storage_client.list_blobs(bucket, prefix=prefix + "/")}
        assert f"{prefix}/index.html" in blobs
        if not generations:
            generations = {n: b.generation for n, b in blobs.items() if "/static/" in n}
            assert generations, "GX's static files were not uploaded"
    index = bucket.blob(f"{prefix}/index.html").download_as_text()
    assert "2013-03-c" in index and "2013-04-c" in index  # the first validation, pulled back, is still listed
    pages = [n for n in blobs if n.startswith(f"{prefix}/validations/") and n.endswith(".html")]
    assert len(pages) == 2 and all(blobs[n].size > 1000 for n in pages)  # no stand-in was pushed over a page
    assert len([n for n in blobs if f"/{datadocs.RESULTS_FOLDER}/" in n and "ge_store_backend_id" not in n]) == 2
    # GX's static files were not sent again by the second build
    assert {n: b.generation for n, b in blobs.items() if n in generations} == generations


def test_a_bucket_object_named_outside_the_site_is_not_pulled_there(gcs_emulator, storage_client, tmp_path, caplog,
                                                                    monkeypatch):
    """GCS allows '..' in an object's name: whoever may write the artifacts bucket could plant
    ``<prefix>/_validation_results/../../<path>`` and have the quality gate's worker write that file anywhere.

    fake-gcs-server cleans such a name on upload, so the listing (the client's one call) adds the object GCS
    would list; its download is a real request to the emulator."""
    from google.cloud import storage

    from tenfold.config import get_settings

    dev = get_settings("dev")
    settings = dev.model_copy(update={
        "storage": dev.storage.model_copy(update={"emulator_host": gcs_emulator}),
        "monitoring": dev.monitoring.model_copy(update={"data_docs_prefix": f"docs-{uuid.uuid4().hex[:8]}"}),
    })
    bucket = storage_client.bucket(settings.storage.artifacts_bucket)
    if not bucket.exists():
        bucket.create()
    prefix = settings.monitoring.data_docs_prefix
    good = f"{datadocs.RESULTS_FOLDER}/suite/run/result.json"
    bucket.blob(f"{prefix}/{good}").upload_from_string(b"{}")
    escaped = f"escaped-{uuid.uuid4().hex[:8]}.txt"
    planted = f"{prefix}/{datadocs.RESULTS_FOLDER}/../../{escaped}"
    bucket.blob(planted).upload_from_string(b"planted")  # the emulator keeps it as <escaped> at the bucket's root
    real_list = storage.Client.list_blobs

    def list_blobs(self, bucket_or_name, *args, **kwargs):
        listed = list(real_list(self, bucket_or_name, *args, **kwargs))
        return [*listed, self.bucket(settings.storage.artifacts_bucket).blob(planted)]

    monkeypatch.setattr(storage.Client, "list_blobs", list_blobs)
    site = datadocs.BucketSite(tmp_path / "work" / "site", f"gs://{bucket.name}/{prefix}", settings=settings)
    site.root.mkdir(parents=True)
    try:
        with caplog.at_level("WARNING", logger=datadocs.__name__):
            site.pull()
    finally:
        for name in (escaped, f"{prefix}/{good}"):
            bucket.blob(name).delete()
    assert not (tmp_path / "work" / escaped).exists() and not list(tmp_path.rglob(escaped))
    assert (site.root / good).read_bytes() == b"{}"  # the site's own files are pulled as before
    assert set(site.remote) == {good}
    assert f"{escaped} is not pulled: its name it has an empty, '.' or '..' part" in caplog.text


def test_a_page_that_fails_to_render_is_not_named_as_the_data_docs(settings, monkeypatch, caplog):
    """GX logs a validation page it cannot render and builds the rest of the site: the report, and with it a
    refusal's alert and _QUARANTINED.json, named the site's folder, which lacks this validation."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer

    def broken(self, *args, **kwargs):
        raise RuntimeError("a renderer that fails on this validation")

    monkeypatch.setattr(ValidationResultsPageRenderer, "render", broken)
    with caplog.at_level("WARNING", logger="tenfold.quality.gate"):
        assert _validate(settings, 6) is None
    assert "the page of this validation was not written" in caplog.text
    site = Path(data_docs_location(settings))
    assert (site / "index.html").is_file() and not list((site / "validations").rglob("*.html"))  # built, page-less
