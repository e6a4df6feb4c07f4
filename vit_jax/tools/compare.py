"""Train several variants with the same budget and seeds, then write the report.

    python -m vit_jax.tools.compare --dataset cifar10 --variants vit,revvit,bdia,momentum \
        --seeds 3 --workdir runs/cmp [--parallel-seeds K|auto] [--config.x=y ...]

A variant's seeds train together, as one seed-parallel program (``config.parallel_seeds``)
of up to ``--parallel-seeds`` models (default: all of them; ``auto``: as many as fit in
the device's memory, from the compiled program's memory). A program of several seeds
runs in ``WORKDIR/<variant>/seeds<a>-<b>`` with each seed's outputs in its ``seed<k>``
folder; a single seed runs in ``WORKDIR/<variant>/seed<k>``. Each is an ordinary
train.py run: a finished one is skipped, an interrupted one resumes. The report
(``python -m vit_jax.tools.report``) is written to ``WORKDIR/report``.

A run that cannot finish here does not stop the others: one whose workdir another process
holds (``workdir_lock``) is left to that process, one in which a model stopped on a
non-finite loss or whose checkpoint is refused is reported; each in one line. The other
runs go on, the report is written, and the exit status is 2: the comparison is incomplete.
"""
import argparse
import os
import sys

from vit_jax.models import variants
from vit_jax.tools import cli, report
from vit_jax.training import config_defaults


def run_config(variant: str, dataset: str, seed: int, overrides: list[str]):
  """The preset for ``variant`` on ``dataset`` (MNIST-sized when the name says mnist)."""
  c = config_defaults.preset(variant, 'mnist' if 'mnist' in dataset else 'cifar10')
  c.dataset, c.seed = dataset, seed
  config_defaults.apply_overrides(c, overrides)
  return c


def _finished(workdir: str, config) -> bool:
  from vit_jax.training import parallel, run_files  # lazy, as in main: a bad flag fails first
  for folder in run_files.model_dirs(workdir, parallel.model_seeds(config)):
    path = os.path.join(folder, 'summary.json')
    if not os.path.exists(path):
      return False
    s = run_files.read_json(path)
    if not s.get('finished') or s.get('epochs_completed', 0) < config.num_epochs:
      return False
  return True


def seed_groups(seeds: int, per_program: int) -> list[tuple[int, int]]:
  """(first seed, number of seeds) of each program: ``seeds`` split ``per_program`` at a time."""
  return [(s, min(per_program, seeds - s)) for s in range(0, seeds, per_program)]


def fitting_seeds(seeds: int, memory_at, limit_mib: float) -> int:
  """How many models fit in one program: 1..``seeds``.

  ``memory_at``: number of models -> MiB. Measures 1 and 2 models, extrapolates linearly
  to 90 % of ``limit_mib`` (the data set and the allocator need the rest), then confirms
  that count, halving it until it fits.
  """
  limit = 0.9 * limit_mib
  one = memory_at(1)
  if seeds == 1 or one > limit:
    return 1
  per_model = max(memory_at(2) - one, 1e-3)
  k = int(min(seeds, max(1, 1 + (limit - one) // per_model)))
  while k > 2 and memory_at(k) > limit:
    k //= 2
  return k


def program_memory(config):
  """models -> MiB: XLA's memory for ``config``'s training program (compile only)."""
  from vit_jax.training import program  # lazy, as in main: a bad flag fails first
  return lambda k: program.compiled_memory_mib(
      program.compile_train_step(_with_models(config, k))[0])


def _with_models(config, k: int):
  c = config.copy_and_resolve_references()
  c.parallel_seeds = k
  return c


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a for a in argv if a.startswith('--config.')]
  p = argparse.ArgumentParser(prog='python -m vit_jax.tools.compare',
                              description=__doc__.split('\n')[0])
  p.add_argument('--dataset', required=True, help="cifar10 | mnist | folder:/path | mnist_idx:/path")
  p.add_argument('--variants', default='vit,revvit,bdia,momentum')
  p.add_argument('--seeds', type=int, default=1)
  p.add_argument('--parallel-seeds', default='', metavar='K|auto',
                 help='at most K seeds in one program (default: all; auto: as many as fit)')
  p.add_argument('--workdir', required=True)
  p.add_argument('--target-acc', type=float, metavar='PCT',
                 help="the report's time-to-accuracy target (see python -m vit_jax.tools.report)")
  args = p.parse_args([a for a in argv if not a.startswith('--config.')])
  cli.setup_logging()
  names = args.variants.split(',')
  bad = [n for n in names if n not in variants.VARIANTS]
  if bad:
    p.error(f"--variants: {', '.join(bad)} unknown; choose from {', '.join(variants.VARIANTS)}")
  if args.seeds < 1:
    p.error('--seeds must be >= 1')
  per_program = args.parallel_seeds or str(args.seeds)
  if per_program != 'auto' and not (per_program.isdigit() and int(per_program) >= 1):
    p.error(f'--parallel-seeds={args.parallel_seeds}: expected a count >= 1 or auto')
  if any(o.split('=')[0] in ('--config.seed', '--config.parallel_seeds') for o in overrides):
    p.error('--config.seed and --config.parallel_seeds are set by --seeds and --parallel-seeds')
  if report.target_acc_error(args.target_acc):
    p.error(report.target_acc_error(args.target_acc))
  # Lazy, after the flags: a bad one fails before JAX loads.
  from vit_jax.tools import max_depth
  from vit_jax.training import checkpoints, config_checks, data, train_lib, workdir_lock
  try:
    run_config(names[0], args.dataset, 0, overrides)
  except ValueError as e:
    p.error(str(e))
  incomplete = []
  try:
    for name in names:
      base = run_config(name, args.dataset, 0, overrides)
      k = int(per_program) if per_program != 'auto' else fitting_seeds(
          args.seeds, program_memory(base), max_depth.memory_limit_mib()[0])
      if per_program == 'auto':
        print(f'{name}: {k} seeds fit in one program', flush=True)
      for first, n in seed_groups(args.seeds, k):
        config = run_config(name, args.dataset, first, overrides)
        config.parallel_seeds = n
        folder = f'seed{first}' if n == 1 else f'seeds{first}-{first + n - 1}'
        workdir = os.path.join(args.workdir, name, folder)
        if _finished(workdir, config):
          print(f'{workdir}: finished, skipped', flush=True)
          continue
        print(f'== {name}, seed{"s" if n > 1 else ""} {first}'
              f'{f"-{first + n - 1}" if n > 1 else ""} -> {workdir}', flush=True)
        try:
          train_lib.train_and_evaluate(config, workdir)
        except workdir_lock.WorkdirLocked as e:
          print(f'compare: skipped: {e}', file=sys.stderr, flush=True)
          incomplete.append(f'{workdir} (in use by another process)')
        except (train_lib.TrainingError, checkpoints.CheckpointError) as e:
          print(f'compare: error: {workdir}: {e}', file=sys.stderr, flush=True)
          incomplete.append(f'{workdir} (see its error above)')
  except (config_checks.ConfigError, data.DataError) as e:  # the same for every run
    p.exit(2, f'compare: error: {e}\n')
  except train_lib.Preempted as e:
    p.exit(75, f'compare: {e}\n')
  try:
    report.build_report([args.workdir], os.path.join(args.workdir, 'report'),
                        target_acc=args.target_acc)
    print(f"report: {os.path.join(args.workdir, 'report', 'results.md')}")
  except SystemExit:
    if not incomplete:  # with runs left unfinished there may be nothing to report yet
      raise
  if incomplete:
    p.exit(2, f'compare: error: {len(incomplete)} run(s) did not finish: '
              f'{"; ".join(incomplete)}; rerun when they are free or fixed\n')


if __name__ == '__main__':
  main()
