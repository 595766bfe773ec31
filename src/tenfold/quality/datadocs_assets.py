"""The files GX's Data Docs pages load from CDNs, and where ``make setup`` installs the same files from npm.

Standard library only, and no import of tenfold at load: ``scripts/setup.sh`` loads this file by its path to ask
what is missing (:func:`missing_assets`) without importing Great Expectations (seconds) on every setup.
:mod:`tenfold.quality.datadocs` serves them in every Data Docs site.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

VENDOR_PREFIX = ("static", "vendor")  # site path of the vendor files, under the site root
ASSETS_TOOL = "datadocs-assets"  # the npm project in requirements/npm/ and its install folder in .tools/


@dataclass(frozen=True)
class Asset:
    """One file a GX template loads from a CDN, and where its npm package holds the same file."""

    url: str  # exactly as GX's templates spell it
    folder: str  # the package's folder under node_modules (an npm alias for a second version)
    name: str  # the npm package name
    version: str  # the version GX names (checked against the installed package.json)
    path: str  # the file inside the package
    siblings: tuple[str, ...] = ()  # folders the file loads relatively (font-awesome's ../webfonts)

    @property
    def site_folder(self) -> tuple[str, ...]:
        """The package's folder in a Data Docs site (a scoped name is two folders, as in node_modules)."""
        return (*VENDOR_PREFIX, *f"{self.name}@{self.version}".split("/"))

    @property
    def site_path(self) -> str:
        """Where the file lives in a Data Docs site, relative to its root."""
        return "/".join((*self.site_folder, self.path))


_BT, _BT0 = "https://unpkg.com/bootstrap-table@1.19.1/dist/", "https://unpkg.com/bootstrap-table@1.19.0/dist/"
_FILTER = "extensions/filter-control/bootstrap-table-filter-control"
ASSETS: tuple[Asset, ...] = (
    Asset("https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css", "bootstrap", "bootstrap", "4.3.1",
          "dist/css/bootstrap.min.css"),
    Asset("https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js", "bootstrap", "bootstrap", "4.3.1",
          "dist/js/bootstrap.min.js"),
    Asset("https://code.jquery.com/jquery-3.7.1.min.js", "jquery", "jquery", "3.7.1", "dist/jquery.min.js"),
    Asset("https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js", "popper.js", "popper.js", "1.12.9",
          "dist/umd/popper.min.js"),
    Asset(_BT + "bootstrap-table.min.css", "bootstrap-table", "bootstrap-table", "1.19.1", "dist/bootstrap-table.min.css"),
    Asset(_BT + "bootstrap-table.min.js", "bootstrap-table", "bootstrap-table", "1.19.1", "dist/bootstrap-table.min.js"),
    Asset(_BT + _FILTER + ".min.js", "bootstrap-table", "bootstrap-table", "1.19.1", f"dist/{_FILTER}.min.js"),
    # GX's pages name the filter-control styles of 1.19.0 beside the 1.19.1 scripts; an npm alias installs both.
    Asset(_BT0 + _FILTER + ".css", "bootstrap-table-1.19.0", "bootstrap-table", "1.19.0", f"dist/{_FILTER}.css"),
    Asset(_BT0 + _FILTER + ".min.css", "bootstrap-table-1.19.0", "bootstrap-table", "1.19.0", f"dist/{_FILTER}.min.css"),
    Asset("https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css",
          "bootstrap-datepicker", "bootstrap-datepicker", "1.9.0", "dist/css/bootstrap-datepicker.min.css"),
    Asset("https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js",
          "bootstrap-datepicker", "bootstrap-datepicker", "1.9.0", "dist/js/bootstrap-datepicker.min.js"),
    Asset("https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css",
          "@forevolve/bootstrap-dark", "@forevolve/bootstrap-dark", "1.1.0", "dist/css/bootstrap-prefers-dark.css"),
    Asset("https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css", "@fortawesome/fontawesome-free",
          "@fortawesome/fontawesome-free", "6.6.0", "css/all.min.css", siblings=("webfonts",)),
    # GX names only the major versions of vega; the jsDelivr URL serves the package's "jsdelivr" file, and npm
    # pins the newest release of that major (requirements/npm/datadocs-assets/package.json).
    Asset("https://cdn.jsdelivr.net/npm/vega@5", "vega", "vega", "5.33.1", "build/vega.min.js"),
    Asset("https://cdn.jsdelivr.net/npm/vega-lite@5", "vega-lite", "vega-lite", "5.23.0", "build/vega-lite.min.js"),
    Asset("https://cdn.jsdelivr.net/npm/vega-embed@6", "vega-embed", "vega-embed", "6.29.0", "build/vega-embed.min.js"),
)

def vendor_assets_dir(root: Path | None = None) -> Path:
    """The ``node_modules`` folder ``make setup`` fills with the Data Docs vendor files."""
    if root is None:
        from tenfold.config import project_root

        root = project_root()
    return root / ".tools" / ASSETS_TOOL / "node_modules"


def missing_assets(node_modules: Path) -> list[str]:
    """What is absent or at another version in ``node_modules`` (empty when every asset is there)."""
    problems = []
    for folder in sorted({a.folder for a in ASSETS}):
        wanted = next(a for a in ASSETS if a.folder == folder)
        try:
            found = json.loads((node_modules / folder / "package.json").read_text()).get("version")
        except (OSError, ValueError):
            problems.append(f"{wanted.name}@{wanted.version} (not installed)")
            continue
        if found != wanted.version:
            problems.append(f"{wanted.name}@{wanted.version} (found {found})")
    problems += [f"{a.name}@{a.version}/{a.path} (file missing)" for a in ASSETS
                 if not problems and not (node_modules / a.folder / a.path).is_file()]
    return problems
