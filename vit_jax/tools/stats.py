"""Statistics over seeds: mean ± std, and a 95 % interval for a difference of means.

With three seeds a variant's spread is known poorly, so the comparison of a variant with
the baseline uses Welch's t interval (unequal variances, Welch–Satterthwaite degrees of
freedom; ``scipy.stats.ttest_ind(equal_var=False)``), which is wide when the seeds
disagree. Where the interval covers 0 the report says "no difference detectable".
"""
import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

NO_DIFFERENCE = 'no difference detectable with {n} seeds'


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; NaN for one value) of the finite values."""
  v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
  if not len(v):
    return math.nan, math.nan
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


@dataclasses.dataclass(frozen=True)
class Difference:
  """mean(b) − mean(a) with its interval; ``low``/``high`` NaN when it cannot be computed."""
  diff: float
  low: float
  high: float
  n: int  # seeds on the smaller side

  @property
  def detectable(self) -> bool:
    """The interval excludes 0 (False when there is no interval)."""
    return bool(self.low > 0 or self.high < 0)

  def describe(self, unit: str = ' points') -> str:
    """'+1.23 points [−0.50, +2.96]: no difference detectable with 3 seeds', or '… higher'."""
    if not math.isfinite(self.low):
      return f'{self.diff:+.2f}{unit} (no interval with {self.n} seed(s))'
    verdict = (('higher' if self.diff > 0 else 'lower') if self.detectable
               else NO_DIFFERENCE.format(n=self.n))
    return f'{self.diff:+.2f}{unit} [{self.low:+.2f}, {self.high:+.2f}]: {verdict}'


def welch_difference(a: Sequence[float], b: Sequence[float],
                     confidence: float = 0.95) -> Difference:
  """mean(b) − mean(a) and its Welch t interval at ``confidence``.

  Needs at least two values on each side and some spread; otherwise the interval is NaN
  (a difference of means with no estimate of its error).
  """
  a = np.asarray([x for x in a if math.isfinite(x)], float)
  b = np.asarray([x for x in b if math.isfinite(x)], float)
  n = min(len(a), len(b))
  if not n:
    return Difference(math.nan, math.nan, math.nan, 0)
  diff = float(b.mean() - a.mean())
  if n < 2 or (a.std() == 0 and b.std() == 0):
    return Difference(diff, math.nan, math.nan, n)
  ci = scipy_stats.ttest_ind(b, a, equal_var=False).confidence_interval(confidence)
  return Difference(diff, float(ci.low), float(ci.high), n)
