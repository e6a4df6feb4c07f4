"""Trains a ViT variant: python train.py --config configs/bdia_cifar10.py --workdir runs/bdia

Override any config field: --config.num_epochs=10 --config.dataset=folder:/data/cifar10.
Rerunning the same command with the same --workdir resumes from the latest checkpoint;
raising --config.num_epochs extends a finished run. --fresh moves an existing run aside.

Exit status: 0 done; 2 bad input or a failure the message explains (nothing half-written);
75 (cli.EXIT_PREEMPTED) stopped by SIGTERM/Ctrl-C, rerun the same command to resume.
"""
import os
import signal
import sys


def _stop_while_starting(signum, _):
  """SIGTERM/SIGINT before the run has begun: nothing is written yet, so stop at once.

  Installed first, so that a signal during the seconds of imports, JAX's start-up and
  the early checks ends the process as one during training does (exit 75, one line,
  a workdir to resume). train_lib installs its own handler for the run itself.
  """
  sys.stderr.write(f'train.py: stopped: {signal.Signals(signum).name} received while starting, '
                   'before anything was written; rerun the same command to resume\n')
  sys.stderr.flush()
  os._exit(75)  # cli.EXIT_PREEMPTED; cli is not imported yet  pylint: disable=protected-access


for _signal in (signal.SIGTERM, signal.SIGINT):
  signal.signal(_signal, _stop_while_starting)

from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from vit_jax import cli  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

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


def _train(train_lib, args):
  """The run, under train_lib's handler (stop at a safe point, after saving)."""
  try:
    train_lib.train_and_evaluate(args.config, args.workdir, fresh=args.fresh)
  finally:  # the run has ended and written what it had to: default handling from here
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
    _train(train_lib, args)
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
