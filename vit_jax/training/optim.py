"""Optimizers and learning-rate schedules: SET-Adam, AdamW, SGD.

SET-Adam is the PyTorch original's default optimizer. Per parameter tensor with N
elements (no weight decay of its own):

  m = b1*m + (1-b1)*g ;  v = b2*v + (1-b2)*g^2
  s = (sum v)^2 / (N * (sum v^2 + 1e-20))
  d = sqrt(s * v / (1 - b2^t) + eps)
  den = d - 0.5 * min(d)                       # min over the tensor
  theta <- theta - lr / (1 - b1^t) * m / den

The running ``v`` is never modified by ``s``; ``t`` counts from 1. Since ``d >= min(d)
>= sqrt(eps) > 0``, ``den >= d / 2 > 0`` and the update is always finite.

"Per tensor" means per tensor of the original model. Our blocks' parameters are stacked
on a leading depth axis (``params['blocks']``, see model.py), so there each block's
slice is its own tensor: the sums and the min run over the slice, not over the stack.

``make_optimizer(config, steps_per_epoch)`` builds the full chain from the config
fields ``optimizer``, ``learning_rate``, ``weight_decay``, ``sgd_momentum``,
``schedule``, ``warmup_epochs``, ``grad_clip_norm`` and ``num_epochs``.
"""
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ('setadam', 'adamw', 'sgd')
SCHEDULES = ('cosine', 'constant')
_S_EPS = 1e-20  # added to sum(v^2) in the scale factor s, as in the original


class ScaleBySetAdamState(NamedTuple):
  """State of ``scale_by_setadam``: step count and float32 first/second moments."""
  count: jax.Array  # int32 scalar, number of updates done so far
  mu: Any           # pytree like params, float32
  nu: Any           # pytree like params, float32


def _bias_correction(decay: float, t: jax.Array) -> jax.Array:
  """``1 - decay^t`` in float32 without cancellation.

  Rounding ``decay`` to float32 first (0.999 -> 0.99900001) would make
  ``1 - decay^t`` wrong by ~1e-5 relative at small t, so use
  ``-expm1(t * log(decay))`` with the log taken in double precision.
  """
  if decay == 0:
    return jnp.ones([], jnp.float32)
  return -jnp.expm1(t * jnp.float32(math.log(decay)))


def stacked_block_axes(path) -> int:
  """1 for a leaf under ``params['blocks']`` (one tensor per block on axis 0), else 0."""
  return int(any(getattr(k, 'key', None) == 'blocks' for k in path))


def _setadam_direction(m: jax.Array, v: jax.Array, c1: jax.Array, c2: jax.Array,
                       eps: float, stacked: int = 0) -> jax.Array:
  """``m / (1 - b1^t) / den`` for one tensor, given the updated float32 moments.

  ``c1 = 1 - b1^t`` and ``c2 = 1 - b2^t`` are the bias corrections. The first
  ``stacked`` axes index separate tensors: the statistics are taken over the others.
  """
  if m.size == 0:
    return m
  axes = tuple(range(stacked, v.ndim))
  n = math.prod(v.shape[stacked:])
  s = jnp.sum(v, axes, keepdims=True) ** 2 / (n * (jnp.sum(v * v, axes, keepdims=True) + _S_EPS))
  d = jnp.sqrt(s * v / c2 + eps)
  den = d - 0.5 * jnp.min(d, axes, keepdims=True)
  return m / c1 / den


def scale_by_setadam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                     stacked_axes=None) -> optax.GradientTransformation:
  """Rescales gradients by SET-Adam's per-tensor rule (without the learning rate).

  Produces ``m / (1 - b1^t) / den`` (see the module docstring); chain it with
  ``optax.scale_by_learning_rate`` to get the descent step. Moments are kept and all
  statistics computed in float32 whatever the gradients' dtype; the updates are cast
  back to each gradient's dtype.

  Args:
    b1: decay rate of the first moment.
    b2: decay rate of the second moment.
    eps: added under the square root of the denominator.
    stacked_axes: ``key path -> int``, the number of leading axes of that leaf that
      index separate tensors (``stacked_block_axes`` for this project's models); None:
      every leaf is one tensor.

  Returns:
    An ``optax.GradientTransformation`` with state ``ScaleBySetAdamState``.
  """

  def init_fn(params):
    zeros = lambda p: jnp.zeros(jnp.shape(p), jnp.float32)
    return ScaleBySetAdamState(count=jnp.zeros([], jnp.int32),
                               mu=jax.tree.map(zeros, params),
                               nu=jax.tree.map(zeros, params))

  def update_fn(updates, state, params=None):
    del params
    g32 = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), updates)
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, g32)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, g32)
    count = optax.safe_int32_increment(state.count)
    t = count.astype(jnp.float32)
    c1, c2 = _bias_correction(b1, t), _bias_correction(b2, t)
    stacked = stacked_axes or (lambda path: 0)
    new_updates = jax.tree_util.tree_map_with_path(
        lambda path, g, m, v: _setadam_direction(m, v, c1, c2, eps, stacked(path)).astype(
            jnp.asarray(g).dtype), updates, mu, nu)
    return new_updates, ScaleBySetAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def setadam(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
            eps: float = 1e-8, stacked_axes=None) -> optax.GradientTransformation:
  """SET-Adam: ``scale_by_setadam`` followed by ``-learning_rate``.

  Args:
    learning_rate: a float, or an optax schedule evaluated (as optax does) at the
      number of updates done *before* the current one (0 for the first update).
    b1, b2, eps, stacked_axes: see ``scale_by_setadam``.

  Returns:
    An ``optax.GradientTransformation`` whose updates are
    ``-lr_t / (1 - b1^t) * m / den``; add them to the parameters.
  """
  return optax.chain(scale_by_setadam(b1=b1, b2=b2, eps=eps, stacked_axes=stacked_axes),
                     optax.scale_by_learning_rate(learning_rate))


def _unknown(field: str, value: Any, choices) -> ValueError:
  return ValueError(f'config.{field}={value!r} is unknown; choose one of: '
                    f'{", ".join(choices)}')


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """Per-step learning rate: linear warmup, then cosine decay to 0 or constant.

  With ``W = round(warmup_epochs * steps_per_epoch)`` and
  ``T = num_epochs * steps_per_epoch``, the rate rises linearly from 0 at step 0 to
  ``learning_rate`` at step W (no warmup if W == 0), then either stays there
  (``schedule='constant'``) or follows ``lr * (1 + cos(pi * (step - W) / (T - W))) / 2``
  down to 0 at step T and stays 0 afterwards (``schedule='cosine'``).

  Note: this schedule advances every *iteration*, smoothly. The PyTorch original
  instead stepped its cosine schedule once per *epoch* with a ``step(epoch - 1)``
  quirk, so that epoch e (1-based) trained at ``lr * (1 + cos(pi * (e - 2) / T)) / 2``
  with T in epochs. We deliberately use the standard per-step cosine instead; over
  hundreds of epochs the two differ negligibly.

  Args:
    config: a config with ``learning_rate``, ``schedule``, ``warmup_epochs`` and
      ``num_epochs``.
    steps_per_epoch: optimizer updates per epoch (> 0).

  Returns:
    An ``optax.Schedule`` mapping the update count (0-based) to the learning rate.

  Raises:
    ValueError: for an unknown ``config.schedule`` or a non-positive
      ``steps_per_epoch``.
  """
  if config.schedule not in SCHEDULES:
    raise _unknown('schedule', config.schedule, SCHEDULES)
  if steps_per_epoch <= 0:
    raise ValueError(f'steps_per_epoch={steps_per_epoch} must be positive')
  lr = float(config.learning_rate)
  total = int(round(config.num_epochs * steps_per_epoch))
  warmup = max(0, int(round(config.warmup_epochs * steps_per_epoch)))
  if config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(lr, decay_steps=max(total - warmup, 1), alpha=0.0)
  else:
    main = optax.constant_schedule(lr)
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """The training optimizer described by ``config``.

  The chain is:

  1. ``optax.clip_by_global_norm(grad_clip_norm)`` if ``grad_clip_norm > 0``;
  2. one of
     * ``'setadam'``: ``scale_by_setadam`` (each block's slice of ``params['blocks']``
       a tensor of its own, as in the original's per-block modules), then (if
       ``weight_decay > 0``) decoupled weight decay
       ``optax.add_decayed_weights(weight_decay)`` added *after* the
       SET-Adam rescaling and *before* the learning-rate scaling, i.e. AdamW-style
       ``theta -= lr_t * (setadam_step + wd * theta)``. The original SET-Adam has no
       weight decay; with the default ``weight_decay=0`` this is exactly it.
     * ``'adamw'``: ``optax.adamw(schedule, weight_decay=weight_decay)``.
     * ``'sgd'``: ``optax.add_decayed_weights(weight_decay)`` (if > 0) before
       ``optax.sgd(schedule, momentum=sgd_momentum)``, i.e. coupled L2 added to the
       gradient before momentum, like ``torch.optim.SGD``.

  The learning rate follows ``learning_rate_schedule(config, steps_per_epoch)``.

  Raises:
    ValueError: for an unknown ``config.optimizer`` or ``config.schedule``.
  """
  if config.optimizer not in OPTIMIZERS:
    raise _unknown('optimizer', config.optimizer, OPTIMIZERS)
  schedule = learning_rate_schedule(config, steps_per_epoch)
  wd = float(config.weight_decay)
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
  if config.optimizer == 'setadam':
    parts.append(scale_by_setadam(stacked_axes=stacked_block_axes))
    if wd > 0:
      parts.append(optax.add_decayed_weights(wd))
    parts.append(optax.scale_by_learning_rate(schedule))
  elif config.optimizer == 'adamw':
    parts.append(optax.adamw(schedule, weight_decay=wd))
  else:  # sgd
    if wd > 0:
      parts.append(optax.add_decayed_weights(wd))
    parts.append(optax.sgd(schedule, momentum=float(config.sgd_momentum) or None))
  return optax.chain(*parts)
