"""Trains a ViT variant: python train.py --config configs/bdia_cifar10.py --workdir runs/bdia

Override any config field: --config.num_epochs=10 --config.dataset=folder:/data/cifar10.
Rerunning the same command with the same --workdir resumes from the latest checkpoint;
raising --config.num_epochs extends a finished run. --fresh moves an existing run aside.

Exit status: 0 done; 2 bad input or a failure the message explains (nothing half-written);
75 (cli.EXIT_PREEMPTED) stopped by SIGTERM/Ctrl-C, rerun the same command to resume.
"""
import sys

from absl import flags

from vit_jax import cli

cli.define_config_flag()
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics.csv and summary.json go.')
flags.DEFINE_bool('fresh', False, 'Move an existing run in --workdir aside and start over.')


def _init_distributed(prog):
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.distributed.initialize()
  except Exception as e:  # pylint: disable=broad-except
    cli.fail(prog, f'config.distributed=True but jax.distributed.initialize() failed '
                   f'({" ".join(str(e).split())[:200]}): launch one process per host under '
                   'a cluster launcher (SLURM, Cloud TPU, ...) or set --config.distributed=False')


def main(argv):
  prog = 'train.py'
  args = cli.parse(argv, prog)
  if not args.workdir:
    cli.fail(prog, '--workdir is required (a folder for checkpoints and metrics)')
  if args.config.get('distributed'):
    _init_distributed(prog)  # before anything else touches JAX
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax import data, validate, workdir_lock  # pylint: disable=g-import-not-at-top
  try:  # Before the heavier imports: a bad value is reported in about a second.
    validate.check_config(args.config)
    validate.check_workdir(args.config, args.workdir, args.fresh)
    if not args.config.get('distributed') or jax.process_index() == 0:
      workdir_lock.check(args.workdir)  # another run in it: refused (train_lib locks it)
  except validate.ConfigError as e:
    cli.fail(prog, str(e))
  from vit_jax import checkpoints, train_lib  # pylint: disable=g-import-not-at-top
  try:
    train_lib.train_and_evaluate(args.config, args.workdir, fresh=args.fresh)
  except train_lib.Preempted as e:
    cli.fail(prog, str(e), cli.EXIT_PREEMPTED, label='stopped')
  except KeyboardInterrupt:  # Ctrl-C outside train_and_evaluate's handlers
    cli.fail(prog, 'interrupted; rerun the same command to resume', cli.EXIT_PREEMPTED,
             label='stopped')
  except (validate.ConfigError, data.DataError, train_lib.TrainingError,
          checkpoints.CheckpointError) as e:
    cli.fail(prog, str(e))
  except OSError as e:  # e.g. disk full while writing metrics.csv or summary.json
    cli.fail(prog, f'{e.strerror or e} ({e.filename or "I/O"}); fix it and rerun the same '
                   'command to resume')


if __name__ == '__main__':
  main(sys.argv)
