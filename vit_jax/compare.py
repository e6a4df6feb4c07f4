"""Train several variants with the same budget and seeds, then write the report.

    python -m vit_jax.compare --dataset cifar10 --variants vit,revvit,bdia,momentum \
        --seeds 3 --workdir runs/cmp [--config.x=y ...]

Each run goes to ``WORKDIR/<variant>/seed<k>`` and is an ordinary train.py run: a finished
run is skipped, an interrupted one resumes. The report (``python -m vit_jax.report``) is
written to ``WORKDIR/report``. A run whose workdir another process holds (``workdir_lock``)
is left to that process: one line says so, the other runs go on, the report is written,
and the exit status is 2 because the comparison is incomplete.
"""
import argparse
import os
import sys

from vit_jax import cli, presets, report, variants


def run_config(variant: str, dataset: str, seed: int, overrides: list[str]):
  """The preset for ``variant`` on ``dataset`` (MNIST-sized when the name says mnist)."""
  c = presets.preset(variant, 'mnist' if 'mnist' in dataset else 'cifar10')
  c.dataset, c.seed = dataset, seed
  presets.apply_overrides(c, overrides)
  return c


def _finished(workdir: str, config) -> bool:
  path = os.path.join(workdir, 'summary.json')
  if not os.path.exists(path):
    return False
  from vit_jax import metrics_io
  s = metrics_io.read_json(path)
  return bool(s.get('finished')) and s.get('epochs_completed', 0) >= config.num_epochs


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a for a in argv if a.startswith('--config.')]
  p = argparse.ArgumentParser(prog='python -m vit_jax.compare', description=__doc__.split('\n')[0])
  p.add_argument('--dataset', required=True, help="cifar10 | mnist | folder:/path | mnist_idx:/path")
  p.add_argument('--variants', default='vit,revvit,bdia,momentum')
  p.add_argument('--seeds', type=int, default=1)
  p.add_argument('--workdir', required=True)
  p.add_argument('--target-acc', type=float, metavar='PCT',
                 help="the report's time-to-accuracy target (see python -m vit_jax.report)")
  args = p.parse_args([a for a in argv if not a.startswith('--config.')])
  cli.setup_logging()
  names = args.variants.split(',')
  bad = [n for n in names if n not in variants.VARIANTS]
  if bad:
    p.error(f"--variants: {', '.join(bad)} unknown; choose from {', '.join(variants.VARIANTS)}")
  if args.seeds < 1:
    p.error('--seeds must be >= 1')
  if report.target_acc_error(args.target_acc):
    p.error(report.target_acc_error(args.target_acc))
  from vit_jax import checkpoints, data, train_lib, validate, workdir_lock
  try:
    run_config(names[0], args.dataset, 0, overrides)
  except ValueError as e:
    p.error(str(e))
  locked = []
  try:
    for seed in range(args.seeds):
      for name in names:
        config = run_config(name, args.dataset, seed, overrides)
        workdir = os.path.join(args.workdir, name, f'seed{seed}')
        if _finished(workdir, config):
          print(f'{workdir}: finished, skipped', flush=True)
          continue
        print(f'== {name}, seed {seed} -> {workdir}', flush=True)
        try:
          train_lib.train_and_evaluate(config, workdir)
        except workdir_lock.WorkdirLocked as e:
          print(f'compare: skipped: {e}', file=sys.stderr, flush=True)
          locked.append(workdir)
  except (validate.ConfigError, data.DataError, train_lib.TrainingError,
          checkpoints.CheckpointError) as e:
    p.exit(2, f'compare: error: {e}\n')
  except train_lib.Preempted as e:
    p.exit(75, f'compare: {e}\n')
  try:
    report.build_report([args.workdir], os.path.join(args.workdir, 'report'),
                        target_acc=args.target_acc)
    print(f"report: {os.path.join(args.workdir, 'report', 'results.md')}")
  except SystemExit:
    if not locked:  # with runs left to other processes there may be nothing to report yet
      raise
  if locked:
    p.exit(2, f'compare: error: {len(locked)} run(s) in use by another process were not '
              f'trained ({", ".join(locked)}); rerun when they are free\n')


if __name__ == '__main__':
  main()
