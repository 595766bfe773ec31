"""Synthesize every stack ONCE per test session (the Google provider import alone takes ~10 s).

One CDK Terrain app holds dev, prod (with a domain: prod is refused without one), a renamed dev (prefix
``acme-dev``, for the settings round trip), a dev with its lake folders, network tags, orchestrator role and
inference work prefix renamed in settings (``relaid-dev``), a prod with another domain and an on-call address
(``tls-prod``), a prod whose replicas check IAP instead of a bearer token (``iap-prod``) and the known-bad fixture
stack (``bad_stack.py``); tests read the synthesized ``cdk.tf.json``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    # `infra` is imported as a package from the repository root; appended, so nothing installed is shadowed.
    sys.path.append(str(ROOT))
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

RENAMED_PREFIX = "acme-dev"
RELAID_PREFIX = "relaid-dev"
BAD_STACK = "known-bad"
ONCALL = "ml-oncall@acme.test"
PROD_DOMAIN = "api.example.com"  # TENFOLD_SERVING__LOAD_BALANCER__DOMAIN at synth: prod (and IAP) refuse plain HTTP


def with_domain(settings: Any, domain: str) -> Any:
    """``settings`` with ``serving.load_balancer.domain`` (as TENFOLD_SERVING__LOAD_BALANCER__DOMAIN at synth gives)."""
    lb = settings.serving.load_balancer.model_copy(update={"domain": domain})
    return settings.model_copy(update={"serving": settings.serving.model_copy(update={"load_balancer": lb})})


def _load(stem: str) -> Any:
    name = f"tenfold_tests_infra_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{stem}.py"))
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def bad_stack_module() -> Any:
    return _load("bad_stack")


@pytest.fixture(scope="session")
def renamed_settings() -> Any:
    from tenfold.config import build_settings

    return build_settings("dev", prefix=RENAMED_PREFIX)


@pytest.fixture(scope="session")
def relaid_settings() -> Any:
    """dev with other lake layout folders, network tags, orchestrator role id and inference work prefix, all set in
    settings."""
    from tenfold.config import build_settings

    s = build_settings("dev", prefix=RELAID_PREFIX)
    layout = s.storage.lake_layout.model_copy(update={"staging": "incoming", "quarantine": "held-back"})
    return s.model_copy(update={
        "storage": s.storage.model_copy(update={"lake_layout": layout}),
        "network": s.network.model_copy(update={"serving_tag": "relaid-web", "ssh_tag": "relaid-admin",
                                                "training_tag": "relaid-train", "dataproc_tag": "relaid-spark"}),
        "infra": s.infra.model_copy(update={"orchestrator_role_id": "relaid_conductor"}),
        "inference": s.inference.model_copy(update={"work_prefix": "relaid-work"}),
    })


@pytest.fixture(scope="session")
def tls_settings() -> Any:
    """prod with a domain (the load balancer gets an HTTPS proxy and a managed certificate) and an on-call address
    (TENFOLD_ALERT_EMAIL at synth)."""
    from tenfold.config import build_settings

    return with_domain(build_settings("prod", {"TENFOLD_ALERT_EMAIL": ONCALL}, prefix="tls-prod"), "ml.example.com")


@pytest.fixture(scope="session")
def prod_settings() -> Any:
    """prod as synthesized: its settings with a domain (the names are get_settings("prod")'s)."""
    from tenfold.config import get_settings

    return with_domain(get_settings("prod"), PROD_DOMAIN)


IAP_AUDIENCE = "/projects/123456789012/global/backendServices/4242424242"


@pytest.fixture(scope="session")
def iap_settings() -> Any:
    """prod with serving.server.auth_mode "iap" (as TENFOLD_SERVING__SERVER__AUTH_MODE=iap at synth would give), and
    the domain IAP needs in front of it."""
    from tenfold.config import build_settings

    return build_settings("prod", {"TENFOLD_SERVING__SERVER__AUTH_MODE": "iap",
                                   "TENFOLD_SERVING__SERVER__IAP_AUDIENCE": IAP_AUDIENCE,
                                   "TENFOLD_SERVING__LOAD_BALANCER__DOMAIN": "iap.example.com"}, prefix="iap-prod")


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory, prod_settings: Any, renamed_settings: Any, tls_settings: Any,
          relaid_settings: Any, iap_settings: Any) -> Any:
    from infra.stacks.synthesized import synthesize
    from tenfold.config import get_settings

    bad = _load("bad_stack")

    def extra(app: Any) -> None:
        bad.BadStack(app, BAD_STACK)

    return synthesize(
        tmp_path_factory.mktemp("cdktf.out"),
        [get_settings("dev"), prod_settings, renamed_settings, tls_settings, relaid_settings, iap_settings],
        extra=extra,
    )


_ATTRIBUTE = 'api.getAttribute("storage.googleapis.com/objectListPrefix", "")'
# What the evaluator below reads, as Python once translated: the three values, string literals, ==, startswith, the
# logical operators and parentheses. Anything else in a condition fails the test that reads it, unjudged.
_CEL_LEFT = re.compile(r'"(?:[^"\\]|\\.)*"|\b(?:r_type|r_name|prefix|and|or)\b|==|\.startswith\(|[()\s]')


def _condition_allows(expression: str, *, obj: str | None = None, list_prefix: str | None = None) -> bool:
    """Whether an IAM condition (infra.components.iam.folders_condition) allows reading the object ``obj`` (a full
    resource name: a ``storage.googleapis.com/Object``) or a list call with prefix ``list_prefix`` (checked on the
    bucket: a ``storage.googleapis.com/Bucket``), evaluated whole: its resource types and its && and || count (a
    regex over its strings passed a condition whose && had become ||, which lets every object of the bucket in)."""
    python = (expression.replace(_ATTRIBUTE, "prefix").replace("resource.type", "r_type")
              .replace("resource.name", "r_name").replace(".startsWith(", ".startswith(")
              .replace("&&", " and ").replace("||", " or "))
    if _CEL_LEFT.sub("", python):
        raise SyntaxError(f"cannot judge the condition {expression!r}: {_CEL_LEFT.sub('', python)!r} is left")
    if obj is not None:
        values = {"r_type": "storage.googleapis.com/Object", "r_name": obj, "prefix": ""}
    elif list_prefix is not None:
        values = {"r_type": "storage.googleapis.com/Bucket", "r_name": "projects/_/buckets/_", "prefix": list_prefix}
    else:
        return False
    return bool(eval(python, {"__builtins__": {}}, values))  # only the tokens checked above


@pytest.fixture
def condition_allows() -> Any:
    return _condition_allows
