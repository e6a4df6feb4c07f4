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
import traceback


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

from absl import flags  # noqa: E402  (after the handler)

from vit_jax.tools import cli  # noqa: E402  (after the handler)
from vit_jax.training import multiprocess, run_control  # noqa: E402  (neither imports JAX)

cli.define_config_flag()
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics.csv and summary.json go.')
flags.DEFINE_bool('fresh', False, 'Move an existing run in --workdir aside and start over.')
flags.DEFINE_string('coordinator_address', None, 'With --config.distributed=True: host:port '
                    'of process 0 (default: $JAX_COORDINATOR_ADDRESS, or the cluster\'s).')
flags.DEFINE_integer('num_processes', None, 'With --config.distributed=True: how many '
                     'processes (one per host) run this command (default: the cluster\'s).')
flags.DEFINE_integer('process_id', None, 'With --config.distributed=True: this process, 0 to '
                     'num_processes - 1; 0 writes the files (default: the cluster\'s).')


def _init_distributed(prog, args):
  """Joins the run's other processes (the flags, else the environment: multiprocess.py)."""
  try:
    multiprocess.initialize(args.coordinator_address, args.num_processes, args.process_id)
  except Exception as e:  # pylint: disable=broad-except
    cli.fail(prog, f'config.distributed=True but jax.distributed.initialize() failed '
                   f'({" ".join(str(e).split())[:200]}): run one process per host with '
                   '--coordinator_address, --num_processes and --process_id, or under a '
                   'cluster launcher (SLURM, Cloud TPU, ...), or set --config.distributed=False')


def _train(train_lib, args, prog):
  """The run, under train_lib's handler (stop at a safe point, after saving)."""
  try:
    train_lib.train_and_evaluate(args.config, args.workdir, fresh=args.fresh)
  except Exception as e:  # pylint: disable=broad-except
    lost = multiprocess.active() and multiprocess.lost_peer(e)
    if lost:  # whatever the error type: the cause is elsewhere, and this process must not wait
      multiprocess.exit_now(prog, multiprocess.lost_peer_message(lost), cli.EXIT_PREEMPTED,
                            label='stopped')
    raise
  finally:  # the run has ended and written what it had to: default handling from here
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _fail(prog, message, code=cli.EXIT_ERROR, label='error'):
  """cli.fail; in a multi-process run without waiting for the others (multiprocess.py)."""
  if multiprocess.active():
    multiprocess.exit_now(prog, message, code, label)
  cli.fail(prog, message, code, label)


def main(argv):
  prog = 'train.py'
  args = cli.parse(argv, prog)
  if not args.workdir:
    cli.fail(prog, '--workdir is required (a folder for checkpoints and metrics)')
  if args.config.get('distributed'):
    _init_distributed(prog, args)  # before anything else touches JAX
  elif (args.coordinator_address, args.num_processes, args.process_id) != (None,) * 3:
    cli.fail(prog, '--coordinator_address, --num_processes and --process_id launch a '
                   'multi-process run: add --config.distributed=True')
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax.training import config_checks, workdir_lock  # pylint: disable=g-import-not-at-top
  try:  # Before the heavier imports: a bad value is reported in about a second.
    config_checks.check_config(args.config)
    config_checks.check_workdir(args.config, args.workdir, args.fresh)
    if jax.process_index() == 0:  # in a multi-process run only process 0 locks
      workdir_lock.check(args.workdir)  # another run in it: refused (train_lib locks it)
  except config_checks.ConfigError as e:
    _fail(prog, str(e))
  from vit_jax.training import train_lib  # pylint: disable=g-import-not-at-top
  try:
    _train(train_lib, args, prog)
  except train_lib.Preempted as e:
    _fail(prog, str(e), cli.EXIT_PREEMPTED, label='stopped')
  except KeyboardInterrupt:  # Ctrl-C outside train_and_evaluate's handlers
    _fail(prog, 'interrupted; rerun the same command to resume', cli.EXIT_PREEMPTED,
          label='stopped')
  except run_control.UserError as e:  # a config value, the data, a checkpoint: one line
    _fail(prog, str(e))
  except OSError as e:  # e.g. disk full while writing metrics.csv or summary.json
    _fail(prog, f'{e.strerror or e} ({e.filename or "I/O"}); fix it and rerun the same '
                'command to resume')
  except Exception:  # a bug: the traceback, and in a multi-process run no waiting either
    if not multiprocess.active():
      raise
    traceback.print_exc()
    _fail(prog, 'unexpected error (traceback above)', 1)


if __name__ == '__main__':
  main(sys.argv)
