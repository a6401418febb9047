"""features.significance against values worked out independently (scipy is not in the venv:
the reference numbers are R's ``prop.test(..., correct=FALSE)`` and closed forms via math.erfc)."""

from __future__ import annotations

import math

import pytest

from features.significance import compare_proportions


def test_matches_the_textbook_example():
    # prop.test(c(100, 130), c(1000, 1000), correct=FALSE): X-squared = 4.4215, p = 0.0355,
    # 95% CI of p1 - p2: -0.057932 .. -0.002068 (so B - A: 0.002068 .. 0.057932)
    r = compare_proportions(100, 1000, 130, 1000)
    assert (r.rate_a, r.rate_b) == (0.1, 0.13)
    assert r.difference == pytest.approx(0.03)
    assert r.ci_low == pytest.approx(0.002068, abs=1e-6)
    assert r.ci_high == pytest.approx(0.057932, abs=1e-6)
    assert r.z ** 2 == pytest.approx(4.4215, abs=1e-4)
    assert r.p_value == pytest.approx(0.0355, abs=1e-4)
    assert r.defined


def test_closed_forms_with_unequal_arms():
    sa, na, sb, nb = 30, 400, 12, 350
    r = compare_proportions(sa, na, sb, nb, confidence=0.9)
    pa, pb = sa / na, sb / nb
    pooled = (sa + sb) / (na + nb)
    z = (pb - pa) / math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    half = 1.6448536269514722 * math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    assert r.z == pytest.approx(z) and r.z < 0
    assert r.p_value == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))
    assert (r.ci_low, r.ci_high) == (pytest.approx(pb - pa - half), pytest.approx(pb - pa + half))


def test_a_wider_confidence_gives_a_wider_interval():
    narrow = compare_proportions(50, 500, 60, 500, confidence=0.8)
    wide = compare_proportions(50, 500, 60, 500, confidence=0.99)
    assert wide.ci_low < narrow.ci_low < narrow.ci_high < wide.ci_high
    assert wide.p_value == narrow.p_value  # the test does not depend on the interval's level


def test_identical_arms_show_no_difference():
    r = compare_proportions(10, 100, 10, 100)
    assert (r.difference, r.z, r.p_value) == (0, 0, 1.0)


@pytest.mark.parametrize("counts", [(0, 100, 0, 100), (100, 100, 50, 50)])
def test_all_or_nothing_in_both_arms_is_no_evidence_not_a_division_by_zero(counts):
    r = compare_proportions(*counts)
    assert (r.difference, r.ci_low, r.ci_high, r.z, r.p_value) == (0, 0, 0, 0.0, 1.0)


def test_zero_trials_leave_the_comparison_undefined():
    r = compare_proportions(0, 0, 5, 100)
    assert not r.defined
    assert (r.rate_a, r.rate_b) == (None, 0.05)
    assert (r.difference, r.ci_low, r.ci_high, r.z, r.p_value) == (None,) * 5
    assert r.as_dict()["defined"] is False
    assert not compare_proportions(0, 0, 0, 0).defined


@pytest.mark.parametrize(("counts", "confidence"), [
    ((-1, 10, 1, 10), 0.95), ((11, 10, 1, 10), 0.95), ((1, 10, 1, -10), 0.95),
    ((1, 10, 1, 10), 1.0), ((1, 10, 1, 10), 0.0),
])
def test_impossible_input_is_a_value_error(counts, confidence):
    with pytest.raises(ValueError):
        compare_proportions(*counts, confidence=confidence)
