"""Offline verification of the explorer's models (vitaccel.verify): the validation store,
the models against the stored RTL cycles and Yosys counts, and (slow) against fresh
Verilator and Yosys runs."""

import json

import pytest


@pytest.mark.slow
def test_cycle_model_matches_verilator_on_engine_jobs():
    from vitaccel.verify.validate import CYCLE_BOUND, ENGINE_CASES, _engine_case

    for case in ENGINE_CASES:
        row = _engine_case(case)
        assert abs(row["error"]) <= CYCLE_BOUND, row


@pytest.mark.slow
def test_cycle_model_matches_the_accelerator_top():
    from vitaccel.verify.validate import CYCLE_BOUND, TOP_CASES, _top_case

    for case in TOP_CASES:
        row = _top_case(*case)
        assert abs(row["error"]) <= CYCLE_BOUND, row


@pytest.mark.slow
def test_resource_model_matches_yosys_on_held_out_designs():
    from vitaccel.verify.validate import DATA_PATH, RESOURCE_BOUND, MeasureStore, _resource_rows

    rows = _resource_rows(resynth=False, store=MeasureStore(DATA_PATH, reuse=True))
    assert len(rows) >= 5
    for row in rows:
        for kind, err in row["error"].items():
            assert abs(err) <= RESOURCE_BOUND, (row["design"], kind, row)


def test_validation_store_keeps_each_measurement_and_reuses_it(tmp_path):
    from vitaccel.verify.validate import MeasureStore, _measured

    path = tmp_path / "validation.json"
    calls = []

    def measure():
        calls.append(1)
        return {"cycles": 123}

    store = MeasureStore(path)
    assert _measured(store, "engine a", measure) == {"cycles": 123}
    # Saved at once (an interrupted run keeps it), and kept beside other keys of the file.
    assert json.loads(path.read_text())["measured"] == {"engine a": {"cycles": 123}}
    reused = MeasureStore(path, reuse=True)
    assert _measured(reused, "engine a", measure) == {"cycles": 123}
    assert len(calls) == 1
    # Without reuse every case is measured again.
    assert _measured(MeasureStore(path), "engine a", measure) == {"cycles": 123}
    assert len(calls) == 2


def test_models_meet_the_bounds_on_the_stored_validation_measurements():
    """The cycle and resource models against the RTL cycles and Yosys counts stored by the
    last ``validate --full`` (no simulation here): a model change that breaks the validation
    table fails fast, not only in the hour-long full run."""
    from vitaccel.verify.validate import (
        CYCLE_BOUND,
        DATA_PATH,
        RESOURCE_BOUND,
        TOP_CASES,
        MeasureStore,
        validate,
    )

    result = validate(quick=False, store=MeasureStore(DATA_PATH, reuse=True, offline=True))
    assert len({r["design"] for r in result["cycles"]}) >= 5
    assert sum(r["kind"] == "top" for r in result["cycles"]) == len(TOP_CASES)
    assert len(result["resources"]) >= 5
    for row in result["cycles"]:
        assert abs(row["error"]) <= CYCLE_BOUND, row
    for row in result["resources"]:
        for kind, err in row["error"].items():
            assert abs(err) <= RESOURCE_BOUND, (row["design"], kind, row)
