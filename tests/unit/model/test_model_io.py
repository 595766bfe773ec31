"""Model folder format: round trip, and refusal of weights or preprocessing that do not match meta.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from tenfold.data.lake import Partition
from tenfold.model import ModelLoadError, Preprocessor, load_model, save_model
from tenfold.model.preprocessing import PreprocessingError
from tenfold.workloads.flights import WORKLOAD
from tenfold.workloads.flights.contract import CONTRACT
from tenfold.workloads.flights.model import FlightDelayModel, ModelConfig
from tenfold.workloads.flights.synthetic import synthetic_features


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return synthetic_features(Partition(2013, 1), 300, seed=1)


@pytest.fixture(scope="module")
def pre(table: pa.Table) -> Preprocessor:
    return Preprocessor.fit(table, CONTRACT)


def _model(pre: Preprocessor, config: ModelConfig, seed: int = 0) -> FlightDelayModel:
    torch.manual_seed(seed)
    return FlightDelayModel(config, list(pre.vocab_sizes.values()), pre.num_inputs)


def test_round_trip_rebuilds_the_same_predictions(tmp_path: Path, table: pa.Table, pre: Preprocessor) -> None:
    config = ModelConfig(embedding_dim=4, hidden=(8,), dropout=0.3)
    model = _model(pre, config)
    meta = save_model(tmp_path, model, config, pre, workload=WORKLOAD.name, extra={"run": "x"})
    loaded = load_model(tmp_path)
    assert loaded.config == config and loaded.meta["extra"] == {"run": "x"}
    assert meta["torch_version"] == torch.__version__ and meta["vocab_sizes"] == pre.vocab_sizes
    cat, num = pre.transform(table)
    expected = model.predict_proba(torch.from_numpy(cat), torch.from_numpy(num)).double().numpy()
    np.testing.assert_array_equal(loaded.predict_proba(table), expected)
    assert ((expected > 0) & (expected < 1)).all()


def test_a_model_of_another_feature_definition_version_is_refused(tmp_path: Path, pre: Preprocessor,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A champion trained before the feature definitions changed (FEATURES_VERSION 2 -> 3 changed what
    sched_block_minutes means) loaded and predicted on the new features, through its old scaling, with no error:
    served skewed, and scored so by the gate against its challenger."""
    import dataclasses

    from tenfold import workloads

    config = ModelConfig(embedding_dim=4, hidden=(8,))
    meta = save_model(tmp_path, _model(pre, config), config, pre, workload=WORKLOAD.name)
    assert meta["features_version"] == CONTRACT.version
    load_model(tmp_path)  # the version it was trained on
    upgraded = dataclasses.replace(WORKLOAD, contract=dataclasses.replace(CONTRACT, version=CONTRACT.version + 1))
    monkeypatch.setitem(workloads._LOADED, WORKLOAD.name, upgraded)  # the code now builds the next version
    with pytest.raises(ModelLoadError, match=f"it learnt from version {CONTRACT.version} of the feature definitions, "
                                             f"and this code builds version {CONTRACT.version + 1}.*train_model"):
        load_model(tmp_path)


def test_a_model_taking_a_column_the_contract_no_longer_holds_is_refused_on_load(
        tmp_path: Path, pre: Preprocessor, monkeypatch: pytest.MonkeyPatch) -> None:
    """A feature renamed with no version bump (the schema check of the features catches that, the version does not):
    the model loaded, the replica went ready, and every prediction failed "input lacks feature columns" (a 503
    model_error each, until the whole fleet left the rotation)."""
    import dataclasses

    from tenfold import workloads

    config = ModelConfig(embedding_dim=4, hidden=(8,))
    save_model(tmp_path, _model(pre, config), config, pre, workload=WORKLOAD.name)
    numeric = CONTRACT.model_numeric_columns[0]
    def rename(c: str) -> str:
        return f"{c}_v2" if c == numeric else c

    renamed = dataclasses.replace(CONTRACT, numeric_columns=tuple(map(rename, CONTRACT.numeric_columns)),
                                  non_null_columns=tuple(map(rename, CONTRACT.non_null_columns)),
                                  required_in_file=tuple(map(rename, CONTRACT.required_in_file)),
                                  column_types={rename(c): t for c, t in CONTRACT.column_types.items()})
    monkeypatch.setitem(workloads._LOADED, WORKLOAD.name, dataclasses.replace(WORKLOAD, contract=renamed))
    with pytest.raises(ModelLoadError, match=rf"it takes the column\(s\) {numeric} \(numeric\), which version "
                                             rf"{CONTRACT.version} of the feature definitions does not hold as such"):
        load_model(tmp_path)
    from tenfold.workloads import lost_columns

    meta = json.loads((tmp_path / "meta.json").read_text())
    assert lost_columns(meta, CONTRACT) is None


def test_weights_of_another_model_are_refused(tmp_path: Path, pre: Preprocessor) -> None:
    config = ModelConfig(embedding_dim=4, hidden=(8,))
    save_model(tmp_path / "a", _model(pre, config, 0), config, pre, workload=WORKLOAD.name)
    save_model(tmp_path / "b", _model(pre, config, 1), config, pre, workload=WORKLOAD.name)
    (tmp_path / "a" / "weights.pt").write_bytes((tmp_path / "b" / "weights.pt").read_bytes())
    with pytest.raises(ModelLoadError, match=r"weights\.pt does not match meta\.json: sha256"):
        load_model(tmp_path / "a")


@pytest.mark.parametrize(("name", "says"), [("meta.json", r"meta\.json is not valid JSON.*corrupt"),
                                             ("preprocessing.json", r"preprocessing\.json does not match meta\.json")])
def test_a_flipped_bit_in_a_json_file_is_refused_as_corrupt(tmp_path: Path, pre: Preprocessor, name: str,
                                                            says: str) -> None:
    """A flipped high bit makes the bytes invalid UTF-8 before they are bad JSON: still a ModelLoadError."""
    config = ModelConfig(embedding_dim=4, hidden=(8,))
    save_model(tmp_path, _model(pre, config), config, pre, workload=WORKLOAD.name)
    data = bytearray((tmp_path / name).read_bytes())
    data[10] ^= 0x80
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=says):
        load_model(tmp_path)


def test_meta_describing_another_architecture_is_refused(tmp_path: Path, pre: Preprocessor) -> None:
    config = ModelConfig(embedding_dim=4, hidden=(8,))
    save_model(tmp_path, _model(pre, config), config, pre, workload=WORKLOAD.name)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["config"]["hidden"] = [16]  # the checksum still matches the file: the shapes must not
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"does not fit the model meta\.json describes.*wrong shape"):
        load_model(tmp_path)


def test_missing_or_garbled_files_are_refused(tmp_path: Path, pre: Preprocessor) -> None:
    with pytest.raises(ModelLoadError, match=r"meta\.json is missing"):
        load_model(tmp_path)
    config = ModelConfig(embedding_dim=4, hidden=(8,))
    save_model(tmp_path, _model(pre, config), config, pre, workload=WORKLOAD.name)
    body = json.loads((tmp_path / "preprocessing.json").read_text())
    body["vocabularies"]["carrier"].append("ZZ")
    (tmp_path / "preprocessing.json").write_text(json.dumps(body))
    with pytest.raises(ModelLoadError, match=r"preprocessing\.json"):
        load_model(tmp_path)


@pytest.mark.parametrize("edit", ["infinite width", "infinite shape", "column the state lacks"])
def test_a_meta_json_edited_by_hand_is_refused_not_a_crash(tmp_path: Path, pre: Preprocessor, edit: str) -> None:
    """An infinite number (1e999) ended load_model in OverflowError, and a categorical column the preprocessing state
    lacks (without a preprocessing checksum to catch it first) in KeyError: serving, which turns only ModelLoadError
    into a clear refusal, crashed with a traceback."""
    config = ModelConfig(embedding_dim=4, hidden=(8,))
    save_model(tmp_path, _model(pre, config), config, pre, workload=WORKLOAD.name)
    text = (tmp_path / "meta.json").read_text()
    meta = json.loads(text)
    if edit == "infinite width":
        text = text.replace(f'"num_inputs": {meta["num_inputs"]}', '"num_inputs": 1e999')
    elif edit == "infinite shape":
        name = next(iter(meta["parameters"]))
        meta["parameters"][name] = [1e999]
        text = json.dumps(meta).replace("Infinity", "1e999")
    else:  # a contract column, so the meta check of lost columns lets it through to the vocabulary comparison
        meta.pop("preprocessing_sha256", None)
        text = json.dumps(meta)
        state = json.loads((tmp_path / "preprocessing.json").read_text())
        state["categorical_columns"].remove("carrier")
        del state["vocabularies"]["carrier"]
        (tmp_path / "preprocessing.json").write_text(json.dumps(state))
    assert text != (tmp_path / "meta.json").read_text()
    (tmp_path / "meta.json").write_text(text)
    says = (r"preprocessing\.json disagrees with meta\.json on vocabulary sizes" if edit == "column the state lacks"
            else r"meta\.json")
    with pytest.raises(ModelLoadError, match=says):
        load_model(tmp_path)


def test_preprocessor_maps_unseen_and_null_values_and_round_trips(pre: Preprocessor) -> None:
    n = len(pre.numeric_columns)
    row = {c: [pre.vocabularies[c][0]] for c in pre.categorical_columns}
    row["carrier"] = ["NEW"]  # never seen in the training window -> OOV index 0
    row.update({c: [None] for c in pre.numeric_columns})
    row["distance"] = [pre.means["distance"] + 2 * pre.stds["distance"]]
    cat, num = pre.transform(row)
    j = pre.categorical_columns.index("carrier")
    assert cat[0, j] == 0 and (np.delete(cat[0], j) == 1).all()
    d = pre.numeric_columns.index("distance")
    assert num[0, d] == pytest.approx(2.0) and (np.delete(num[0, :n], d) == 0).all()  # every null imputed to 0
    # flagged null: the columns training saw null (a null where it saw none is not, test_a_null_where_training...)
    flagged = {c for j, c in enumerate(pre.numeric_columns) if num[0, n + j]}
    assert flagged == set(pre.numeric_columns) - set(pre.never_missing) and "plane_age" in flagged
    assert Preprocessor.from_json(pre.to_json()).to_dict() == pre.to_dict()


def test_a_numeric_column_training_saw_no_spread_of_is_encoded_at_serving_as_in_training(table: pa.Table) -> None:
    """A column all null in the training window (a route's roll-up before its first flights), or of one value: the
    network saw its scaled value only as 0 (and the null flag only as 1), so the weights on those inputs never
    learnt. A real value at serving went through them (382.0 became 5.0, flag 0) and shifted every prediction."""
    null, constant = "route_flights", "distance"
    window = table.set_column(table.schema.get_field_index(null), null, pa.nulls(table.num_rows, pa.float64()))
    window = window.set_column(window.schema.get_field_index(constant), constant,
                               pa.array([1089.0] * table.num_rows, pa.float64()))
    pre = Preprocessor.fit(window, CONTRACT)
    assert pre.unlearnt == {null: "no finite value", constant: "one value"}
    n, i, j = len(pre.numeric_columns), pre.numeric_columns.index(null), pre.numeric_columns.index(constant)
    trained = pre.transform(window.slice(0, 1))[1][0]
    assert (trained[i], trained[n + i], trained[j], trained[n + j]) == (0.0, 1.0, 0.0, 0.0)
    live = window.slice(0, 1).set_column(window.schema.get_field_index(null), null, pa.array([382.0]))
    live = live.set_column(live.schema.get_field_index(constant), constant, pa.array([4983.0]))
    for state in (pre, Preprocessor.from_json(pre.to_json())):  # as fit, and as a replica loads it
        served = state.transform(live)[1][0]
        assert (served[i], served[n + i], served[j], served[n + j]) == (0.0, 1.0, 0.0, 0.0)
        np.testing.assert_array_equal(np.delete(served, [i, j, n + i, n + j]), np.delete(
            Preprocessor.fit(table, CONTRACT).transform(live)[1][0], [i, j, n + i, n + j]))
    # A state with every column learnt is written as before (its digest, and every saved model's, unchanged).
    assert "unlearnt" not in Preprocessor.fit(table, CONTRACT).to_dict()
    with pytest.raises(PreprocessingError, match="'unlearnt' entries"):
        Preprocessor.from_dict({**pre.to_dict(), "unlearnt": {"nope": "one value"}})


def test_a_constant_non_integer_column_is_one_value_whatever_its_rounded_std(table: pa.Table) -> None:
    """The mean of 10,007 rows of 6373.2 is rounded, which leaves a std of 1.8e-12, above the 1e-12 cutoff: the
    column was taken as learnt, scaled by that std, and a served 6373.3 encoded as a clipped 5.0."""
    window = pa.concat_tables([table] * (10_007 // table.num_rows + 1)).slice(0, 10_007)
    window = window.set_column(window.schema.get_field_index("distance"), "distance",
                               pa.array([6373.2] * window.num_rows, pa.float64()))
    assert np.asarray(window["distance"]).std() > 1e-12
    pre = Preprocessor.fit(window, CONTRACT)
    assert pre.unlearnt == {"distance": "one value"} and pre.stds["distance"] == 1.0
    d = pre.numeric_columns.index("distance")
    live = window.slice(0, 1).set_column(window.schema.get_field_index("distance"), "distance", pa.array([6373.3]))
    assert pre.transform(live)[1][0][d] == 0.0  # as in training


def test_a_null_where_training_saw_none_is_imputed_with_the_flag_training_saw(table: pa.Table) -> None:
    """Every training row has a distance, so the weights on its null flag never learnt: a route missing from the
    lookups (distance null at serving) went through them with the flag at 1 and shifted the probability by up to
    0.41. It is imputed to the mean with the flag at 0, the input the network knows; a column that training did see
    null (plane_age) is flagged as before."""
    pre = Preprocessor.fit(table, CONTRACT)
    assert table["distance"].null_count == 0 and table["plane_age"].null_count > 0
    assert "distance" in pre.never_missing and "plane_age" not in pre.never_missing
    n, d, a = len(pre.numeric_columns), pre.numeric_columns.index("distance"), pre.numeric_columns.index("plane_age")
    row = table.slice(0, 1)
    row = row.set_column(row.schema.get_field_index("distance"), "distance", pa.nulls(1, pa.float64()))
    row = row.set_column(row.schema.get_field_index("plane_age"), "plane_age", pa.nulls(1, pa.float64()))
    for state in (pre, Preprocessor.from_json(pre.to_json())):  # as fit, and as a replica loads it
        served = state.transform(row)[1][0]
        assert (served[d], served[n + d]) == (0.0, 0.0)  # the mean, scaled; not flagged
        assert (served[a], served[n + a]) == (0.0, 1.0)
    # A state saved before the field existed loads, keeps its digest, and flags every null as it always did ...
    old_body = pre.to_dict()
    old_body.pop("never_missing")
    old = Preprocessor.from_json(json.dumps(old_body))
    assert old.never_missing == () and old.to_dict() == old_body
    assert (old.transform(row)[1][0][[d, n + d]] == (0.0, 1.0)).all()
    # ... and rows without such a null encode the same either way (training's rows, and every served one like them).
    assert all(np.array_equal(x, y) for x, y in zip(pre.transform(table), old.transform(table), strict=True))
    with pytest.raises(PreprocessingError, match=r"'never_missing' entries \['nope'\]"):
        Preprocessor.from_dict({**pre.to_dict(), "never_missing": ["nope"]})


def test_the_model_inputs_leave_out_the_contracts_not_model_inputs(table: pa.Table, pre: Preprocessor) -> None:
    """Flights fits no temperature or dew point (seasonal levels, docs/training.md): the state lists the rest, a
    table without the two still transforms, and a state saved with them keeps them (the model's own inputs)."""
    assert set(CONTRACT.not_model_inputs) == {"temp", "dewp"}
    assert pre.numeric_columns == tuple(c for c in CONTRACT.numeric_columns if c not in {"temp", "dewp"})
    assert "humid" in pre.numeric_columns and pre.categorical_columns == CONTRACT.categorical_columns
    assert pre.num_inputs == 2 * (len(CONTRACT.numeric_columns) - 2)
    cat, num = pre.transform(table.drop_columns(["temp", "dewp"]))
    assert num.shape == (table.num_rows, pre.num_inputs) and cat.shape[1] == len(CONTRACT.categorical_columns)
    old = Preprocessor.from_dict({**pre.to_dict(), "numeric_columns": [*pre.numeric_columns, "temp"],
                                  "means": {**pre.means, "temp": 40.0}, "stds": {**pre.stds, "temp": 10.0}})
    assert old.transform(table)[1].shape == (table.num_rows, pre.num_inputs + 2)
    with pytest.raises(PreprocessingError, match=r"lacks feature columns \['temp'\]"):
        old.transform(table.drop_columns(["temp"]))


@pytest.mark.parametrize(("field", "value"), [("stds", 0.0), ("stds", -2.0), ("means", float("nan"))])
def test_statistics_fit_never_writes_are_refused_on_load(pre: Preprocessor, field: str, value: float) -> None:
    """A std of 0 (0/0 on a value at the mean) or a NaN mean made every probability NaN without an error; a negative
    std flipped the feature's sign. A folder without the preprocessing checksum (an older one, or edited) loads it."""
    body = json.loads(pre.to_json())
    body[field]["distance"] = value
    with pytest.raises(PreprocessingError, match="statistics for 'distance' are not usable"):
        Preprocessor.from_json(json.dumps(body))


def test_preprocessor_refuses_missing_columns(pre: Preprocessor) -> None:
    with pytest.raises(PreprocessingError, match=r"lacks feature columns \['carrier'"):
        pre.transform({"origin": ["JFK"]})


def test_the_folder_holds_exactly_the_named_files_meta_last(tmp_path: Path, pre: Preprocessor,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """save_model writes in WRITE_ORDER (what the registry and the worker copy by), meta.json last: the order is
    observed from the writes themselves, and a changed WRITE_ORDER changes them (it once kept an order of its own)."""
    import subprocess
    import sys

    from tenfold.model import io as model_io
    from tenfold.model_files import META_FILE, PREPROCESSING_FILE, WEIGHTS_FILE, WRITE_ORDER

    written: list[str] = []

    def recording(path: Path, data: bytes, **kwargs: bool) -> None:
        written.append(Path(path).name)
        real_write(path, data, **kwargs)

    real_write = model_io.atomic_write
    monkeypatch.setattr(model_io, "atomic_write", recording)
    config = ModelConfig(embedding_dim=2, hidden=(4,))
    save_model(tmp_path, _model(pre, config), config, pre, workload=WORKLOAD.name)
    assert written == list(WRITE_ORDER) and written[-1] == META_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(WRITE_ORDER)
    written.clear()
    monkeypatch.setattr(model_io, "WRITE_ORDER", (PREPROCESSING_FILE, WEIGHTS_FILE, META_FILE))
    save_model(tmp_path / "again", _model(pre, config), config, pre, workload=WORKLOAD.name)
    assert written == [PREPROCESSING_FILE, WEIGHTS_FILE, META_FILE]
    assert load_model(tmp_path / "again").meta["weights_sha256"] == load_model(tmp_path).meta["weights_sha256"]
    # The registry and the CLI read these names without loading torch.
    code = "import sys, tenfold.model_files, tenfold.registry.registry; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def _with_gaps(table: pa.Table, pre: Preprocessor) -> pa.Table:
    """``table`` with nulls and never-seen values in every model input (every 7th row null, every 5th unseen)."""
    rng = np.random.default_rng(3)
    for col in (*pre.categorical_columns, *pre.numeric_columns):
        values = table[col].to_pylist()
        for i in range(0, len(values), 7):
            values[i] = None
        if col in pre.categorical_columns:
            unseen = "ZZZ" if pa.types.is_string(table[col].type) else 9_999
            for i in range(3, len(values), 5):
                values[i] = unseen
        elif pa.types.is_floating(table[col].type):
            for i in range(2, len(values), 11):
                values[i] = float(rng.choice([np.nan, np.inf]))
        table = table.set_column(table.schema.get_field_index(col), col, pa.array(values, table[col].type))
    return table


def test_small_batches_encode_exactly_as_large_ones(table: pa.Table, pre: Preprocessor) -> None:
    """Serving's micro-batches (dict look-ups, at most DICT_LOOKUP_MAX_ROWS rows) and a whole month (pc.index_in)
    give the same codes, and the numeric block matches the definition column by column (cast, scale, clip)."""
    from tenfold.model.preprocessing import CLIP_Z, DICT_LOOKUP_MAX_ROWS

    gappy = _with_gaps(table, pre)
    assert gappy.num_rows > DICT_LOOKUP_MAX_ROWS  # the whole table takes the Arrow path
    kinds = {str(gappy[c].type) for c in pre.categorical_columns}
    assert {"string", "int32"} <= kinds, kinds  # both of the dict path's kinds are exercised
    cat_all, num_all = pre.transform(gappy)
    parts = [pre.transform(gappy.slice(i, size)) for i, size in ((0, 1), (1, 8), (9, 64), (73, 227))]
    assert np.array_equal(np.vstack([c for c, _ in parts]), cat_all)
    assert np.array_equal(np.vstack([n for _, n in parts]), num_all)
    assert (cat_all[::7] == 0).all() and (cat_all[3::35] == 0).all()  # nulls and unseen values: OOV
    assert (cat_all[1] > 0).all()
    n = len(pre.numeric_columns)
    for j, col in enumerate(pre.numeric_columns):
        arr = pa.compute.cast(gappy[col], pa.float64()).to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(arr)
        with np.errstate(invalid="ignore"):
            want = np.where(bad, 0.0, np.clip((arr - pre.means[col]) / pre.stds[col], -CLIP_Z, CLIP_Z))
        assert np.array_equal(num_all[:, j], want.astype(np.float32)), col
        flag = bad & (col not in pre.never_missing)  # a column training never saw null: imputed, not flagged
        assert np.array_equal(num_all[:, n + j], flag.astype(np.float32)), col


def test_scoring_leaves_the_modules_in_their_own_modes(pre: Preprocessor, table: pa.Table) -> None:
    """predict_proba runs in eval mode and restores each module as it was (dropout is stochastic in training)."""
    from tenfold.model.io import predict_proba

    model = _model(pre, ModelConfig(embedding_dim=4, hidden=(8,), dropout=0.5))
    cat, num = (torch.from_numpy(a) for a in pre.transform(table))
    model.train()
    first = predict_proba(model, cat, num)
    assert torch.equal(first, predict_proba(model, cat, num))  # eval mode inside: no dropout
    assert all(m.training for m in model.modules())
    model.eval()
    model.mlp[2].train()  # one dropout module left training: scored in eval, then left as it was
    assert torch.equal(first, predict_proba(model, cat, num))
    assert [m.training for m in model.modules() if m.training] == [True]
    model.eval()
    assert torch.equal(first, predict_proba(model, cat, num)) and not any(m.training for m in model.modules())


@pytest.mark.parametrize(("field", "value", "says"), [
    ("workload", 5, r"'workload' is 5, not a workload name"),
    ("workload", [], r"'workload' is \[\], not a workload name"),
    ("parameters", [], r"'parameters' is not a mapping of parameter name to shape"),
    ("parameters", {"x": 5}, r"'parameters' is not a mapping of parameter name to shape"),
    ("weights_file", ".", r"'weights_file' is '\.', not a file name in the model folder"),
    ("weights_file", "../weights.pt", r"'weights_file' is '\.\./weights\.pt', not a file name"),
    ("preprocessing_file", "/etc/passwd", r"'preprocessing_file' is '/etc/passwd', not a file name"),
    ("preprocessing_file", 3, r"'preprocessing_file' is 3, not a file name"),
    # These ended in TypeError (None[:12] in the checksum refusal), TypeError from nn.Embedding, TypeError from a
    # relative import, and OverflowError from float(10**400).
    ("weights_sha256", None, r"'weights_sha256' is None, not a sha256 in hex"),
    ("weights_sha256", 7, r"'weights_sha256' is 7, not a sha256 in hex"),
    ("config", {"embedding_dim": 4.5, "hidden": [8]}, r"garbles embedding_dim must hold whole numbers, got 4\.5"),
    ("workload", ".x:y", r"workload '\.x:y' cannot be loaded here: unknown workload .*an absolute module path"),
    ("calibration", {"method": "temperature", "temperature": 10**400}, r"its calibration entry is unusable"),
])
def test_a_meta_field_of_the_wrong_kind_is_a_load_error_naming_the_field(
        tmp_path: Path, pre: Preprocessor, field: str, value: object, says: str) -> None:
    """These ended in AttributeError, TypeError or IsADirectoryError from deep inside load_model (a traceback where
    callers catch ModelLoadError), or read a file outside the folder."""
    config = ModelConfig(embedding_dim=4, hidden=(8,))
    save_model(tmp_path, _model(pre, config), config, pre, workload=WORKLOAD.name)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta[field] = value
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=rf"meta\.json.*{says}"):
        load_model(tmp_path)


def test_a_width_written_as_a_whole_float_loads_and_a_meta_of_a_huge_integer_is_refused(
        tmp_path: Path, pre: Preprocessor) -> None:
    """JSON or YAML tools may write 4 as 4.0: the config check passed it and nn.Embedding raised TypeError. An integer
    of over 4,300 digits is a plain ValueError from json.loads, not a JSONDecodeError: it escaped read_meta."""
    config = ModelConfig(embedding_dim=4, hidden=(8,))
    save_model(tmp_path, _model(pre, config), config, pre, workload=WORKLOAD.name)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["config"] = {**meta["config"], "embedding_dim": 4.0, "hidden": [8.0]}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert load_model(tmp_path).config == config
    (tmp_path / "meta.json").write_text(json.dumps(meta).replace('"version": 1', '"version": ' + "9" * 5000))
    with pytest.raises(ModelLoadError, match=r"meta\.json is not valid JSON"):
        load_model(tmp_path)


@pytest.mark.parametrize("damage", ["[" * 200_000, '{"a": ' * 200_000, "9" * 5000])
@pytest.mark.parametrize("name", ["meta.json", "preprocessing.json"])
def test_json_too_deep_or_too_long_to_parse_is_a_load_error_naming_the_file(
        tmp_path: Path, pre: Preprocessor, name: str, damage: str) -> None:
    """Nesting deeper than the parser's recursion limit raised a raw RecursionError from load_model, and the
    preprocessing state's huge integer a raw ValueError (json.loads' own, not a JSONDecodeError): a traceback where
    serving and the CLI catch ModelLoadError."""
    config = ModelConfig(embedding_dim=4, hidden=(8,))
    save_model(tmp_path, _model(pre, config), config, pre, workload=WORKLOAD.name)
    if name == "preprocessing.json":  # past the checksum (a folder saved without one), to the parse itself
        meta = json.loads((tmp_path / "meta.json").read_text())
        del meta["preprocessing_sha256"]
        (tmp_path / "meta.json").write_text(json.dumps(meta))
    (tmp_path / name).write_text(damage)
    with pytest.raises(ModelLoadError, match=rf"{name.replace('.', '[.]')}.*(is )?not (valid )?JSON"):
        load_model(tmp_path)
    if name == "preprocessing.json":  # a training rank reads the state with from_json alone
        with pytest.raises(PreprocessingError, match="preprocessing state is not JSON"):
            Preprocessor.from_json(damage)


def test_weights_that_are_not_a_state_dict_of_tensors_are_refused(tmp_path: Path, pre: Preprocessor) -> None:
    """A training checkpoint's dict, or a state dict with a step count, whose sha256 meta.json records: it loads under
    weights_only, and ``tuple(v.shape)`` on the int ended load_model in AttributeError."""
    import hashlib
    import io

    config = ModelConfig(embedding_dim=4, hidden=(8,))
    model = _model(pre, config)
    save_model(tmp_path, model, config, pre, workload=WORKLOAD.name)
    buf = io.BytesIO()
    torch.save({**model.state_dict(), "step": 5}, buf)
    (tmp_path / "weights.pt").write_bytes(buf.getvalue())
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"weights\.pt is not a state dict of tensors \(its entry 'step' is not"):
        load_model(tmp_path)


@pytest.mark.parametrize("given", ["a file", "meta.json a folder"])
def test_a_model_folder_that_cannot_be_read_is_a_load_error_naming_it(tmp_path: Path, given: str) -> None:
    """`tenfold evaluate --model <a file>` ended in a NotADirectoryError traceback (IsADirectoryError for a folder
    named meta.json, PermissionError for one this user cannot read)."""
    from tenfold.model.io import ModelLoadError, read_meta

    where = tmp_path / "model"
    if given == "a file":
        where.write_text("not a folder")
    else:
        (where / "meta.json").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=rf"{where}/meta.json cannot be read \(.+\): {where} must be a saved "
                                             r"model's folder"):
        read_meta(where)


def test_a_model_naming_another_workload_is_refused_before_its_module_is_imported(
        tmp_path: Path, pre: Preprocessor, monkeypatch: pytest.MonkeyPatch) -> None:
    """meta.json names the workload's module, and load_model imported it before any check: a model folder in the
    registry (whoever can write the bucket) chose what a replica or an inference worker ran, e.g. a .py file that an
    earlier version's folder had placed in the model cache under the working folder."""
    import sys

    config = ModelConfig(embedding_dim=4, hidden=(8,))
    save_model(tmp_path / "model", _model(pre, config), config, pre, workload=WORKLOAD.name)
    planted = tmp_path / "planted"
    planted.mkdir()
    imported = tmp_path / "imported"
    (planted / "tenfold_planted_workload.py").write_text(
        f"import pathlib\npathlib.Path({str(imported)!r}).touch()\nW = None\n")
    monkeypatch.syspath_prepend(str(planted))
    meta = json.loads((tmp_path / "model" / "meta.json").read_text())
    meta["workload"] = "tenfold_planted_workload:W"
    (tmp_path / "model" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"it is a model of workload 'tenfold_planted_workload:W', and this "
                                             r"platform runs 'flights' \(settings\.workload\)"):
        load_model(tmp_path / "model", for_workload="flights")
    assert not imported.exists() and "tenfold_planted_workload" not in sys.modules
    # The built-in's name and its module path are one workload.
    meta["workload"] = "flights"
    (tmp_path / "model" / "meta.json").write_text(json.dumps(meta))
    assert load_model(tmp_path / "model", for_workload="tenfold.workloads.flights:WORKLOAD").workload is WORKLOAD
