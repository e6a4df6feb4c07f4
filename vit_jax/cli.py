"""Command-line plumbing shared by train.py, verify and bench: flags, logging, errors."""
import logging
import sys

from absl import flags
from ml_collections import config_flags

# Errors that are the user's to fix: print one line, no traceback.
EXIT_ERROR, EXIT_PREEMPTED = 2, 75


def define_config_flag():
  config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py); override '
                                  'fields with --config.field=value.', lock_config=True)


def parse(argv, prog: str):
  """Parses absl flags; a bad flag or override is one line on stderr and exit 2."""
  logging.basicConfig(level=logging.INFO, format='%(message)s', stream=sys.stderr)
  for name in ('absl', 'jax._src.xla_bridge', 'orbax', 'jax._src.cache_key'):
    logging.getLogger(name).setLevel(logging.ERROR)
  try:
    flags.FLAGS(argv)
  except flags.Error as e:
    fail(prog, str(e).splitlines()[0])
  if flags.FLAGS.config is None:
    fail(prog, '--config is required, e.g. --config configs/vit_cifar10.py')
  return flags.FLAGS


def fail(prog: str, message: str, code: int = EXIT_ERROR):
  print(f'{prog}: error: {message}', file=sys.stderr)
  sys.exit(code)
