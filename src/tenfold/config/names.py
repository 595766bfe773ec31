"""Validators for Google Cloud naming rules.

Each check raises ``ValueError`` naming the rule that was broken, so a bad settings value fails at
load time with a message a person can act on, not at ``cdktn deploy`` time.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated

from pydantic import AfterValidator

_RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]*[a-z0-9]$")
_PUBSUB = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]*$")
_SERVICE_ACCOUNT = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])$")
_PROJECT = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
_ROLE_ID = re.compile(r"^[A-Za-z0-9_.]{3,64}$")


def check_resource_name(value: str) -> str:
    """Compute Engine and most GCP resources: RFC 1035, 1-63 characters."""
    if not 1 <= len(value) <= 63 or not _RFC1035.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid GCP resource name: use 1-63 lowercase letters, digits or '-', "
            "starting with a letter and not ending with '-'"
        )
    return value


def check_bucket_name(value: str) -> str:
    if not 3 <= len(value) <= 63 or not _BUCKET.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not a valid bucket name: use 3-63 lowercase letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    if value.startswith("goog") or "google" in value:
        raise ValueError(f"bucket name {value!r} may not start with 'goog' or contain 'google'")
    return value


def check_pubsub_name(value: str) -> str:
    if not 3 <= len(value) <= 255 or not _PUBSUB.fullmatch(value) or value.startswith("goog"):
        raise ValueError(
            f"{value!r} is not a valid Pub/Sub topic or subscription name: 3-255 characters, starting "
            "with a letter, from letters, digits and -_.~+%, not starting with 'goog'"
        )
    return value


def check_service_account_id(value: str) -> str:
    if not 6 <= len(value) <= 30 or not _SERVICE_ACCOUNT.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid service account id: 6-30 lowercase letters, digits or '-', "
            "starting with a letter"
        )
    return value


def check_project_id(value: str) -> str:
    if not _PROJECT.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid GCP project id: 6-30 lowercase letters, digits or '-', "
            "starting with a letter"
        )
    return value


def check_role_id(value: str) -> str:
    """IAM custom role ids: 3-64 letters, digits, '_' or '.' (no '-')."""
    if not _ROLE_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid IAM custom role id: 3-64 letters, digits, '_' or '.'")
    return value


ResourceName = Annotated[str, AfterValidator(check_resource_name)]
BucketName = Annotated[str, AfterValidator(check_bucket_name)]
PubSubName = Annotated[str, AfterValidator(check_pubsub_name)]
ServiceAccountId = Annotated[str, AfterValidator(check_service_account_id)]
ProjectId = Annotated[str, AfterValidator(check_project_id)]
RoleId = Annotated[str, AfterValidator(check_role_id)]


def scoped_key(run_key: str, *scope: str) -> str:
    """``run_key`` narrowed to what a unit of work depends on (a training config's digest; a model version and
    its input): a readable prefix of the run key and a digest of the whole key and the scope.

    The key stays a valid folder, GCS prefix and cloud run id (``[a-z0-9_.-]``, <= 59 characters when
    ``run_key`` is), and the digest covers the whole run key because the prefix may cut off what made it unique.
    """
    digest = hashlib.sha256("\0".join((run_key, *scope)).encode()).hexdigest()[:12]
    return f"{run_key[:46].rstrip('-._')}-{digest}"
