"""Two proportions compared: is arm B's rate different from arm A's?

Shared by the online-metrics service (``/v1/online-metrics/compare``) and the rollout tooling in
export/, so that a dashboard and a rollout decision never disagree on the same counts.

The method is the textbook large-sample one:

* the difference ``B - A`` of the two rates, with a confidence interval from the normal
  approximation and the *unpooled* standard error ``sqrt(pa(1-pa)/na + pb(1-pb)/nb)`` (the
  interval is about the difference, whatever it is);
* the z statistic and two-sided p-value of the test "both rates are equal", with the *pooled*
  standard error (under that hypothesis both arms share one rate).

It is only as good as the normal approximation: with a handful of successes per arm, treat the
numbers as a rough guide. No scipy: ``statistics.NormalDist`` has the two functions needed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

_STANDARD_NORMAL = NormalDist()


@dataclass(frozen=True)
class ProportionComparison:
    """What ``compare_proportions`` finds. With zero trials in an arm nothing can be said: the
    rate of that arm, the difference, the interval, z and p are all None and ``defined`` is False
    (an API answers with the counts and that flag rather than an error)."""

    successes_a: int
    trials_a: int
    successes_b: int
    trials_b: int
    confidence: float
    rate_a: float | None
    rate_b: float | None
    difference: float | None  # rate_b - rate_a
    ci_low: float | None
    ci_high: float | None
    z: float | None
    p_value: float | None  # two-sided

    @property
    def defined(self) -> bool:
        return self.difference is not None

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "defined": self.defined}


def _check(successes: int, trials: int, arm: str) -> None:
    if trials < 0 or successes < 0:
        raise ValueError(f"arm {arm}: counts must not be negative ({successes}/{trials})")
    if successes > trials:
        raise ValueError(f"arm {arm}: more successes than trials ({successes}/{trials})")


def compare_proportions(successes_a: int, trials_a: int, successes_b: int, trials_b: int,
                        confidence: float = 0.95) -> ProportionComparison:
    """Compare rate B = successes_b/trials_b with rate A. Raises ValueError for impossible counts
    (negative, or more successes than trials) or a confidence outside (0, 1)."""
    _check(successes_a, trials_a, "A")
    _check(successes_b, trials_b, "B")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), not {confidence}")
    rate_a = successes_a / trials_a if trials_a else None
    rate_b = successes_b / trials_b if trials_b else None
    counts = dict(successes_a=successes_a, trials_a=trials_a, successes_b=successes_b,
                  trials_b=trials_b, confidence=confidence, rate_a=rate_a, rate_b=rate_b)
    if rate_a is None or rate_b is None:
        return ProportionComparison(**counts, difference=None, ci_low=None, ci_high=None, z=None,
                                    p_value=None)
    difference = rate_b - rate_a
    se = math.sqrt(rate_a * (1 - rate_a) / trials_a + rate_b * (1 - rate_b) / trials_b)
    half_width = _STANDARD_NORMAL.inv_cdf(0.5 + confidence / 2) * se
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    pooled_se = math.sqrt(pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b))
    if pooled_se == 0:
        # Every trial of both arms succeeded, or none did: the rates are equal, no evidence of a
        # difference (0/0 would be NaN).
        z, p_value = 0.0, 1.0
    else:
        z = difference / pooled_se
        p_value = min(1.0, 2 * _STANDARD_NORMAL.cdf(-abs(z)))  # not 1 - cdf: exact in the tail
    return ProportionComparison(**counts, difference=difference, ci_low=difference - half_width,
                                ci_high=difference + half_width, z=z, p_value=p_value)
