"""Data Docs that keep every validation and work offline.

Great Expectations 1.24's Data Docs pages load bootstrap, jQuery, popper.js, bootstrap-table,
bootstrap-datepicker, bootstrap-dark, font-awesome and vega from public CDNs, and the GX logo from S3. On a
machine without internet the index lists no validation at all (bootstrap-table fills its table with
JavaScript) and every page is unstyled. :class:`OfflineSiteBuilder`, the site builder the gate configures
(its site config is :func:`tenfold.quality.gate._docs_site`; the site's folder,
:func:`tenfold.quality.gate.data_docs_location`), fixes that for any GX store backend:

* every page is written with those URLs pointing at ``static/vendor/<package>@<version>/...`` inside the site
  (relative to the page, so the folder works as ``file://`` and when copied anywhere), and the vendor files
  are copied into the site once (a stamp records the set);
* the files come from the npm registry at the exact versions GX's templates name: ``make setup`` installs
  ``requirements/npm/datadocs-assets`` into ``.tools/datadocs-assets`` (:func:`vendor_assets_dir`). The two
  files GX pins with Subresource Integrity hashes are byte-identical to the CDN's (a unit test checks the
  hashes), so the ``integrity``/``crossorigin`` attributes, which a ``file://`` page cannot satisfy, are dropped;
* its index lists every validation page of the site, not only those of the running context: GX's default
  build removes the pages whose results its own stores do not hold, and the gate's context is ephemeral, so
  each validation used to delete every earlier one, including the refusal a quarantine message points to.
  The gate keeps the validation results in a store beside the pages (``_validation_results/``) for that.

Without the vendor files (``make setup`` not run) the pages keep the CDN URLs and a warning says so.

Its pages show the batch's values as text (:class:`EscapingJinjaPageView`): GX 1.24 autoescapes ``.html`` templates
only and its own are ``*.j2``, so a value that failed its expectation (``<img src=x onerror=...>`` in a delivered
month) reached the refusal's page as live HTML.

In the cloud the site lives in the artifacts bucket (``gs://<artifacts>/<data_docs_prefix>/``). GX 1.x has no
GCS store backend any more (its cloud backends were removed in 1.0), so :func:`docs_site` builds it in a local
working folder: the bucket's validation results are downloaded and its pages stood in for by empty files (the
index needs their names, not their content), GX builds there, and what the build wrote is uploaded, the index
last. Pages read there are viewed with internet access, so they keep GX's CDN URLs.

Check a local site by hand: ``tenfold quality docs`` prints where it is; open its ``index.html`` offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import logging
import mimetypes
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from great_expectations.data_context.store.html_site_store import HtmlSiteStore
from great_expectations.data_context.store.tuple_store_backend import TupleFilesystemStoreBackend
from great_expectations.render import RenderedContent
from great_expectations.render.renderer.site_builder import SiteBuilder
from great_expectations.render.view import DefaultJinjaPageView

from tenfold.config import Settings
from tenfold.fsio import atomic_write
from tenfold.model_files import unsafe_relative_path
from tenfold.quality.datadocs_assets import (  # re-exported: the rest of the code and the tests import them here
    ASSETS,
    ASSETS_TOOL,
    VENDOR_PREFIX,
    missing_assets,
)
from tenfold.quality.datadocs_assets import Asset as Asset  # re-exported
from tenfold.quality.datadocs_assets import vendor_assets_dir as vendor_assets_dir  # re-exported (gate, the tests)

log = logging.getLogger(__name__)

RESULTS_FOLDER = "_validation_results"  # beside the pages: the results the site's index is built from
PAGE_FOLDERS = ("validations", "expectations")  # GX's page sections, whose files the index lists



# GX's navbar logo and the dark-mode logo in its default styles come from S3; the site's own static/images
# (copied by GX) has the logo, which serves both offline.
GX_WEB_ASSETS = re.compile(r"https://great-expectations-web-assets\.s3\.us-east-2\.amazonaws\.com/"
                           r"(?:logo-long|full_logo_dark)\.png(?:\?[^\"')\s]*)?")
GX_LOGO = "static/images/logo-long.png"
# GX's favicon link on a validation page climbs one folder too few; the site root is known here.
_FAVICON = re.compile(r'href="(?:\.\./|\./)*static/images/favicon\.ico"')
# Subresource Integrity cannot be checked on a file:// page (no CORS); the files are GX's pinned ones (see above).
_SRI = re.compile(r"\s+(?:integrity=\"sha(?:256|384|512)-[A-Za-z0-9+/=]+\"|crossorigin=\"anonymous\")")
# What a page loads (not what it links to): script/img src, stylesheet href, CSS url().
_LOADED = re.compile(r"<(?:script|img)\b[^>]*?\ssrc=\"([^\"]+)\"|<link\b[^>]*?\shref=\"([^\"]+)\"|url\(['\"]?([^'\")]+)")




def vendor_files(node_modules: Path) -> list[tuple[tuple[str, ...], Path]]:
    """Every file to copy into a site: (site key under ``static/vendor``, source file), in a stable order."""
    out: dict[tuple[str, ...], Path] = {}
    for asset in ASSETS:
        package = node_modules / asset.folder
        sources = [package / asset.path]
        for sibling in asset.siblings:
            sources += sorted(p for p in (package / sibling).rglob("*") if p.is_file())
        for src in sources:
            out[(*asset.site_folder, *src.relative_to(package).parts)] = src
    return sorted(out.items())


def localize(html: str, to_root: str) -> str:
    """``html`` with every known CDN URL replaced by the site's copy; ``to_root`` leads from the page to the site root."""
    for asset in ASSETS:
        # Quoted, so that vega@5 does not also match a longer URL that starts the same way.
        html = html.replace(f'"{asset.url}"', f'"{to_root}{asset.site_path}"')
    html = GX_WEB_ASSETS.sub(to_root + GX_LOGO, html)
    html = _FAVICON.sub(f'href="{to_root or "./"}static/images/favicon.ico"', html)
    return _SRI.sub("", html)


def external_resources(html: str) -> list[str]:
    """The http(s) and protocol-relative URLs that ``html`` loads (scripts, styles, images, CSS url()), in order."""
    urls = [next(g for g in m.groups() if g) for m in _LOADED.finditer(html)]
    return [u for u in urls if re.match(r"(?i)(https?:)?//", u)]


class AtomicFilesystemStoreBackend(TupleFilesystemStoreBackend):
    """GX's filesystem store backend, each file written whole: a reader sees the old file or the new one.

    GX opens the very file and writes into it, so a write cut short (a full disk) left the page, the static file,
    the index or the validation result torn, the old one already gone: the local site stayed broken after the gate
    fell back to validating without Data Docs. Here the bytes go to a temporary name beside the file, renamed over
    it once whole (:func:`tenfold.fsio.atomic_write`); a write that fails leaves the old file as it was. Configured
    as ``module_name: tenfold.quality.datadocs``, ``class_name: AtomicFilesystemStoreBackend`` (see
    :func:`tenfold.quality.gate._filesystem_backend`).
    """

    # The path, as GX's own returns it (the site builder hands the index's back), though its base class says None.
    def _set(self, key: Any, value: Any, **kwargs: Any) -> Any:
        if not isinstance(key, tuple):
            key = key.to_tuple()
        path = Path(self.full_base_directory, self._convert_key_to_filepath(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        # Whole, not durable: the site is rebuilt from the results by the next gate run, and a build re-copies its
        # static files, so an fsync per file cost every validation about a third of a second for nothing.
        atomic_write(path, value.encode("utf-8") if isinstance(value, str) else value, durable=False)
        return str(path)


class OfflineHtmlSiteStore(HtmlSiteStore):
    """GX's HTML site store, writing pages with local asset URLs and the vendor files beside GX's own static files."""

    def __init__(self, store_backend: dict[str, Any], runtime_environment: dict[str, Any] | None,
                 node_modules: Path | None) -> None:
        super().__init__(store_backend=store_backend, runtime_environment=runtime_environment)
        self.node_modules = node_modules

    def set(self, key: Any, serialized_value: Any) -> Any:
        if self.node_modules is not None and isinstance(serialized_value, str):
            backend = self.store_backends[type(key.resource_identifier)]
            relative = backend._convert_key_to_filepath(key.resource_identifier.to_tuple()).replace("\\", "/")
            serialized_value = self._localized(serialized_value, "../" * relative.count("/"), relative)
        return super().set(key, serialized_value)

    def write_index_page(self, page: Any) -> Any:
        if self.node_modules is not None and isinstance(page, str):
            page = self._localized(page, "", "index.html")
        return super().write_index_page(page)

    def copy_static_assets(self, static_assets_source_dir: str | None = None) -> Any:
        result = super().copy_static_assets(static_assets_source_dir)
        if static_assets_source_dir is None and self.node_modules is not None:  # the top call, not GX's recursion
            self._copy_vendor_files(self.node_modules)
        return result

    def _localized(self, html: str, to_root: str, page: str) -> str:
        out = localize(html, to_root)
        if left := external_resources(out):
            # A GX release that adds a CDN: the page still works online; ASSETS needs the new file.
            log.warning("Data Docs page %s still loads %s from the internet; add it to tenfold.quality.datadocs_assets.ASSETS "
                        "(and requirements/npm/%s)", page, ", ".join(sorted(set(left))), ASSETS_TOOL)
        return out

    def _copy_vendor_files(self, node_modules: Path) -> None:
        files = vendor_files(node_modules)
        backend = self.store_backends["static_assets"]
        # One stamp per set of files: a build checks one key instead of every file, and a copy cut short
        # (no stamp yet) is redone whole.
        digest = hashlib.sha256("\n".join("/".join(k) for k, _ in files).encode()).hexdigest()[:16]
        stamp = (*VENDOR_PREFIX, f".complete-{digest}")
        if backend.has_key(stamp):
            return
        for key, src in files:
            backend.set(key, src.read_bytes(), content_type=_content_type(src.name))
        backend.set(stamp, "\n".join("/".join(k) for k, _ in files), content_type="text/plain")


def _content_type(name: str) -> str:
    kind, _ = mimetypes.guess_type(name, strict=False)
    return kind or {".woff2": "font/woff2", ".ttf": "font/ttf"}.get(Path(name).suffix, "application/octet-stream")


# --- the batch's values shown as text ----------------------------------------------------------------------
# GX's Jinja environment autoescapes templates named *.html/*.xml, and its templates are *.j2: a page is plain string
# concatenation, so whatever GX shows from the batch (the unexpected values, observed values, the batch's metadata)
# reached the page as markup. GX escapes a string template's params itself (its _TRUSTED_HTML_PARAMS aside); what
# stays raw is every plain value the view puts in a table cell, list or text block (``render_content_block`` returns
# a string as it is, a list's items inside <span>s, a dict as its repr), the templates it makes of a traceback or a
# query, and a graph's spec inside a <script>. Those are escaped here, in the rendered document, before the view.

# Content-block fields that hold what is shown: cells, items, nested blocks. Any plain value in them is escaped.
_SHOWN_FIELDS = frozenset({"table", "header_row", "bullet_list", "value_list", "text", "collapse", "content_blocks"})
# A string template's params that GX itself leaves raw: its own markup (the status icon; a JSON schema escaped at its
# source inside <pre>). Any other param GX escapes when it is a string.
_TRUSTED_PARAMS = frozenset({"html_success_icon", "formatted_json"})


def _is_block(node: Any) -> bool:
    return isinstance(node, dict) and "content_block_type" in node


def _escaped_value(node: Any) -> Any:
    """A value of a shown field: its blocks escaped inside, anything else as the escaped text the page shows."""
    if _is_block(node):
        return _escaped_block(node)
    if isinstance(node, list):
        return [_escaped_value(item) for item in node]
    if node is None or isinstance(node, (bool, int, float)):
        return node
    return html.escape(str(node))  # a string, or a dict, tuple or other object the page shows as str()


def _blocks_within(node: Any) -> Any:
    """A field GX writes itself (a header, styling, options): left as it is, but the blocks inside it escaped."""
    if _is_block(node):
        return _escaped_block(node)
    if isinstance(node, list):
        return [_blocks_within(item) for item in node]
    if isinstance(node, dict):
        return {key: _blocks_within(value) for key, value in node.items()}
    return node


def _escaped_string_template(template: dict[str, Any]) -> dict[str, Any]:
    params = template.get("params") or {}
    if not params and template.get("tag") == "code":
        # GX's templates of an exception's traceback and of the query that retrieves the unexpected rows: text
        # from the batch made the template itself (GX's own markup templates always have params or another tag).
        return {**template, "template": html.escape(str(template.get("template", "")))}
    # GX escapes string params, but substitutes a list or dict param as its str(): made a string here, GX escapes it.
    return {**template, "params": {
        name: value if name in _TRUSTED_PARAMS or value is None or isinstance(value, (str, bool, int, float))
        else str(value) for name, value in params.items()}}


def _escaped_block(block: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in block.items():
        if key in _SHOWN_FIELDS:
            out[key] = _escaped_value(value)
        elif key == "string_template" and isinstance(value, dict):
            out[key] = _escaped_string_template(value)
        elif key == "graph" and block.get("content_block_type") == "graph":
            # A Vega spec the page writes into a <script> as it is: as JSON whose every '<' is \u003c, a value
            # cannot close the script (JSON has '<' only inside strings, where \u003c reads as '<' again).
            spec = value if isinstance(value, str) else json.dumps(value, default=str)
            out[key] = spec.replace("<", "\\u003c")
        else:
            out[key] = _blocks_within(value)
    return out


def escape_data(document: dict[str, Any]) -> dict[str, Any]:
    """A rendered page (GX's ``RenderedDocumentContent.to_json_dict()``) with what it shows from the batch escaped.

    GX's own markup (headers, styling, string templates' icons, markdown notes) is kept; the values the view would
    write raw (see above) are HTML-escaped, as is each section's name (a column's).
    """
    return {**document, "sections": [_escaped_section(s) for s in document.get("sections") or []]}


def _escaped_section(section: Any) -> Any:
    if not isinstance(section, dict):
        return section
    out = {**section, "content_blocks": _escaped_value(section.get("content_blocks") or [])}
    if isinstance(section.get("section_name"), str):  # the sidebar's table of contents writes it as it is
        out["section_name"] = html.escape(section["section_name"])
    return out


class EscapingJinjaPageView(DefaultJinjaPageView):
    """GX's page view, showing the batch's values as text (:func:`escape_data`).

    The view of each page section of :class:`OfflineSiteBuilder` (``view: {module_name: tenfold.quality.datadocs,
    class_name: EscapingJinjaPageView}``).
    """

    def render(self, document: Any, template: Any = None, **kwargs: Any) -> Any:
        self._validate_document(document)
        if isinstance(document, RenderedContent):
            document = document.to_json_dict()
        return self._get_template(template or self._template).render(escape_data(document), **kwargs)


_VIEW = {"module_name": __name__, "class_name": EscapingJinjaPageView.__name__}
PAGE_SECTIONS = ("expectations", "validations", "profiling")  # GX's page sections, each rendered by the view above


class OfflineSiteBuilder(SiteBuilder):
    """GX's ``SiteBuilder`` whose pages load their assets from the site, show the batch's values as text
    (:class:`EscapingJinjaPageView`) and whose index lists every page in it.

    Configured as a Data Docs site with ``module_name: tenfold.quality.datadocs``, ``class_name:
    OfflineSiteBuilder`` and, to serve the assets locally, ``vendor_assets: <node_modules folder>``
    (absent or null: the pages keep GX's CDN URLs).
    """

    # GX hands a class the parts of its runtime environment that its __init__ names (site_name among them),
    # so the signature repeats SiteBuilder's.
    def __init__(self, data_context: Any, store_backend: dict[str, Any], site_name: str | None = None,
                 site_index_builder: dict[str, Any] | None = None, show_how_to_buttons: bool = True,
                 site_section_builders: dict[str, Any] | None = None,
                 runtime_environment: dict[str, Any] | None = None, vendor_assets: str | None = None,
                 **kwargs: Any) -> None:
        # Every page section renders with the escaping view, unless the config names its own view.
        sections = dict(site_section_builders or {})
        for name in PAGE_SECTIONS:
            section = sections.get(name, {})
            if isinstance(section, dict) and "view" not in section:
                sections[name] = {**section, "view": dict(_VIEW)}
        super().__init__(data_context, store_backend, site_name=site_name, site_index_builder=site_index_builder,
                         show_how_to_buttons=show_how_to_buttons, site_section_builders=sections,
                         runtime_environment=runtime_environment, **kwargs)
        node_modules = Path(vendor_assets) if vendor_assets else None
        if node_modules is not None and (problems := missing_assets(node_modules)):
            log.warning("Data Docs will load bootstrap, jQuery and font-awesome from public CDNs, so they need internet "
                        "to display: %s missing from %s. Run `make setup` to install them.", ", ".join(problems),
                        node_modules)
            node_modules = None
        # GX hands the store it made to each section and index builder; they all get the offline one instead.
        store = OfflineHtmlSiteStore(store_backend, runtime_environment, node_modules)
        self.target_store = store
        for builder in (*self.site_section_builders.values(), self.site_index_builder):
            builder.target_store = store

    def build(self, resource_identifiers: Iterable[Any] | None = None, build_index: bool = True) -> tuple[Any, Any]:
        # SiteBuilder.build, except that the index keeps the pages whose results this context does not hold.
        for section in self.site_section_builders.values():
            section.build(resource_identifiers=resource_identifiers)
        self.target_store.copy_static_assets()
        _, index_links = self.site_index_builder.build(skip_and_clean_missing=False, build_index=build_index)
        return self.get_resource_url(only_if_exists=False), index_links


# --- where the site is built: the local site itself, or a working copy of the bucket's ----------------------


@dataclass
class DocsSite:
    """The folder GX builds a Data Docs site in, and the address a person opens a page of it at."""

    root: Path
    base_url: str  # file:///... locally, gs://<bucket>/<prefix> in the cloud

    def url(self, page: Path) -> str:
        """The address of ``page`` (a file under :attr:`root`)."""
        if self.base_url.startswith("file:"):
            return page.as_uri()
        return f"{self.base_url}/{page.relative_to(self.root).as_posix()}"


@dataclass
class BucketSite(DocsSite):
    """A working copy of a site kept in a GCS bucket: :meth:`pull` before the build, :meth:`push` after it."""

    settings: Settings | None = None
    remote: dict[str, int] = field(default_factory=dict)  # site path -> size, as listed by pull
    pulled: dict[str, tuple[int, int]] = field(default_factory=dict)  # site path -> (size, mtime_ns) after pull

    def _bucket(self) -> tuple[Any, str]:
        from tenfold.storage import gcs_client

        assert self.settings is not None
        return gcs_client(self.settings).bucket(self.settings.storage.artifacts_bucket), \
            self.settings.monitoring.data_docs_prefix.strip("/")

    def pull(self) -> None:
        """Download the validation results; stand in for every page with an empty file of its name."""
        bucket, prefix = self._bucket()
        for blob in bucket.client.list_blobs(bucket, prefix=prefix + "/"):
            rel = blob.name[len(prefix) + 1:]
            why = unsafe_relative_path(rel)
            if why is not None:  # GCS allows '..' in a name: downloaded, it would land outside the working folder
                log.warning("Data Docs: gs://%s/%s is not pulled: its name %s", bucket.name, blob.name, why)
                continue
            self.remote[rel] = int(blob.size or 0)
            local = self.root / rel
            if rel.startswith(RESULTS_FOLDER + "/"):
                local.parent.mkdir(parents=True, exist_ok=True)
                blob.download_to_filename(str(local))
            elif rel.split("/", 1)[0] in PAGE_FOLDERS and rel.endswith(".html"):
                local.parent.mkdir(parents=True, exist_ok=True)
                local.touch()
        self.pulled = {rel: _stamp(self.root / rel) for rel in self.remote if (self.root / rel).is_file()}

    def push(self) -> list[str]:
        """Upload what the build wrote (GX's unchanged static files are not sent again), the index last."""
        bucket, prefix = self._bucket()
        changed = []
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            rel = path.relative_to(self.root).as_posix()
            if rel.startswith("static/"):  # GX copies its static files at every build: send the new ones only
                if self.remote.get(rel) == path.stat().st_size:
                    continue
            elif self.pulled.get(rel) == _stamp(path):
                continue  # pulled results, and the stand-ins of pages the build did not render
            changed.append(rel)
        changed.sort(key=lambda rel: rel == "index.html")  # the index last: it never links a page not yet there
        for rel in changed:
            kind = _content_type(rel)
            bucket.blob(f"{prefix}/{rel}").upload_from_filename(
                str(self.root / rel), content_type=f"{kind}; charset=utf-8" if kind.startswith("text/") else kind)
        return changed


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def docs_site(settings: Settings) -> Iterator[DocsSite]:
    """The folder to build the Data Docs of ``settings`` in: the site itself locally, a working copy in the cloud.

    In the cloud the working copy is pulled from the bucket on entry and what the build wrote is pushed back
    when the block ends without an error.
    """
    from tenfold.quality.gate import data_docs_location

    location = data_docs_location(settings)
    if settings.is_local:
        Path(location).mkdir(parents=True, exist_ok=True)
        yield DocsSite(Path(location), Path(location).as_uri())
        return
    with tempfile.TemporaryDirectory(prefix="tenfold-data-docs-") as tmp:
        site = BucketSite(Path(tmp), location, settings=settings)
        site.pull()
        yield site
        site.push()

