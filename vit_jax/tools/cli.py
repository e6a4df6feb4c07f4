"""Command-line plumbing shared by train.py, verify and bench: flags, logging, errors."""
import logging
import os
import re
import sys

from absl import flags
from ml_collections import config_flags

from vit_jax.training.run_control import EXIT_ERROR, EXIT_PREEMPTED  # noqa: F401  (public here)


def define_config_flag():
  config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py); override '
                                  'fields with --config.field=value.', lock_config=True)


class _Formatter(logging.Formatter):
  """Info lines as they are; 'warning: ...' and 'error: ...' above that."""

  def format(self, record):
    text = super().format(record)
    return text if record.levelno < logging.WARNING else f'{record.levelname.lower()}: {text}'


def _unknown_field(prog, argv, error):
  """An override naming no field: say which one, and ml_collections' suggestion if any."""
  overrides = [a.split('=', 1)[0][len('--config.'):] for a in argv if a.startswith('--config.')]
  text = str(error.args[0] if error.args else error)
  found = re.search(r"'([\w.]+)", text)
  key = found.group(1) if found else text
  name = next((o for o in overrides if key in o.split('.')), key)
  near = re.search(r'Did you mean "([\w.]+)"', text)
  hint = f'did you mean --config.{name.rpartition(".")[0] + "." if "." in name else ""}' \
      f'{near.group(1)}? ' if near else ''
  fail(prog, f'--config.{name}: no such config field; {hint}the fields are listed in '
             'vit_jax/training/config_defaults.py')


_TYPE_ERRORS = ((r'invalid literal for int\(\)', 'an integer', 'e.g. 128'),
                (r'could not convert string to float', 'a number', 'e.g. 0.001'),
                (r'Non-boolean argument', 'a boolean', 'True or False'),
                (r'as a ConfigDict', 'no value: it is a group of fields', 'set them one by one'))


def _flag_error(text: str) -> str:
  """'flag --config.x=abc: invalid literal for int()' -> '--config.x=abc: the field takes...'."""
  found = re.match(r'flag (--config\.[\w.]+=.*?): (.*)$', text)
  if found:
    for pattern, want, example in _TYPE_ERRORS:
      if re.search(pattern, found.group(2)):
        return f'{found.group(1)}: the field takes {want} ({example})'
  return text


def _config_path(argv) -> str:
  path = '?'
  for i, a in enumerate(argv):  # the last one wins, as in absl
    if a.startswith('--config='):
      path = a.split('=', 1)[1]
    elif a == '--config' and i + 1 < len(argv):
      path = argv[i + 1]
  return path


def setup_logging():
  """Our messages on stderr, library chatter (absl, orbax, TensorFlow, matplotlib) silenced.

  Our loggers (``vit_jax.*``) speak from INFO up; other libraries only from WARNING up
  (the root logger's level), and those that warn about routine work not at all. A first
  run on a fresh machine is as quiet as any other: matplotlib, which TFDS imports, logs
  'generated new fontManager' at INFO when it builds its font cache.
  """
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(_Formatter('%(message)s'))
  logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)  # the CLI owns logging
  logging.getLogger('vit_jax').setLevel(logging.INFO)
  # TensorFlow (TFDS data only) prints C++ start-up chatter to stderr; keep it quiet.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  # matplotlib warns 'building the font cache; this may take a moment' when that is slow.
  for name in ('absl', 'jax._src.xla_bridge', 'orbax', 'jax._src.cache_key', 'matplotlib'):
    logging.getLogger(name).setLevel(logging.ERROR)


def parse(argv, prog: str, positional: bool = False):
  """Parses absl flags; a bad flag, override or config file is one line on stderr, exit 2.

  ``--help`` (``-h``, ``--helpfull``) prints the program's docstring and its flags, exit 0.
  Returns the flags, or with ``positional`` (flags, the arguments that are not flags).
  """
  setup_logging()
  if any(a in ('--help', '-h', '--helpfull', '-?') for a in argv[1:]):
    doc = (sys.modules['__main__'].__doc__ or '').strip()
    config = f"  --config: {flags.FLAGS['config'].help}" if 'config' in flags.FLAGS else ''
    print(f'{doc}\n\nflags:\n{config}\n{flags.FLAGS.main_module_help()}'.lstrip())
    sys.exit(0)
  try:
    rest = flags.FLAGS(argv)[1:]
    config = flags.FLAGS.config
    if config is not None:
      config.keys()  # a lazily loaded config file fails here
  except flags.Error as e:
    fail(prog, _flag_error(str(e).splitlines()[0]))
  except (AttributeError, KeyError) as e:  # ml_collections: override of a missing field
    _unknown_field(prog, argv, e)
  except Exception as e:  # pylint: disable=broad-except  (missing file, error in get_config)
    path = _config_path(argv)
    cause = e.__cause__ or e
    why = ' '.join(str(cause).split()) or type(cause).__name__
    errno_text = re.search(r'\[Errno \d+\] ([^:]+)', why)
    why = errno_text.group(1) if errno_text else why
    fail(prog, f'--config {path}: cannot load this config file ({why[:160]}); pass one of '
               'configs/*.py')
  if config is None:
    fail(prog, '--config is required, e.g. --config configs/vit_cifar10.py')
  return (flags.FLAGS, rest) if positional else flags.FLAGS


def fail(prog: str, message: str, code: int = EXIT_ERROR, label: str = 'error'):
  print(f'{prog}: {label}: {message}', file=sys.stderr)
  sys.exit(code)
