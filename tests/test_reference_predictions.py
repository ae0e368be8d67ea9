"""Every prompt method reproduces its stored reference predictions (see `reference_runs.py`).

A fixed-seed 4-step run on few-shot SST-2 must give the stored label probabilities on the test
sentences: this catches any change to what a method computes, which a crash-only test would not.
"""

import pytest

from reference_runs import SHARED_SST2, cases, load, run_case

# Float sums may be reordered by a change that keeps the maths: allow that much, no more.
ABS_TOLERANCE = 2e-4

needs_data = pytest.mark.skipif(not SHARED_SST2.is_dir(), reason=f"benchmark data not found at {SHARED_SST2}")


def _cases(model):
    return [pytest.param(model, name, id=f"{model}-{name}") for name in cases(model)]


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("model,name", _cases("bert-tiny") + _cases("smollm2-135m"))
def test_method_reproduces_its_stored_reference_predictions(tmp_path, model, name):
    stored = load(model)[name]
    got = run_case(model, name, tmp_path)
    assert len(got) == len(stored)
    worst = 0.0
    for index, (row, ref) in enumerate(zip(got, stored)):
        for label, p in ref["probabilities"].items():
            worst = max(worst, abs(row["probabilities"][label] - p))
        ranked = sorted(ref["probabilities"].values(), reverse=True)
        if ranked[0] - ranked[1] > 2 * ABS_TOLERANCE:  # a near-tie may flip within the tolerance
            expected = max(ref["probabilities"], key=ref["probabilities"].get)
            assert row["prediction"] == expected, f"{model}/{name}: test sentence {index} changed label"
    assert worst <= ABS_TOLERANCE, f"{model}/{name}: a probability moved by {worst:.2e}"
