"""How many epochs the comparison of scripts/gpu_check.sh can train in the time left.

    python3 scripts/gpu_check_plan.py --seconds S --examples N --logs LOG... [--seeds 3]

Reads the JSON rows that ``python -m vit_jax.tools.bench`` prints on stderr (one per
configuration, also when the bench was cut short) from LOG files, takes each variant's
float32 step time at ``--seeds`` parallel seeds (the comparison's program; a later log's
row replaces an earlier one's) and its largest compile time (the uncached one), and prints the largest epoch count E (at least 1) with

    sum over variants of (fixed + compile_s + E * (steps_per_epoch * step_s * overhead + eval))
        <= S

``fixed`` covers loading the data set, initialising, the evaluation program and the final
checkpoint; ``overhead`` and ``eval`` the per-epoch host work and evaluation (a CPU test
of 4-step epochs overran its plan by 7 % without ``eval``). A variant without a
measured step time gets the slowest measured one; with none at all, E is 1. The reasoning
goes to stderr, the number alone to stdout.
"""
import argparse
import json
import math
import sys


def rows(paths):
  for path in paths:
    try:
      with open(path) as f:
        for line in f:
          if line.startswith('{'):
            try:
              yield json.loads(line)
            except ValueError:
              pass
    except OSError:
      pass


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--seconds', type=float, required=True, help='time left for the comparison')
  p.add_argument('--examples', type=int, required=True, help='training images per epoch')
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--seeds', type=int, default=3)
  p.add_argument('--variants', default='vit,revvit,bdia,momentum')
  p.add_argument('--fixed', type=float, default=20.0, help='seconds per variant besides compiling')
  p.add_argument('--compile', type=float, default=60.0, help='compile seconds when not measured')
  p.add_argument('--overhead', type=float, default=1.3, help='factor on the training step time')
  p.add_argument('--eval', type=float, default=1.0, help='seconds per variant and epoch')
  p.add_argument('--logs', nargs='+', default=[])
  a = p.parse_args()
  step, comp = {}, {}
  for r in rows(a.logs):
    if r.get('parallel_seeds') == a.seeds and r.get('dtype', 'float32') == 'float32' \
        and r.get('status') == 'ok':
      if r.get('step_time_ms'):
        step[r['variant']] = r['step_time_ms'] / 1e3
      if r.get('compile_s'):  # the first (uncached) compile is the larger one
        comp[r['variant']] = max(comp.get(r['variant'], 0.0), r['compile_s'])
  names = a.variants.split(',')
  spe = max(1, a.examples // a.batch)
  if not step:
    print(f'plan: no float32 step times at {a.seeds} seeds measured; 1 epoch', file=sys.stderr)
    print(1)
    return
  slowest = max(step.values())
  per_epoch = sum(spe * step.get(n, slowest) * a.overhead + a.eval for n in names)
  fixed = sum(a.fixed + comp.get(n, a.compile) for n in names)
  epochs = max(1, math.floor((a.seconds - fixed) / per_epoch))
  print(f'plan: {a.seconds:.0f} s left; fixed {fixed:.0f} s (compile '
        f'{", ".join(f"{n} {comp.get(n, a.compile):.0f}" for n in names)} + {a.fixed:.0f} each); '
        f'an epoch of all variants {per_epoch:.1f} s ({spe} steps, step '
        f'{", ".join(f"{n} {step.get(n, slowest) * 1e3:.1f}" for n in names)} ms, '
        f'x{a.overhead}, + {a.eval:.0f} s each to evaluate); {epochs} epoch(s)', file=sys.stderr)
  print(epochs)


if __name__ == '__main__':
  main()
