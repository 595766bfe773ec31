"""Every settings key the README and docs/ name resolves, looked up as ``tenfold config get`` looks it up
(:meth:`tenfold.config.Settings.get`), in every environment.

docs/rollout-cloud.md named ``rollout.traffic_lag_s``: ``tenfold config get rollout.traffic_lag_s`` ends in "unknown
settings key" and exit 2 (the key is ``serving.rollout.traffic_lag_s``). A reader copies a key from the docs into that
command, into a ``TENFOLD_*`` variable's name or into code; one that names nothing sends them nowhere.

A key is a backticked span that is a dotted name and nothing else (``settings.`` before it, as the docs write it about
code, is dropped; ``.{a, b}`` or ``["a"|"b"]`` after it names several), or the argument of a ``tenfold config get`` in
a command. It is collected when its first part names a section of :class:`tenfold.config.Settings`, at the top or
nested (``rollout`` is ``serving.rollout``), or when the doc says it is a setting (``settings.region``, a ``tenfold
config get`` argument): the section names come from the models' fields, so a ``foo.bar`` that is not about settings is
never collected, and a key written from a nested section, which ``tenfold config get`` refuses, is. A key holding a ``<placeholder>`` is skipped, and so is a file's name (``airflow.cfg``) or a module path of this
checkout (``infra.components.orchestration.composer_pypi_packages``): sections share their names with packages.
"""

from __future__ import annotations

import itertools
import re
import typing
from functools import cache
from pathlib import Path

import pytest
from pydantic import BaseModel

from tenfold.config import ENVIRONMENTS, Settings, build_settings

ROOT = Path(__file__).parents[2]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
# The suffixes of the files the docs name in backticks; no settings field is named like one (checked below).
FILE_SUFFIXES = frozenset({"cfg", "ini", "json", "md", "py", "toml", "txt", "yaml", "yml"})
_PART = r"[a-z_][a-z0-9_]*"
_SPAN = re.compile(rf"(?P<said>settings\.)?(?P<key>{_PART}(?:\.{_PART})*)(?P<more>\.?(?:\{{[^{{}}]*\}}[a-z0-9_]*)+|\[[^]]*\])?")
_COMMAND = re.compile(rf"tenfold config get (?P<key>{_PART}(?:\.{_PART})*)(?![\w.$<{{])")  # not `storage.$key`


def _models(model: type[BaseModel]) -> typing.Iterator[tuple[str, type[BaseModel]]]:
    """(field name, model) of every field of ``model`` that holds a model, itself or in a dict, at any depth."""
    for name, field in model.model_fields.items():
        for kind in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                yield name, kind
                yield from _models(kind)


@cache
def section_names() -> frozenset[str]:
    return frozenset(name for name, _ in _models(Settings))


def _expand(key: str, more: str | None) -> list[str]:
    """``key`` with what follows it in the span: ``.{a, b}`` and ``{x,y}_{m,n}`` name each of their choices,
    ``["a"|"b"]`` each dict key."""
    if not more:
        return [key]
    if more.startswith("["):
        return [f"{key}.{name}" for name in re.findall(r'"([^"]+)"', more)]
    pieces = re.split(r"\{([^{}]*)\}", more.removeprefix("."))  # text, choices, text, choices, ..., text
    choices = [[p] if i % 2 == 0 else [c.strip() for c in p.split(",")] for i, p in enumerate(pieces)]
    return [f"{key}.{''.join(chosen)}" for chosen in itertools.product(*choices)]


def _not_a_setting(key: str) -> bool:
    """A file's name, or a module (or a name in one) of this checkout, as a section's name may begin both."""
    parts = key.split(".")
    if parts[-1] in FILE_SUFFIXES:
        return True
    return any((base / Path(*parts[:n])).with_suffix(".py").is_file() or (base / Path(*parts[:n])).is_dir()
               for base in (ROOT, ROOT / "src") for n in range(2, len(parts) + 1))


def keys_in(text: str) -> list[str]:
    """Every settings key ``text`` (a doc) names (see the module docstring)."""
    named = [m for span in re.findall(r"`([^`\n]+)`", text)
             if (m := _SPAN.fullmatch(span)) and "." in span]  # a word alone is no key
    keys = [(k, bool(m["said"])) for m in named for k in _expand(m["key"], m["more"])]
    keys += [(m["key"], True) for m in _COMMAND.finditer(text)]
    return [key for key, said in keys if (said or key.split(".")[0] in section_names()) and not _not_a_setting(key)]


def documented_keys() -> list[tuple[str, str]]:
    """(doc, key) for every settings key the README and docs/ name."""
    return [(doc.name, key) for doc in DOCS for key in keys_in(doc.read_text())]


def test_the_collection_finds_each_way_the_docs_write_a_key_and_nothing_else() -> None:
    """Never vacuous: each form is collected, a key of a nested section's among them; what is not about settings (a
    file, a module path, a placeholder, a variable, a word alone, code) is not; a file suffix skipped is no field's."""
    text = """`serving.rollout.interval_s` and `rollout.traffic_lag_s`, `settings.region`, `settings.serving.port`,
    `settings.messaging.{predictions_topic, feedback_topic}`, `serving.fleet.{stable,canary}_{min,max}`,
    `settings.messaging.subscriptions["predictions"|"feedback"]`; not `airflow.cfg`, `infra.main`, `spark.driver.x/y`,
    `serving.<pool>_fleet.min_replicas`, `serving`, `foo.bar`, `from airflow.sdk import dag`.
    ```bash
    URL=$(tenfold config get serving.load_balancer.address --env dev); tenfold config get storage.$key
    ```"""
    assert keys_in(text) == [
        "serving.rollout.interval_s", "rollout.traffic_lag_s", "region", "serving.port", "messaging.predictions_topic",
        "messaging.feedback_topic", "serving.fleet.stable_min", "serving.fleet.stable_max", "serving.fleet.canary_min",
        "serving.fleet.canary_max", "messaging.subscriptions.predictions", "messaging.subscriptions.feedback",
        "serving.load_balancer.address"]
    assert len({key for _, key in documented_keys()}) > 50
    fields = {name for model in (Settings, *(m for _, m in _models(Settings))) for name in model.model_fields}
    assert FILE_SUFFIXES.isdisjoint(fields)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_settings_key_the_docs_name_resolves(env: str) -> None:
    settings = build_settings(env)  # type: ignore[arg-type]
    unknown = []
    for doc, key in documented_keys():
        try:
            settings.get(key)
        except (KeyError, ValueError) as exc:  # what `tenfold config get` refuses with exit 2
            unknown.append(f"{doc}: `{key}`: {exc.args[0] if exc.args else exc}")
    assert not unknown, "\n".join(unknown)
