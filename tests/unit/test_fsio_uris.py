"""tenfold.fsio.filesystem_from_uri: the one way a file:// or gs:// URI is opened with pyarrow."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tenfold.fsio import GCS_RETRY_LIMIT_S, filesystem_from_uri


def test_a_local_uri_opens_as_before(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    fs, path = filesystem_from_uri((tmp_path / "a.txt").as_uri())
    assert fs.type_name == "local" and path == str(tmp_path / "a.txt")
    assert fs.get_file_info(path).size == 1


def test_a_gs_uri_without_credentials_fails_within_the_bound_instead_of_hanging_for_15_minutes(tmp_path: Path) -> None:
    """No cloud credentials and no network (this machine): pyarrow's GCS client retried for its default 15 minutes,
    so `TENFOLD_ENV=dev tenfold ingest` printed nothing for that long. Opened through filesystem_from_uri, the call
    fails with an OSError within the bound (2 s here, GCS_RETRY_LIMIT_S in use)."""
    assert 10 <= GCS_RETRY_LIMIT_S <= 300
    script = ("import tenfold.fsio as f; f.GCS_RETRY_LIMIT_S = 2\n"
              "fs, path = f.filesystem_from_uri('gs://tenfold-no-such-bucket-7f3a/lake/features')\n"
              "assert path == 'tenfold-no-such-bucket-7f3a/lake/features', path\n"
              "from pathlib import Path\nfrom tenfold.outages import ending\n"
              "try:\n    fs.get_file_info(path)\nexcept OSError as exc:\n"
              "    print(ending(exc, 'tenfold ingest', Path('.'), debug_hint='with TENFOLD_DEBUG=1'))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_", "STORAGE_EMULATOR"))}
    env["HOME"] = str(tmp_path)  # no gcloud application-default credentials either
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    # the line the command ends with says what to do: log in (not "fix its permissions, or free space")
    assert done.stdout.strip() == ("error: `tenfold ingest` found no Google Cloud credentials (OSError): run `gcloud auth "
                                   "application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS), or unset "
                                   "TENFOLD_ENV to work on the local platform"), done.stdout
    assert time.monotonic() - started < 45


def test_a_gs_uri_gets_the_bound_and_one_that_sets_its_own_keeps_it(monkeypatch) -> None:
    import pyarrow.fs as pafs

    seen: list[str] = []
    real = pafs.FileSystem

    class Spy:
        @staticmethod
        def from_uri(uri: str):  # type: ignore[no-untyped-def]
            seen.append(uri)
            return real.from_uri(uri)

    monkeypatch.setattr(pafs, "FileSystem", Spy)
    assert filesystem_from_uri("gs://bucket/x")[1] == "bucket/x"
    assert filesystem_from_uri("gs://bucket/x?scheme=http&endpoint_override=127.0.0.1:1")[1] == "bucket/x"
    assert filesystem_from_uri("gs://bucket/x?retry_limit_seconds=7")[1] == "bucket/x"
    assert seen == [f"gs://bucket/x?retry_limit_seconds={GCS_RETRY_LIMIT_S}",
                    f"gs://bucket/x?scheme=http&endpoint_override=127.0.0.1:1&retry_limit_seconds={GCS_RETRY_LIMIT_S}",
                    "gs://bucket/x?retry_limit_seconds=7"]


def test_the_records_of_a_lake_in_a_folder_with_a_space_or_an_accent_stay_in_that_folder(tmp_path: Path) -> None:
    """The local lake's URI is Path.as_uri(), which escapes a space or a non-ASCII letter. lake_objects took the
    URI's path as it was, so inference results, drift triggers and month choices went to a new folder named
    `Jos%C3%A9%20dir` beside the real one, which `make clean` then left behind."""
    from tenfold.config import build_settings
    from tenfold.data.lake import Lake
    from tenfold.storage import lake_objects
    from tenfold.training.launch import _local_path

    home = tmp_path / "José dir" / ".tenfold"
    settings = build_settings("local", {"TENFOLD_HOME": str(home)})
    assert "%20" in settings.storage.lake_uri  # escaped, as the lake's readers expect
    objects = lake_objects(settings, "work/triggers")
    assert objects.create("t.json", b"{}")
    assert (home / "lake" / "work" / "triggers" / "t.json").read_bytes() == b"{}"
    assert Lake.from_settings(settings).root == str(home / "lake")
    assert _local_path(f"{settings.storage.lake_uri}/work/model") == home / "lake" / "work" / "model"
