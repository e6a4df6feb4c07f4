"""The deepest model whose training step fits in memory: ``bench --max-depth``.

A variant whose activation memory is flat in depth (revvit, bdia, momentum) still grows by
its parameters, gradients and optimizer state; plain autodiff also keeps every block's
activations. How deep each can go on one device is the practical summary of both.

Nothing is allocated or run: each depth's training step is lowered from abstract shapes
(``jax.eval_shape``) and compiled, and XLA's buffer assignment gives the memory it needs
(temp + arguments + outputs - aliased, as ``bench``'s ``compiled_analysis``). The search
compiles two small depths, extrapolates the growth to the limit (twice more from the
new points: memory is nearly affine in depth), and then steps up or down from that
guess until depth D fits and D + 1 does not: a handful of compiles whatever the answer.
"""
import os

import jax

from vit_jax.training import program

MAX_DEPTH = 100_000  # a search stops here: "fits at every depth tried"


def memory_limit_mib(override_mib: float | None = None) -> tuple[float, str]:
  """(limit in MiB, where it came from): the override, the device's allocator limit, or RAM."""
  if override_mib:
    return float(override_mib), '--memory-limit-mib'
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return stats['bytes_limit'] / 2**20, 'device bytes_limit'
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**20, 'host RAM'


def compiled_memory_mib(variant: str, depth: int, batch: int, overrides: list[str]) -> float:
  """XLA's memory for one training step at this depth, from abstract shapes (no allocation)."""
  compiled, _, _ = program.compile_train_step(program.make_config(variant, depth, batch,
                                                                   overrides))
  return program.compiled_memory_mib(compiled)


def max_depth(memory_at, limit_mib: float, probe=(2, 4)) -> tuple[int, dict[int, float]]:
  """The largest depth D ≥ 1 with ``memory_at(D) <= limit_mib`` (0 if depth 1 does not fit).

  ``memory_at``: depth -> MiB, assumed to grow with depth. Returns D and every depth
  compiled with its memory. Raises ValueError when memory does not grow between the probes.
  """
  seen: dict[int, float] = {}

  def fits(d: int) -> bool:
    if d not in seen:
      seen[d] = memory_at(d)
    return seen[d] <= limit_mib

  def secant(a: int, b: int) -> int:
    """Where the line through depths a and b reaches the limit."""
    slope = (seen[b] - seen[a]) / (b - a)
    if slope <= 0:
      raise ValueError(f'memory does not grow from depth {a} ({seen[a]:.1f} MiB) to {b} '
                       f'({seen[b]:.1f} MiB); cannot extrapolate')
    return min(MAX_DEPTH, max(1, b + int((limit_mib - seen[b]) // slope)))

  lo, hi = probe
  if not fits(lo):
    return (0 if not fits(1) else _last_fit(fits, 1, lo)), seen
  fits(hi)
  # Two secant steps: deep models' memory is affine in depth (parameters and optimizer
  # state dominate), but the small probes' slope may be the activations' instead.
  prev, guess = hi, secant(lo, hi)
  for _ in range(2):
    if guess == prev:
      break
    fits(guess)
    prev, guess = guess, secant(prev, guess)
  if fits(guess):  # gallop up from the guess (+1, +2, +4, ...) until a depth does not fit
    good, step = guess, 1
    while good < MAX_DEPTH and fits(min(good + step, MAX_DEPTH)):
      good, step = min(good + step, MAX_DEPTH), 2 * step
    if good == MAX_DEPTH:
      return good, seen
    bad = min(good + step, MAX_DEPTH)
  else:  # gallop down until a depth fits (lo does)
    bad, step = guess, 1
    while not fits(max(bad - step, lo)):
      bad, step = max(bad - step, lo), 2 * step
    good = max(bad - step, lo)
  return _last_fit(fits, good, bad), seen


def _last_fit(fits, good: int, bad: int) -> int:
  """Bisection between a depth that fits and a larger one that does not."""
  while bad - good > 1:
    mid = (good + bad) // 2
    good, bad = (mid, bad) if fits(mid) else (good, mid)
  return good
