"""The registry on fake-gcs-server with the real google-cloud-storage client."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tenfold.config import Settings
from tenfold.registry import (
    CHAMPION,
    AliasConflict,
    IntegrityError,
    InvalidModelDir,
    Lineage,
    ModelRegistry,
    RegistryError,
    UnknownVersion,
    VersionConflict,
)
from tenfold.registry import registry as registry_module

ModelDirFactory = Callable[..., Path]
METRICS = {"auc": 0.7, "log_loss": 0.45, "brier": 0.15}


def test_register_get_list_and_lineage(registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage) -> None:
    reg = ModelRegistry(registry_settings)
    mv = reg.register(make_model_dir(1), lineage, metrics=METRICS)
    assert len(mv.version) == 20 and mv.digest.startswith(mv.version)
    assert {f.path for f in mv.files} == {"meta.json", "metrics.json", "weights.pt", "preprocessing.json"}  # no checkpoints
    got = reg.get(mv.version)
    assert got.metrics == METRICS
    assert got.lineage is not None and got.lineage.train_partitions[0].run_id == "r1"
    assert got.lineage.training_config == {"epochs": 1}
    assert [v.version for v in reg.list_versions()] == [mv.version]
    with pytest.raises(UnknownVersion, match="tenfold models list"):
        reg.get("0" * 20)


def test_same_content_is_idempotent_and_keeps_the_first_lineage(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage
) -> None:
    reg = ModelRegistry(registry_settings)
    first = reg.register(make_model_dir(2), lineage, metrics=METRICS)
    again = reg.register(make_model_dir(2), Lineage(feature_table="other", train_partitions=(), holdout_partitions=(),
                                                    training_config={}), metrics=METRICS)
    assert again.version == first.version and again.created_at == first.created_at
    assert again.lineage is not None and again.lineage.feature_table == "features"
    assert len(reg.list_versions()) == 1
    other = reg.register(make_model_dir(2), lineage, metrics={**METRICS, "auc": 0.71})  # metrics are content too
    assert other.version != first.version


def test_different_content_under_an_existing_id_is_impossible(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = ModelRegistry(registry_settings)
    original = reg.register(make_model_dir(3), lineage, metrics=METRICS)
    # Force a hash collision: every content now maps to the existing version's digest. The store's
    # create-only writes must still refuse to replace a single byte of the committed version.
    monkeypatch.setattr(registry_module, "content_digest", lambda files: original.digest)
    with pytest.raises(VersionConflict):
        reg.register(make_model_dir(4), lineage, metrics=METRICS)
    # Even when the registry's own "already committed?" check is bypassed (a racing writer that read
    # before the commit), the store's create-only preconditions refuse the first differing object.
    monkeypatch.setattr(ModelRegistry, "_read_version", lambda self, version, with_lineage: None)
    with pytest.raises(VersionConflict, match="immutable"):
        reg.register(make_model_dir(4), lineage, metrics=METRICS)
    monkeypatch.undo()
    # And a direct write over a stored file is refused by the store, not just by the registry's checks.
    name = reg._name("versions", original.version, "files", "weights.pt")
    with pytest.raises(VersionConflict, match="immutable"):
        reg._create(name, data=b"evil", sha256="0" * 64)
    assert reg.get(original.version) == original
    assert reg.download(original.version, registry_settings.local.home / "dl-3").joinpath("weights.pt").read_bytes() == (
        make_model_dir(3).joinpath("weights.pt").read_bytes()
    )


def test_an_interrupted_register_is_invisible_and_finished_by_the_next(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = ModelRegistry(registry_settings)
    from google.cloud.storage import Blob

    real_upload = Blob.upload_from_string

    def crash_on_commit(self: Blob, data: object, *args: object, **kwargs: object) -> object:
        if self.name.endswith("/VERSION.json"):
            raise ConnectionError("killed before the commit marker")
        return real_upload(self, data, *args, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_string", crash_on_commit)
    with pytest.raises(ConnectionError):
        reg.register(make_model_dir(5), lineage, metrics=METRICS)
    monkeypatch.undo()
    assert reg.list_versions() == []
    mv = reg.register(make_model_dir(5), lineage, metrics=METRICS)
    assert [v.version for v in reg.list_versions()] == [mv.version]


# A registering process that stops, once the version's files and lineage are stored and before VERSION.json is written,
# to be SIGKILLed there: its hook writes the lineage object's name to the ready file, then waits (bounded, so that a
# test that never kills it leaves no process behind).
_REGISTER_UNTIL_KILLED = """
import os, pickle, sys, time
from pathlib import Path
from google.cloud.storage import Blob
from tenfold.registry import ModelRegistry

settings, lineage, model_dir, metrics, ready = pickle.loads(Path(sys.argv[1]).read_bytes())
real_upload = Blob.upload_from_string

def upload_then_wait_after_the_lineage(self, data, *args, **kwargs):
    out = real_upload(self, data, *args, **kwargs)
    if self.name.endswith("/lineage.json"):
        Path(ready).write_text(self.name)
        time.sleep(120)
        os._exit(3)
    return out

Blob.upload_from_string = upload_then_wait_after_the_lineage
ModelRegistry(settings).register(model_dir, lineage, metrics=metrics)
"""


def test_a_register_sigkilled_before_its_commit_marker_is_invisible_and_finished_by_the_next(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, tmp_path: Path
) -> None:
    """The test above raises where a process would die; here a real child process registers the folder and is
    SIGKILLed once every file of the version and its lineage are in the store, before VERSION.json: the half-written
    version is neither listed nor readable, and registering the folder again commits it under the same id."""
    d = make_model_dir(9)
    ready = tmp_path / "ready"
    (tmp_path / "args.pickle").write_bytes(pickle.dumps((registry_settings, lineage, d, METRICS, str(ready))))
    with (tmp_path / "child.log").open("wb") as log:
        child = subprocess.Popen([sys.executable, "-c", _REGISTER_UNTIL_KILLED, str(tmp_path / "args.pickle")],
                                 stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ready.exists(), f"the child never stored the lineage ({child.poll()=}): " + (
                tmp_path / "child.log").read_text()
            os.kill(child.pid, signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    version = ready.read_text().split("/")[-2]
    reg = ModelRegistry(registry_settings)
    assert ready.read_text() == reg._name("versions", version, "lineage.json")
    for name in ("meta.json", "metrics.json", "weights.pt", "preprocessing.json"):  # the child stored them all
        assert reg.bucket.blob(reg._name("versions", version, "files", name)).exists(), name
    assert reg.list_versions() == []
    assert not reg.exists(version)
    with pytest.raises(UnknownVersion):
        reg.get(version)
    assert not reg.bucket.blob(reg._name("versions", version, "VERSION.json")).exists()
    mv = reg.register(d, lineage, metrics=METRICS)
    assert mv.version == version  # content-addressed: the killed register's id, now committed
    assert [v.version for v in reg.list_versions()] == [version]
    assert reg.download(version, tmp_path / "dl").joinpath("weights.pt").read_bytes() == (d / "weights.pt").read_bytes()


def test_a_file_changed_while_it_is_registered_is_refused_not_committed(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights are rewritten between the scan that hashed them and their upload (a trainer still writing): the
    stored object would not match VERSION.json and the committed version would fail every download."""
    reg = ModelRegistry(registry_settings)
    d = make_model_dir(6)
    scan = ModelRegistry._scan

    def rewritten_after_the_scan(self: ModelRegistry, *args: object, **kwargs: object) -> object:
        scanned = scan(self, *args, **kwargs)  # type: ignore[arg-type]
        (d / "weights.pt").write_bytes(b"the next epoch's weights")
        return scanned

    monkeypatch.setattr(ModelRegistry, "_scan", rewritten_after_the_scan)
    with pytest.raises(InvalidModelDir, match=r"weights\.pt changed while it was being registered"):
        reg.register(d, lineage, metrics=METRICS)
    monkeypatch.undo()
    assert reg.list_versions() == []
    mv = reg.register(d, lineage, metrics=METRICS)  # the folder as it is now
    assert reg.download(mv.version, registry_settings.local.home / "dl-6").joinpath("weights.pt").read_bytes() == (
        b"the next epoch's weights")


def test_registering_again_restores_a_missing_stored_file(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, tmp_path: Path
) -> None:
    """A retried register finds the version committed: it confirms the version's objects exist and creates a lost
    one again from the folder (what download's "missing" error asks for), instead of returning a broken version."""
    reg = ModelRegistry(registry_settings)
    d = make_model_dir(7)
    mv = reg.register(d, lineage, metrics=METRICS)
    reg.bucket.blob(reg._name("versions", mv.version, "files", "weights.pt")).delete()
    with pytest.raises(IntegrityError, match="missing"):
        reg.download(mv.version, tmp_path / "before")
    assert reg.register(d, lineage, metrics=METRICS) == mv
    assert (reg.download(mv.version, tmp_path / "after") / "weights.pt").read_bytes() == (d / "weights.pt").read_bytes()


def test_bad_model_dirs_are_refused(registry_settings: Settings, tmp_path: Path, lineage: Lineage) -> None:
    reg = ModelRegistry(registry_settings)
    with pytest.raises(InvalidModelDir, match="does not exist"):
        reg.register(tmp_path / "nope", lineage, metrics=METRICS)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.pt").write_bytes(b"x")
    with pytest.raises(InvalidModelDir, match=r"meta\.json"):
        reg.register(tmp_path / "m", lineage, metrics=METRICS)
    (tmp_path / "m" / "meta.json").write_text("{}")
    with pytest.raises(InvalidModelDir, match="metrics"):
        reg.register(tmp_path / "m", lineage)


@pytest.mark.parametrize("name", ["notes\\v2.txt", "a:b.txt"])
def test_a_file_whose_name_readers_take_for_a_path_out_of_the_folder_is_refused_before_anything_is_committed(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, name: str
) -> None:
    """Linux allows these names; every reader refuses them as a way out of the folder. The version was committed,
    then register's own read-back called the registry tampered with, and the version was hidden for good."""
    reg = ModelRegistry(registry_settings)
    d = make_model_dir(82)
    (d / name).write_text("notes")
    with pytest.raises(InvalidModelDir, match=r"its name is read as a path outside the model folder.*rename or remove"):
        reg.register(d, lineage, metrics=METRICS)
    assert not [b.name for b in reg.client.list_blobs(reg.bucket_name, prefix=reg._name("versions") + "/")]
    (d / name).unlink()
    assert reg.register(d, lineage, metrics=METRICS).version in {v.version for v in reg.list_versions()}


def test_a_folder_without_the_models_weights_or_preprocessing_state_is_refused(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage
) -> None:
    """Three files were enough before (any three): a version that could never load was committed. The names and
    hashes are those meta.json records, checked as the loader checks them."""
    import hashlib

    reg = ModelRegistry(registry_settings)
    for missing in ("weights.pt", "preprocessing.json"):
        d = make_model_dir(80)
        (d / missing).rename(d / "other.bin")  # still three files besides metrics
        with pytest.raises(InvalidModelDir, match=rf"has no {missing.replace('.', '[.]')}"):
            reg.register(d, lineage, metrics=METRICS)
    d = make_model_dir(81)
    meta = json.loads((d / "meta.json").read_text())
    meta.update(weights_sha256=hashlib.sha256((d / "weights.pt").read_bytes()).hexdigest(),
                preprocessing_sha256=hashlib.sha256(b"what was saved").hexdigest())
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidModelDir, match=r"preprocessing\.json does not match meta\.json"):
        reg.register(d, lineage, metrics=METRICS)
    (d / "preprocessing.json").write_bytes(b"what was saved")
    assert reg.register(d, lineage, metrics=METRICS).version  # the recorded hashes match: registered
    assert reg.list_versions() != []


def test_alias_moves(registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage) -> None:
    reg = ModelRegistry(registry_settings)
    a = reg.register(make_model_dir(10), lineage, metrics=METRICS).version
    b = reg.register(make_model_dir(11), lineage, metrics=METRICS).version
    assert reg.resolve(CHAMPION) is None
    with pytest.raises(UnknownVersion):
        reg.promote("f" * 20, expected=None)
    first = reg.promote(a, expected=None, reason="first")
    assert (first.seq, first.previous, reg.resolve(CHAMPION)) == (1, None, a)
    with pytest.raises(AliasConflict, match="not nothing as expected"):
        reg.promote(b, expected=None)  # someone believes there is no champion yet: refused
    assert reg.resolve(CHAMPION) == a
    assert reg.promote(a, expected=a).seq == 1  # already there: a no-op
    second = reg.promote(b, expected=a, details={"decision": "x"})
    assert (second.seq, second.previous, second.details) == (2, a, {"decision": "x"})
    current = reg.alias(CHAMPION)
    assert current is not None and second.generation == current.generation > first.generation
    reg.set_alias("challenger", b)
    assert {k: p.version for k, p in reg.aliases().items()} == {"champion": b, "challenger": b}
    assert [(h.seq, h.version, h.action) for h in reg.alias_history(CHAMPION)] == [(1, a, "promote"), (2, b, "promote")]
    # The pointer object is what the Airflow Asset names.
    assert reg.alias_uri("challenger") == registry_settings.assets.challenger.replace("/registry/", f"/{reg.prefix}/")
    with pytest.raises(ValueError, match="alias name"):
        reg.set_alias("Champion!", a)


def test_a_retried_move_that_already_landed_is_a_no_op_not_a_conflict(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage
) -> None:
    """A mover whose first request landed but whose reply was lost retries with the same ``expected``: the alias
    already points where it asked, which is the idempotent no-op, not a lost compare-and-swap."""
    reg = ModelRegistry(registry_settings)
    a = reg.register(make_model_dir(12), lineage, metrics=METRICS).version
    b = reg.register(make_model_dir(13), lineage, metrics=METRICS).version
    first = reg.promote(a, expected=None)
    assert reg.promote(a, expected=None) == first  # the first set, retried
    moved = reg.promote(b, expected=a)
    again = reg.promote(b, expected=a)  # the same request again
    assert (again.seq, again.version, again.generation) == (moved.seq, b, moved.generation)
    assert [h.version for h in reg.alias_history(CHAMPION)] == [a, b]
    with pytest.raises(AliasConflict, match=f"not {a} as expected"):
        reg.set_alias(CHAMPION, a, expected=a)  # a move based on a stale read is still refused


def _read_in_lockstep(monkeypatch: pytest.MonkeyPatch, contenders: int) -> None:
    """Each of ``contenders`` threads, after its first read of an alias pointer, waits until all have read theirs."""
    barrier = threading.Barrier(contenders, timeout=30)
    real_read = ModelRegistry._read_pointer
    read_once: set[int] = set()

    def read_then_wait(self: ModelRegistry, alias: str):  # type: ignore[no-untyped-def]
        pointer = real_read(self, alias)
        if threading.get_ident() not in read_once:
            read_once.add(threading.get_ident())
            barrier.wait()
        return pointer

    monkeypatch.setattr(ModelRegistry, "_read_pointer", read_then_wait)


@pytest.mark.parametrize("lockstep", [True, False], ids=["all-read-then-all-write", "free-running"])
def test_concurrent_promote_race_has_exactly_one_winner(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, monkeypatch: pytest.MonkeyPatch,
    lockstep: bool,
) -> None:
    contenders = 8
    setup = ModelRegistry(registry_settings)
    base = setup.register(make_model_dir(20), lineage, metrics=METRICS).version
    setup.promote(base, expected=None)
    versions = [setup.register(make_model_dir(21 + i), lineage, metrics=METRICS).version for i in range(contenders)]

    # Every contender reads the same pointer generation before any of them writes: the worst case,
    # where only the store's generation precondition can tell the winner from the losers.
    if lockstep:
        _read_in_lockstep(monkeypatch, contenders)
    start = threading.Barrier(contenders, timeout=30)
    results: dict[str, str] = {}

    def contend(version: str) -> None:
        reg = ModelRegistry(registry_settings)  # each contender has its own client and connection pool
        start.wait()
        try:
            reg.promote(version, expected=base)
            results[version] = "won"
        except AliasConflict as exc:
            results[version] = f"lost: {exc}"

    threads = [threading.Thread(target=contend, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    monkeypatch.undo()
    winners = [v for v, r in results.items() if r == "won"]
    assert len(results) == contenders
    assert len(winners) == 1, results
    losers = [r for v, r in results.items() if v != winners[0]]
    if lockstep:  # all read the same generation: only the store's precondition can refuse them
        assert all("lost the race" in r for r in losers), losers
    else:  # a late reader sees the winner's pointer and is refused before writing
        assert all("lost the race" in r or "as expected" in r for r in losers), losers
    assert setup.resolve(CHAMPION) == winners[0]
    history = setup.alias_history(CHAMPION)
    assert [(h.seq, h.version) for h in history] == [(1, base), (2, winners[0])]


def test_movers_racing_to_the_same_version_all_get_the_no_op_and_it_is_recorded_once(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rollout's conclude and a manual `models promote` of the same version (or a zombie try of the conclude) read
    the same champion and both moved it there: the loser's write was refused, it re-read, found the version it asked
    for and raised "lost the race to move champion to V: it moved to V", so the rollout recorded a refused promotion
    and never rolled the stable pool. Setting an alias to the version it holds is the no-op, however it got there."""
    contenders = 6
    setup = ModelRegistry(registry_settings)
    base = setup.register(make_model_dir(30), lineage, metrics=METRICS).version
    target = setup.register(make_model_dir(31), lineage, metrics=METRICS).version
    setup.promote(base, expected=None)

    # Every mover reads the pointer at base before any writes: all but one are refused by the store's precondition.
    _read_in_lockstep(monkeypatch, contenders)
    start = threading.Barrier(contenders, timeout=30)
    results: dict[int, object] = {}

    def contend(n: int) -> None:
        reg = ModelRegistry(registry_settings)
        start.wait()
        try:
            results[n] = reg.promote(target, expected=base, reason=f"mover {n}")
        except Exception as exc:  # any error is the failure this test reports
            results[n] = exc

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    monkeypatch.undo()
    assert len(results) == contenders
    errors = {n: r for n, r in results.items() if isinstance(r, Exception)}
    assert errors == {}, errors
    now = setup.alias(CHAMPION)
    assert now is not None and now.version == target
    # Every mover is answered with the one move that landed: the winner's pointer, at its generation.
    assert {(r.seq, r.nonce, r.generation) for r in results.values()} == {(2, now.nonce, now.generation)}  # type: ignore[attr-defined]
    history = setup.alias_history(CHAMPION)
    assert [(h.seq, h.version, h.previous) for h in history] == [(1, base, None), (2, target, base)]
    entries = list(setup.client.list_blobs(setup.bucket_name, prefix=setup._name("alias-history", CHAMPION) + "/"))
    assert len(entries) == 2
    recorded = json.loads(setup.bucket.blob(setup._history_name(CHAMPION, 2)).download_as_bytes())
    assert (recorded["nonce"], recorded["reason"]) == (now.nonce, now.reason)  # the winner's entry, not a loser's


def test_unconditional_concurrent_moves_lose_no_update(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage
) -> None:
    setup = ModelRegistry(registry_settings)
    versions = [setup.register(make_model_dir(40 + i), lineage, metrics=METRICS).version for i in range(4)]
    errors: list[BaseException] = []

    def move(version: str) -> None:
        try:
            ModelRegistry(registry_settings, cas_retries=20).set_alias("challenger", version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    history = setup.alias_history("challenger")
    # Each move is recorded once, in a gap-free sequence, and each links to the one before it.
    assert sorted(h.version for h in history) == sorted(versions)
    assert [h.seq for h in history] == [1, 2, 3, 4]
    assert [h.previous for h in history] == [None, *[h.version for h in history[:-1]]]
    assert setup.resolve("challenger") == history[-1].version


def test_rollback_walks_back_through_history(registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage) -> None:
    reg = ModelRegistry(registry_settings)
    a, b, c = (reg.register(make_model_dir(60 + i), lineage, metrics=METRICS).version for i in range(3))
    with pytest.raises(RegistryError, match="never set"):
        reg.rollback(CHAMPION)
    reg.promote(a)
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback(CHAMPION)
    reg.promote(b)
    reg.promote(c)
    assert reg.rollback(CHAMPION, reason="bad canary").version == b
    assert reg.rollback(CHAMPION).version == a
    with pytest.raises(RegistryError, match="was never champion"):
        reg.rollback(CHAMPION, to="e" * 20)
    assert reg.rollback(CHAMPION, to=c).version == c
    actions = [(h.version, h.action) for h in reg.alias_history(CHAMPION)]
    assert actions == [(a, "promote"), (b, "promote"), (c, "promote"), (b, "rollback"), (a, "rollback"), (c, "rollback")]


def test_a_rollback_after_one_that_jumped_over_a_version_does_not_bring_it_back(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage
) -> None:
    """A, B, C, then `rollback --to A`, skipping B on purpose: the next plain rollback moved the champion to B, the
    version deliberately skipped (only the one left, C, counted as rolled away from)."""
    reg = ModelRegistry(registry_settings)
    a, b, c = (reg.register(make_model_dir(80 + i), lineage, metrics=METRICS).version for i in range(3))
    for v in (a, b, c):
        reg.promote(v)
    assert reg.rollback(CHAMPION, to=a).version == a
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback(CHAMPION)
    assert reg.resolve(CHAMPION) == a
    reg.promote(b, reason="fixed, re-validated")  # promoted again: a candidate again
    assert reg.rollback(CHAMPION).version == a


def test_a_rollback_skips_a_version_it_may_not_go_back_to_and_says_why(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage
) -> None:
    reg = ModelRegistry(registry_settings)
    a, b, c = (reg.register(make_model_dir(90 + i), lineage, metrics=METRICS).version for i in range(3))
    for v in (a, b, c):
        reg.promote(v)
    refused = {b: "of other features"}
    with pytest.raises(RegistryError, match=f"cannot go back to {b}: of other features"):
        reg.rollback(CHAMPION, to=b, unusable=refused.get)
    assert reg.rollback(CHAMPION, unusable=refused.get).version == a  # b skipped, not chosen
    refused[a] = "another workload"
    reg.promote(c)  # b, jumped over by the rollback to a, is no candidate; a is, and is refused
    with pytest.raises(RegistryError, match=f"no earlier version .*skipped {a}: another workload$"):
        reg.rollback(CHAMPION, unusable=refused.get)
    assert reg.resolve(CHAMPION) == c


def test_rollback_after_a_version_is_promoted_again_goes_back_to_it(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage
) -> None:
    """A version rolled back from once and promoted again later is the champion before the next one, not skipped."""
    reg = ModelRegistry(registry_settings)
    v1, v2, v3 = (reg.register(make_model_dir(70 + i), lineage, metrics=METRICS).version for i in range(3))
    reg.promote(v1)
    reg.promote(v2)
    assert reg.rollback(CHAMPION).version == v1  # v2 had an incident
    reg.promote(v2, reason="fixed, re-validated")
    reg.promote(v3)
    assert reg.rollback(CHAMPION, reason="v3 is bad").version == v2
    assert reg.rollback(CHAMPION).version == v1  # and v2 is skipped again once rolled back from again


def test_download_is_verified_and_a_tampered_object_is_detected(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, tmp_path: Path
) -> None:
    reg = ModelRegistry(registry_settings)
    src = make_model_dir(70)
    mv = reg.register(src, lineage, metrics=METRICS)
    out = reg.download(mv.version, tmp_path / "copy")
    for name in ("weights.pt", "meta.json", "preprocessing.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    assert json.loads((out / "metrics.json").read_text()) == METRICS
    assert reg.download(mv.version, tmp_path / "copy") == out  # a verified copy is reused

    # Tamper with the stored weights behind the registry's back (a plain overwrite, no precondition).
    blob = reg.bucket.blob(reg._name("versions", mv.version, "files", "weights.pt"))
    blob.upload_from_string(b"tampered weights")
    with pytest.raises(IntegrityError, match=r"weights\.pt") as refused:
        reg.download(mv.version, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()  # nothing half-written
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fresh")] == []
    # Its advice works: "register the model again" alone found the version committed and changed nothing (stored
    # files are create-only), so the next download failed the same way; deleting the named file first repairs it.
    files = f"gs://{reg.bucket_name}/{reg._name('versions', mv.version, 'files')}/"
    assert f"delete that file under {files}, then register the model again" in str(refused.value)
    reg.register(src, lineage, metrics=METRICS)
    with pytest.raises(IntegrityError, match=r"weights\.pt"):
        reg.download(mv.version, tmp_path / "fresh")
    blob.delete()
    assert reg.register(src, lineage, metrics=METRICS).version == mv.version
    assert (reg.download(mv.version, tmp_path / "fresh") / "weights.pt").read_bytes() == (src / "weights.pt").read_bytes()
    blob.upload_from_string(b"tampered weights")

    # Tampering with the commit marker itself (rewriting a recorded hash) is detected too.
    marker = reg.bucket.blob(reg._name("versions", mv.version, "VERSION.json"))
    body = json.loads(marker.download_as_bytes())
    body["files"][0]["sha256"] = "0" * 64
    marker.upload_from_string(json.dumps(body))
    with pytest.raises(IntegrityError, match="tampered"):
        reg.get(mv.version)


def test_two_downloads_of_one_version_to_one_folder_take_turns(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both found the folder absent and assembled a copy; the second rename met the first's folder (ENOTEMPTY), a
    raw OSError (the drift monitor's DAG task and its CLI share the folder). A rename is held until the other download
    reaches its own (where the race was) or asks for the lock."""
    import fcntl

    reg = ModelRegistry(registry_settings)
    mv = reg.register(make_model_dir(71), lineage, metrics=METRICS)
    # A finished copy goes into place only once the other download is at its own rename too (the race) or has asked
    # for the lock (it waits its turn): whichever comes, however slow the machine.
    seen, where = threading.Condition(), {"renaming": 0, "locking": 0}
    real_rename, real_flock = Path.rename, fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_EX:
            with seen:
                where["locking"] += 1
                seen.notify_all()
        real_flock(fd, operation)

    def rename(self: Path, target: Path) -> Path:
        if ".partial-" in self.name:
            with seen:
                where["renaming"] += 1
                seen.notify_all()
                assert seen.wait_for(lambda: where["renaming"] >= 2 or where["locking"] >= 2, timeout=60)
        return real_rename(self, target)

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(Path, "rename", rename)
    results: list[object] = []

    def download() -> None:
        try:
            results.append(reg.download(mv.version, tmp_path / "copy"))
        except Exception as exc:  # what the other thread met is the point
            results.append(exc)

    threads = [threading.Thread(target=download) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [tmp_path / "copy"] * 2, results
    assert reg.download(mv.version, tmp_path / "copy") == tmp_path / "copy"


def test_a_download_over_a_damaged_marker_or_beside_abandoned_ones_fetches_a_clean_copy(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, tmp_path: Path
) -> None:
    """A local copy's marker holding JSON that is not an object ('null') ended download in AttributeError, which
    serving took for a store outage and retried for ever; the temporary folders of killed downloads were never
    removed (a model's size each)."""
    import os
    import time

    reg = ModelRegistry(registry_settings)
    mv = reg.register(make_model_dir(71), lineage, metrics=METRICS)
    out = reg.download(mv.version, tmp_path / "copy")
    (out / "VERSION.json").write_text("null")
    abandoned, running = tmp_path / ".copy.partial-dead0001", tmp_path / ".copy.partial-live0002"
    for folder in (abandoned, running):
        folder.mkdir()
        (folder / "weights.pt").write_bytes(b"half a model")
    hours_ago = time.time() - 2 * 3600
    os.utime(abandoned, (hours_ago, hours_ago))
    assert reg.download(mv.version, tmp_path / "copy") == out
    assert json.loads((out / "VERSION.json").read_text())["digest"] == mv.digest  # fetched again, verified
    assert not abandoned.exists() and running.exists()  # a younger one may be another download's, still running


def test_a_missing_object_or_an_unreadable_lineage_is_an_integrity_error(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, tmp_path: Path
) -> None:
    """Both are permanent damage to a committed version: a RegistryError naming the file (which callers treat as a
    verdict), never the store's NotFound or a JSON parse error (which callers would retry or crash on)."""
    reg = ModelRegistry(registry_settings)
    mv = reg.register(make_model_dir(75), lineage, metrics=METRICS)
    reg.bucket.blob(reg._name("versions", mv.version, "files", "preprocessing.json")).delete()
    with pytest.raises(IntegrityError, match=rf"file preprocessing\.json of committed version {mv.version} is missing"):
        reg.download(mv.version, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    lineage_blob = reg.bucket.blob(reg._name("versions", mv.version, "lineage.json"))
    for garbage in (b"{ truncated", b"{}", b"[]"):
        lineage_blob.upload_from_string(garbage)
        with pytest.raises(IntegrityError, match=r"lineage\.json is unreadable"):
            reg.get(mv.version)
    assert reg.get(mv.version, with_lineage=False).version == mv.version  # what serving reads is not affected


def test_a_marker_with_a_file_record_of_the_wrong_type_is_left_out_of_the_list(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage
) -> None:
    """A VERSION.json whose file path was a number ended `list_versions` (and `tenfold models list`) in an
    AttributeError: one damaged version hid every other one."""
    reg = ModelRegistry(registry_settings)
    good = reg.register(make_model_dir(77), lineage, metrics=METRICS)
    bad = reg.register(make_model_dir(78), lineage, metrics=METRICS)
    marker = reg.bucket.blob(reg._name("versions", bad.version, "VERSION.json"))
    body = json.loads(marker.download_as_bytes())
    body["files"][0]["path"] = 5
    marker.upload_from_string(json.dumps(body))
    assert [v.version for v in reg.list_versions()] == [good.version]
    with pytest.raises(IntegrityError, match=r"VERSION\.json is unreadable .*not text"):
        reg.get(bad.version)


def test_a_replica_does_not_retry_a_version_whose_object_is_missing(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage
) -> None:
    """Serving classes a store error as transient (retried with back-off) and a RegistryError as permanent: a missing
    object of a committed version is the latter, or replicas would retry a version that can never load."""
    from tenfold.serving.loading import ServingLoadError, resolve_and_download

    reg = ModelRegistry(registry_settings)
    mv = reg.register(make_model_dir(76), lineage, metrics=METRICS)
    reg.bucket.blob(reg._name("versions", mv.version, "files", "meta.json")).delete()
    with pytest.raises(ServingLoadError, match=r"meta\.json of committed version .* is missing") as caught:
        resolve_and_download(registry_settings, mv.version, registry=reg)
    assert caught.value.transient is False


def test_metrics_in_the_commit_marker_are_verified(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage
) -> None:
    """VERSION.json's metrics (what the gate compares and `tenfold models` shows) must be the version's metrics.json,
    which the digest covers: a raised AUC in VERSION.json alone is tampering, not a better model."""
    reg = ModelRegistry(registry_settings)
    given = reg.register(make_model_dir(90), lineage, metrics=METRICS)
    folder = make_model_dir(91)
    (folder / "metrics.json").write_text(json.dumps(METRICS))  # as the folder wrote it (not the registry's form)
    own = reg.register(folder, lineage)
    assert (reg.get(given.version).metrics, reg.get(own.version).metrics) == (METRICS, METRICS)
    for mv in (given, own):
        marker = reg.bucket.blob(reg._name("versions", mv.version, "VERSION.json"))
        body = json.loads(marker.download_as_bytes())
        body["metrics"]["auc"] = 0.99
        marker.upload_from_string(json.dumps(body))
        with pytest.raises(IntegrityError, match=r"metrics that do not match the version's metrics\.json"):
            reg.get(mv.version)


@pytest.mark.parametrize("written", ["5", '"x"', "{bad", "[]"])
def test_a_folder_metrics_json_that_is_not_an_object_is_refused_naming_it(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, written: str
) -> None:
    """Registered without metrics=, the folder's metrics.json is the version's: "{bad" raised a JSONDecodeError naming
    no file, and "5" was committed, after which `tenfold models list` and `show` died of a TypeError for every version."""
    reg = ModelRegistry(registry_settings)
    d = make_model_dir(92)
    (d / "metrics.json").write_text(written)
    with pytest.raises(InvalidModelDir, match=rf"{re.escape(str(d))}/metrics\.json (is not JSON|holds a JSON \w+, not an object).*"
                                              r"pass metrics="):
        reg.register(d, lineage)
    assert not [b.name for b in reg.client.list_blobs(reg.bucket_name, prefix=reg._name("versions") + "/")]


def test_a_commit_marker_whose_metrics_are_not_an_object_is_left_out_of_the_list(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage
) -> None:
    """What an older register committed from a metrics.json holding "5": `tenfold models list` died of it (TypeError)."""
    reg = ModelRegistry(registry_settings)
    good = reg.register(make_model_dir(93), lineage, metrics=METRICS)
    bad = reg.register(make_model_dir(94), lineage, metrics=METRICS)
    marker = reg.bucket.blob(reg._name("versions", bad.version, "VERSION.json"))
    marker.upload_from_string(json.dumps({**json.loads(marker.download_as_bytes()), "metrics": 5}))
    assert [v.version for v in reg.list_versions()] == [good.version]
    with pytest.raises(IntegrityError, match=r"VERSION\.json is unreadable \(its metrics are a JSON int, not an object\)"):
        reg.get(bad.version)


def test_registering_again_restores_a_missing_metrics_json_taken_from_the_folder(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage
) -> None:
    """A folder's own metrics.json is kept as written, so reads check VERSION.json's metrics against the stored copy:
    with that object gone every read said "tampered with", and registering the folder again could not repair it
    (the module's promise: a stored file found missing is created again from the folder)."""
    reg = ModelRegistry(registry_settings)
    d = make_model_dir(96, metrics=METRICS)  # json.dumps without indent: not the registry's canonical form
    mv = reg.register(d, lineage)
    stored = reg.bucket.blob(reg._name("versions", mv.version, "files", "metrics.json"))
    stored.delete()
    with pytest.raises(IntegrityError, match=r"metrics\.json of committed version .* is missing.*register the model "
                                             r"again") as caught:
        reg.get(mv.version)
    assert "tampered" not in str(caught.value)
    assert reg.register(d, lineage) == mv
    assert stored.exists() and stored.download_as_bytes() == (d / "metrics.json").read_bytes()
    assert reg.get(mv.version).metrics == METRICS


def test_a_version_written_by_a_newer_tenfold_says_so_not_tampered_with(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, caplog: pytest.LogCaptureFixture
) -> None:
    """VERSION.json records its format, which no reader checked: a newer writer's version read as "tampered with" (an
    operator may delete a valid version) or, where it happened to parse, was taken as this format."""
    reg = ModelRegistry(registry_settings)
    good = reg.register(make_model_dir(97), lineage, metrics=METRICS)
    mv = reg.register(make_model_dir(98), lineage, metrics=METRICS)
    marker = reg.bucket.blob(reg._name("versions", mv.version, "VERSION.json"))
    newer = {**json.loads(marker.download_as_bytes()), "format": 2}
    for body in (newer, {**newer, "digest": "0" * 64}):  # otherwise valid; and one a newer writer hashes otherwise
        marker.upload_from_string(json.dumps(body))
        with pytest.raises(IntegrityError, match=rf"version {mv.version} was written by a newer Tenfold \(format 2, "
                                                 r"this one reads 1\): upgrade tenfold"):
            reg.get(mv.version)
    with caplog.at_level("WARNING", logger=registry_module.__name__):
        assert [v.version for v in reg.list_versions()] == [good.version]
    assert any("newer Tenfold" in r.getMessage() for r in caplog.records)


def test_one_corrupt_version_does_not_hide_the_others(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, caplog: pytest.LogCaptureFixture
) -> None:
    reg = ModelRegistry(registry_settings)
    good, bad = (reg.register(make_model_dir(95 + i), lineage, metrics=METRICS).version for i in range(2))
    reg.bucket.blob(reg._name("versions", bad, "VERSION.json")).upload_from_string(b"\x00garbage")
    with caplog.at_level("WARNING", logger=registry_module.__name__):
        assert [v.version for v in reg.list_versions()] == [good]
    assert any(bad in r.getMessage() and "VERSION.json is unreadable" in r.getMessage() for r in caplog.records)
    with pytest.raises(IntegrityError, match="unreadable"):
        reg.get(bad)  # still named as damaged where it is asked for


def test_a_rollout_event_still_being_written_is_skipped_not_an_error(registry_settings: Settings,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A local store can list an event object before its bytes are whole: a watcher (the demo, `tenfold rollout
    status`) reading the record meanwhile gets the other events and sees that one on its next read."""
    registry = ModelRegistry(registry_settings)
    version, rollout_id = "0123456789abcdef0123", "r1"
    assert registry.record_rollout_event(version, rollout_id, "start", {"at": "1"})
    partial = registry.bucket.blob(registry._name("rollouts", version, rollout_id, "s01-set.json"))
    partial.upload_from_string(b'{"step": 1, "perc')  # what a reader can meet mid-write
    with caplog.at_level("WARNING"):
        assert list(registry.rollout_events(version, rollout_id)) == ["start"]
    assert "s01-set.json is not readable yet" in caplog.text
    partial.upload_from_string(json.dumps({"step": 1, "percent": 5}))
    assert registry.rollout_events(version, rollout_id)["s01-set"] == {"step": 1, "percent": 5}


@pytest.mark.parametrize("body", [b"null", b"5", b"[]", b'"start"'])
def test_a_rollout_event_that_is_not_an_object_is_refused_naming_it(registry_settings: Settings, body: bytes) -> None:
    """``dict(json.loads(...))`` of a damaged event raised TypeError out of every reader of the rollout (null, 5), or
    read '[]' as an event that recorded nothing; a decision damaged so is an IntegrityError naming it."""
    registry = ModelRegistry(registry_settings)
    version, rollout_id = "0123456789abcdef0123", "r1"
    assert registry.record_rollout_event(version, rollout_id, "start", {"at": "1"})
    name = registry._name("rollouts", version, rollout_id, "s01-set.json")
    registry.bucket.blob(name).upload_from_string(body)
    with pytest.raises(IntegrityError, match=rf"rollout event gs://{registry.bucket_name}/{name} is unreadable \(a JSON "
                                             r"\w+, not an object\): restore it from a backup"):
        registry.rollout_events(version, rollout_id)


def test_a_decision_keyed_by_a_long_run_id_is_kept_once_and_a_path_is_refused(
        registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage) -> None:
    reg = ModelRegistry(registry_settings)
    version = reg.register(make_model_dir(70), lineage, metrics=METRICS).version
    # What rollout_model records when it rolls back an asset-triggered run (longer than any alias may be).
    key = "rollout-r-asset_triggered__2026-12-02t11-41-56.622020-00-00-d1118c6a"
    assert reg.record_decision(version, key, {"rejected": True, "summary": "REJECTED"}) is True
    assert reg.record_decision(version, key, {"rejected": False}) is False  # create-only
    assert reg.decisions(version)[key]["rejected"] is True
    for bad in ("../champion", "Rollout-1", "", "a/b"):
        with pytest.raises(ValueError, match="a decision key is"):
            reg.record_decision(version, bad, {})


def test_an_alias_a_version_id_or_a_decision_key_ending_in_a_newline_is_refused(
        registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage) -> None:
    """re's "$" matches before a final newline: "champion\\n" passed as an alias name, and a version id with a newline
    after it as a version id (a decision was written under a version folder that does not exist)."""
    reg = ModelRegistry(registry_settings)
    version = reg.register(make_model_dir(71), lineage, metrics=METRICS).version
    with pytest.raises(ValueError, match="is not an alias name"):
        registry_module.check_alias("champion\n")
    with pytest.raises(ValueError, match="is not an alias name"):
        reg.set_alias("champion\n", version)
    assert not registry_module.is_alias_name("champion\n") and registry_module.is_alias_name("champion")
    assert not registry_module.is_version_id(version + "\n") and registry_module.is_version_id(version)
    with pytest.raises(UnknownVersion, match="is not a version id"):
        registry_module.check_version_id(version + "\n")
    with pytest.raises(UnknownVersion, match="is not a version id"):
        reg.record_decision(version + "\n", "gate-1", {"rejected": True})
    with pytest.raises(ValueError, match="a decision key is"):
        reg.record_decision(version, "gate-1\n", {"rejected": True})
    with pytest.raises(ValueError, match="a rollout id is"):
        reg.record_rollout_event(version, "rollout-1\n", "step-1", {})
    assert not reg.exists(version + "\n")
    assert reg.decisions(version) == {}


@pytest.mark.parametrize("escape", ["../../escaped.txt", "/ABS/escaped.txt"])
def test_a_version_file_path_leading_outside_its_folder_is_refused_not_written_there(
        registry_settings: Settings, tmp_path: Path, escape: str) -> None:
    """VERSION.json's file paths were joined to the download folder as given: a tampered version whose digest was
    computed over "../../x" (or an absolute path) wrote that file outside the folder on every replica."""
    import hashlib

    from tenfold.registry.registry import VERSION_ID_LEN, FileRecord, content_digest

    reg = ModelRegistry(registry_settings)
    outside = tmp_path / "escaped.txt"
    path = escape.replace("/ABS", str(tmp_path))
    evil = b"not part of any model\n"
    files = [FileRecord("meta.json", hashlib.sha256(b"{}").hexdigest(), 2),
             FileRecord(path, hashlib.sha256(evil).hexdigest(), len(evil))]
    digest = content_digest(files)
    version = digest[:VERSION_ID_LEN]
    reg.bucket.blob(reg._name("versions", version, "files", "meta.json")).upload_from_string(b"{}")
    reg.bucket.blob(reg._name("versions", version, "files", path)).upload_from_string(evil)
    reg.bucket.blob(reg._name("versions", version, "VERSION.json")).upload_from_string(json.dumps(
        {"format": 1, "version": version, "digest": digest, "created_at": "2026-01-01T00:00:00Z", "metrics": {},
         "files": [f.__dict__ for f in files]}))
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(IntegrityError, match=rf"{version}.*names a file '{path}' outside"):
        reg.download(version, tmp_path / "a" / "b" / "copy")
    assert not outside.exists()
    assert not (tmp_path / "a" / "b" / "copy").exists()
    assert [v.version for v in reg.list_versions()] == []  # left out of the list, with a warning


def test_a_damaged_pointer_is_repaired_as_its_message_says_and_the_history_goes_on_after_it(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage
) -> None:
    """The message said "set the alias again with promote", which read the damaged pointer first and failed the
    same way. Deleting it (what the message now says) let promote set it, but at seq 1 again: the history already
    held that seq, so the move was never recorded, nor any after it, and a rollback walked a history of the past."""
    reg = ModelRegistry(registry_settings)
    a, b, c = (reg.register(make_model_dir(90 + i), lineage, metrics=METRICS).version for i in range(3))
    reg.promote(a)
    reg.promote(b)
    pointer = reg.bucket.blob(reg._name("aliases", "champion"))
    pointer.upload_from_string(b"[]")
    with pytest.raises(RegistryError, match=r"unreadable .*delete that object \(in the cloud: `gcloud storage rm "
                                            r"gs://.*/aliases/champion`.*champion: `tenfold models promote <version>`; "
                                            r"challenger: the next train_model run sets it"):
        reg.promote(c)
    pointer.delete()
    assert reg.promote(c).seq == 3
    assert [(h.seq, h.version) for h in reg.alias_history("champion")] == [(1, a), (2, b), (3, c)]
    assert reg.rollback().version == b

    # A damaged history entry is left out (with a warning), not an error for every reader of the history; a rollback
    # without --to refuses (a rollback left out could rule a candidate out), and one with --to goes ahead.
    reg.bucket.blob(reg._history_name("champion", 1)).upload_from_string(b"not json")
    assert [h.version for h in reg.alias_history("champion")] == [b, c, b]
    with pytest.raises(RegistryError, match=r"history cannot be read whole \(alias history entry .* is unreadable .*"
                                            r"restore it from a backup.*name it \(`tenfold models rollback champion --to"):
        reg.rollback()
    assert reg.rollback(to=c).version == c
    # the re-run the CLI prints after an error (--from, no --to) finds its rollback landed, whatever the history holds
    assert reg.rollback(from_version=b).version == c
    # The version only the damaged entry recorded (a, seq 1) is still a target: its successor's entry names it as the
    # version it moved from. It was refused as "never champion", so the refusal's own advice (--to) could not reach it.
    assert reg.rollback(to=a).version == a


def test_a_rollback_of_a_deleted_pointer_names_the_version_its_history_shows_and_to_sets_it_again(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage
) -> None:
    """Between deleting a damaged pointer (what its refusal says to do) and setting it again, a rollback answered
    "champion was never set: there is nothing to roll back", although the alias history held every move."""
    reg = ModelRegistry(registry_settings)
    a, b, c = (reg.register(make_model_dir(95 + i), lineage, metrics=METRICS).version for i in range(3))
    reg.promote(a)
    reg.promote(b)
    reg.bucket.blob(reg._name("aliases", CHAMPION)).delete()
    assert reg.resolve(CHAMPION) is None and reg.alias_had_history(CHAMPION)
    missing = (rf"champion's pointer \(gs://.*/aliases/champion\) is missing, but the alias was set before: the last "
               rf"version its history shows it pointed to is {b}\. Nothing was moved")
    with pytest.raises(RegistryError, match=missing + rf"; set it with `tenfold models rollback champion --to "
                                            rf"<version>` \(a version it held, e\.g\. --to {b}\) or `tenfold models "
                                            r"promote <version>`"):
        reg.rollback()
    with pytest.raises(RegistryError, match=missing + rf" \(it does not point to {b}\)"):
        reg.rollback(from_version=b)  # the CLI's --from: it names a pointer that is not there
    assert reg.resolve(CHAMPION) is None
    with pytest.raises(RegistryError, match=f"{c} was never champion"):
        reg.rollback(to=c)
    assert reg.resolve(CHAMPION) is None
    # --to sets it again, after its history (seq 3, not 1 again: every move stays recorded).
    pointer = reg.rollback(to=a, reason="pointer repaired")
    assert (pointer.version, pointer.seq, pointer.action, pointer.previous) == (a, 3, "rollback", None)
    assert [(h.seq, h.version) for h in reg.alias_history(CHAMPION)] == [(1, a), (2, b), (3, a)]
    assert reg.resolve(CHAMPION) == a
    # An alias never set is still just that.
    assert not reg.alias_had_history("challenger")
    with pytest.raises(RegistryError, match="challenger was never set: there is nothing to roll back"):
        reg.rollback("challenger", to=a)


@pytest.mark.parametrize("field", ["version", "previous"])
def test_an_alias_pointing_at_a_path_is_unreadable_not_followed(
    registry_settings: Settings, make_model_dir: ModelDirFactory, lineage: Lineage, field: str
) -> None:
    """The pointer's version went unchecked to its readers: serving made a lock file of it
    (``<cache>/.{version}.lock``) before any download checked it, so "../../x" created files outside the cache."""
    reg = ModelRegistry(registry_settings)
    a = reg.register(make_model_dir(90), lineage, metrics=METRICS).version
    reg.promote(a, expected=None)
    blob = reg.bucket.blob(reg._name("aliases", CHAMPION))
    body = json.loads(blob.download_as_bytes())
    body[field] = "/../../../tmp/x"
    blob.upload_from_string(json.dumps(body))
    with pytest.raises(RegistryError, match=rf"alias pointer .* is unreadable \(its {field} '/\.\./\.\./\.\./tmp/x' "
                                            r"is not a version id\)"):
        reg.find(CHAMPION)
