"""Checks a config before anything is loaded or compiled: one clear line per problem.

Note on heads × dim_head: attention projects its heads·dim_head features back to
``dim`` (as in the PyTorch original), so any positive combination is a valid model;
only positivity is checked.
"""
import json
import math
import numbers
import os
import tempfile

import jax

from vit_jax.models import variants
from vit_jax.training import config_defaults, data
from vit_jax.training.optim import OPTIMIZERS, SCHEDULES
from vit_jax.training.run_control import UserError

# Fields that may change when a run is resumed; any other change means another run.
RESUMABLE_CHANGES = ('num_epochs', 'progress_bar', 'tensorboard', 'log_every_steps',
                     'steps_per_dispatch', 'vmap_seeds',
                     'checkpoint_every_epochs', 'checkpoint_every_steps', 'keep_checkpoints',
                     'exactness_check_every_steps', 'exactness_check_action', 'on_nonfinite',
                     'eval_batch_size',
                     'data_dir', 'distributed')


class ConfigError(UserError, ValueError):
  """A bad config value; the message names the field and the fix."""


def _number(config, field, kind=numbers.Real, positive=True, allow_zero=False):
  value = config
  for part in field.split('.'):
    value = value[part]
  want = 'an integer' if kind is numbers.Integral else 'a number'
  bound = ('>= 0' if allow_zero else '> 0') if positive else ''
  fix = f'set --config.{field} to {want} {bound}'.rstrip()
  if isinstance(value, bool) or not isinstance(value, kind):
    raise ConfigError(f'config.{field}={value!r} is not {want}; {fix}')
  if not math.isfinite(value):
    raise ConfigError(f'config.{field}={value!r} is not finite; {fix}')
  if positive and (value < 0 or (value == 0 and not allow_zero)):
    raise ConfigError(f'config.{field}={value!r} must be {bound}; {fix}')
  return value


def _choice(value, field, choices):
  if value not in choices:
    raise ConfigError(f"config.{field}={value!r} is unknown; choose one of: {', '.join(choices)}")


def check_config(config, num_devices: int | None = None) -> None:
  """Raises ConfigError for the first invalid field."""
  m = config.model
  _choice(m.variant, 'model.variant', variants.VARIANTS)
  _choice(config.optimizer, 'optimizer', OPTIMIZERS)
  _choice(config.schedule, 'schedule', SCHEDULES)
  _choice(config.on_nonfinite, 'on_nonfinite', ('stop', 'skip'))
  _choice(config.random_flip, 'random_flip', ('auto', 'yes', 'no'))
  _choice(config.exactness_check_action, 'exactness_check_action', ('warn', 'stop'))
  try:
    data.parse_spec(config.dataset)
  except data.DataError:
    raise ConfigError(f'config.dataset={config.dataset!r} is unknown; {data.SPEC_HELP}') from None
  for field in ('num_epochs', 'batch_size', 'eval_batch_size', 'model.image_size',
                'model.channels', 'model.num_classes', 'model.patch_size', 'model.dim',
                'model.depth', 'model.heads', 'model.dim_head', 'model.mlp_dim',
                'parallel_seeds'):
    _number(config, field, numbers.Integral)
  for field in ('checkpoint_every_epochs', 'checkpoint_every_steps', 'keep_checkpoints',
                'log_every_steps', 'exactness_check_every_steps', 'train_examples',
                'steps_per_dispatch', 'vmap_seeds', 'eval_examples', 'random_crop_padding',
                'train_per_class', 'eval_per_class', 'train_eval_examples'):
    _number(config, field, numbers.Integral, allow_zero=True)
  _number(config, 'learning_rate')
  _number(config, 'seed', numbers.Integral, allow_zero=True)
  for field in ('weight_decay', 'warmup_epochs', 'grad_clip_norm', 'label_smoothing',
                'model.dropout', 'model.emb_dropout', 'sgd_momentum'):
    _number(config, field, allow_zero=True)
  for field in ('model.dropout', 'model.emb_dropout', 'label_smoothing'):
    if _number(config, field, allow_zero=True) >= 1:
      raise ConfigError(f'config.{field} must be in [0, 1); set --config.{field}=0.1, for example')
  if m.image_size % m.patch_size:
    divisors = [str(d) for d in range(1, m.image_size + 1) if m.image_size % d == 0]
    raise ConfigError(f'config.model.patch_size={m.patch_size} does not divide '
                      f'model.image_size={m.image_size}; set --config.model.patch_size to one of '
                      f'{", ".join(divisors)}')
  for section in ('bdia', 'momentum_net'):
    bits = _number(config, f'{section}.quant_bits', numbers.Integral)
    if not 4 <= bits <= 16:
      raise ConfigError(f'config.{section}.quant_bits={bits} is outside the safe range 4..16: '
                        'fewer bits lose the activations, more shrink the exact float32 range '
                        '(|x| < 2^(24-bits)) below what activations reach')
  beta_bits = _number(config, 'momentum_net.beta_bits', numbers.Integral)
  if not 1 <= beta_bits <= 6:
    raise ConfigError(f'config.momentum_net.beta_bits={beta_bits} must be in 1..6 '
                      '(beta = 1 - 2^-bits, from 0.5 to 0.984)')
  n = num_devices or jax.device_count()
  if config.batch_size % n:
    raise ConfigError(f'config.batch_size={config.batch_size} is not divisible by the '
                      f'{n} devices; use a multiple of {n}')


def check_dataset_matches(config, ds) -> None:
  """The data set's image size, channels and classes must match config.model."""
  m = config.model
  for field, want in (('image_size', ds.image_size), ('channels', ds.channels),
                      ('num_classes', ds.num_classes)):
    if m[field] != want:
      raise ConfigError(f'config.model.{field}={m[field]} but data set {ds.name!r} has '
                        f'{want}; set --config.model.{field}={want} or use the matching preset')
  if config.batch_size > len(ds.train_labels):
    raise ConfigError(f'config.batch_size={config.batch_size} exceeds the '
                      f'{len(ds.train_labels)} training images')


def changed_fields(old: dict, new: dict, prefix='') -> list[str]:
  """Dotted names of fields that differ between two config dicts (JSON form)."""
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += changed_fields(a, b, f'{prefix}{key}.')
    elif a != b:
      out.append(f'{prefix}{key}')
  return out


def _with_defaults(old: dict, defaults: dict) -> dict:
  """``old`` with fields added to the library since it was written set to their defaults."""
  out = dict(old)
  for key, value in defaults.items():
    if key not in out:
      out[key] = value
    elif isinstance(value, dict) and isinstance(out[key], dict):
      out[key] = _with_defaults(out[key], value)
  return out


def run_changes(old: dict, config) -> list[str]:
  """Fields in which ``config`` describes another run than the saved config dict ``old``."""
  old = _with_defaults(old, config_defaults.get_config().to_dict())
  return [f for f in changed_fields(old, config.to_dict()) if f not in RESUMABLE_CHANGES]


def check_workdir(config, workdir: str, fresh: bool = False) -> None:
  """Read-only checks: ``workdir`` can be written and holds no other run (unless ``fresh``)."""
  parent = os.path.abspath(workdir)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ConfigError(f'workdir {workdir} cannot be created: {parent} is a file; '
                      'choose another --workdir')
  try:  # Creating and removing a probe leaves the workdir as it was.
    if jax.process_index() == 0:  # the process that writes (the others only read)
      tempfile.TemporaryDirectory(dir=parent).cleanup()
  except OSError as e:
    raise ConfigError(f'workdir {workdir} is not writable ({e.strerror} in {parent}); '
                      'choose another --workdir or fix its permissions') from e
  config_path = os.path.join(workdir, 'config.json')
  if fresh or not os.path.exists(config_path):
    return
  try:
    with open(config_path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f'{config_path} is unreadable ({e}); use another --workdir, or '
                      'rerun with --fresh to move the old run aside') from e
  changed = run_changes(old, config)
  if changed:
    raise ConfigError(
        f'workdir {workdir} holds a run with another config ({", ".join(changed[:4])}'
        f'{" ..." if len(changed) > 4 else ""} differ); nothing was changed. Use another '
        '--workdir, or rerun with --fresh to move the old run aside and start over')
