"""The jitted pieces of training: state, train chunk, eval step, all sharded over a mesh.

Data parallelism is a one-axis mesh ('data') over every local device: the batch is
sharded along it, parameters and optimizer state are replicated, and XLA inserts the
gradient all-reduce. One device is the same code with a mesh of one.

The whole data set sits on the device(s) as uint8. A step picks its batch from an epoch
permutation and augments it from keys derived from (seed, step) only, so a resumed run
sees exactly the batches, crops, flips, dropout masks and γ it would have seen.

Seed-parallel training (``config.parallel_seeds`` = N > 1) trains the models with seeds
``seed … seed+N-1`` in one program: every function here is written for one model and
``jax.vmap``-ed over a leading model axis (``over_models``), so model k draws exactly
what a single run with seed ``seed+k`` draws, and each kernel does N models' work.
"""
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vit_jax import data, model as model_lib


class TrainState(train_state.TrainState):
  pass


def make_mesh(devices=None) -> Mesh:
  return Mesh(np.asarray(devices or jax.devices()), ('data',))


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharded(mesh):
  return NamedSharding(mesh, P('data'))


def model_seeds(config) -> np.ndarray:
  """The seeds of the models one program trains: ``seed … seed+parallel_seeds-1``.

  One model (the default) has a scalar seed and unbatched state, exactly as before
  seed-parallel training existed; N > 1 models have every array on a leading model axis.
  """
  n = config.get('parallel_seeds', 1)
  seeds = config.seed + np.arange(n, dtype=np.int32)
  return seeds[0] if n == 1 else seeds


def over_models(fn, seeds, in_axes=0, per_vmap=None):
  """``fn`` for one model, or ``fn`` over the leading model axis of several.

  Arguments whose ``in_axes`` entry is 0 carry the model axis, None ones are shared.
  ``per_vmap`` (None: all) models are vectorised together by ``jax.vmap``; groups of
  them run one after another in the same program (``jax.lax.map``). The math is the same;
  the rounding of a vectorised matmul may differ.
  """
  if np.ndim(seeds) == 0:
    return fn
  if per_vmap is None or per_vmap >= np.size(seeds):
    return jax.vmap(fn, in_axes=in_axes)
  axes = in_axes if isinstance(in_axes, tuple) else None

  def mapped(*args):
    slots = [i for i, ax in enumerate(axes or (in_axes,) * len(args)) if ax is not None]

    def one(xs):  # one model's (or one vmapped group's) slices in their slots
      return fn(*[xs[slots.index(i)] if i in slots else a for i, a in enumerate(args)])
    batch = None if per_vmap == 1 else per_vmap  # 1: no vmap at all, plain per-model ops
    return jax.lax.map(one, [args[i] for i in slots], batch_size=batch)
  return mapped


def seeds_per_vmap(config, mesh):
  """How many of the run's models one ``jax.vmap`` covers (``config.vmap_seeds``).

  0 (auto): all of them on an accelerator, where N models' work in each kernel is what
  makes them fast; one at a time on a CPU, where XLA's batched matmuls run slower than
  its plain ones (CIFAR-10 preset, 3 vit models vmapped: 0.59x the per-model speed).
  """
  n = config.get('vmap_seeds', 0)
  if n:
    return n
  return 1 if mesh.devices.flat[0].platform == 'cpu' else None


def create_state(model, tx, image_shape, seed) -> TrainState:
  """Initial state of the model with ``seed`` (not jitted; wrap it in jit / eval_shape)."""
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *image_shape)))['params']
  state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  # A strongly typed step, like a restored one: fresh and resumed runs share one program.
  return state.replace(step=jnp.zeros((), jnp.int32))


def create_states(model, tx, image_shape, seeds) -> TrainState:
  """``create_state`` for every seed of ``model_seeds`` (stacked when there are several)."""
  return over_models(lambda s: create_state(model, tx, image_shape, s), seeds)(seeds)


def step_keys(seed, step):
  """(augmentation key, model key) for global step ``step``: a function of both only."""
  base = jax.random.fold_in(jax.random.PRNGKey(seed), step)
  return jax.random.fold_in(base, 0), jax.random.fold_in(base, 1)


@functools.partial(jax.jit, static_argnums=(2,))
def epoch_permutation(seed, epoch, n: int):
  """The order of the ``n`` training images in ``epoch`` for the model with ``seed``."""
  def one(seed):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 2**20), epoch)
    return jax.random.permutation(key, n)
  return over_models(one, seed)(seed)


def cross_entropy(logits, labels, num_classes: int, smoothing: float = 0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing) \
      if smoothing else jax.nn.one_hot(labels, num_classes)
  return optax.softmax_cross_entropy(logits, targets)


def make_train_step(model, ds_info: dict, config, mesh):
  """Returns ``train_step(state, sums, seed, live, images, labels, perm) -> (state, sums)``.

  One model's step (not jitted): ``images``/``labels`` are the whole training set,
  ``perm`` the epoch's permutation, ``sums`` running {loss, correct, count, nonfinite,
  first_bad} sums kept on the device. An update is applied only where the loss and
  gradients are finite and the model is ``live``; with ``on_nonfinite='stop'`` a model
  also stops updating after its first non-finite step of the epoch, so the state it
  keeps is the last good one. Non-finite steps are counted and the first one recorded.
  """
  batch = config.batch_size
  mean, std, flip = ds_info['mean'], ds_info['std'], ds_info['flip']
  pad = ds_info.get('crop_padding', 4)
  dtype = model_lib.compute_dtype(config.bf16)
  n_classes, smoothing = config.model.num_classes, config.label_smoothing
  steps_per_epoch = ds_info['steps_per_epoch']
  stop_on_nonfinite = config.on_nonfinite == 'stop'

  def loss_fn(params, x, y, key):
    logits = model.apply({'params': params}, x, train=True, rngs={'dropout': key})
    loss = cross_entropy(logits, y, n_classes, smoothing).mean()
    return loss, (logits.argmax(-1) == y).sum()

  def train_step(state, sums, seed, live, images, labels, perm):
    step = state.step
    idx = jax.lax.dynamic_slice(perm, ((step % steps_per_epoch) * batch,), (batch,))
    idx = jax.lax.with_sharding_constraint(idx, batch_sharded(mesh))
    aug_key, model_key = step_keys(seed, step)
    x = data.normalize(data.augment(aug_key, images[idx], flip=flip, pad=pad), mean, std, dtype)
    y = labels[idx]
    (loss, correct), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, x, y, model_key)
    finite = jnp.isfinite(loss) & jnp.all(jnp.array(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    apply = finite & live & ((sums['nonfinite'] == 0) if stop_on_nonfinite else True)
    # A cond, not a select between new and old state: for one model the update then runs
    # in place in the donated buffers instead of keeping a second copy of parameters and
    # moments (bdia at depth 24, batch 128: 1,263 -> 1,194 MiB compiled on the CPU).
    # Under vmap (several models) the cond becomes that select, per model.
    new_state = jax.lax.cond(apply, lambda s, g: s.apply_gradients(grads=g),
                             lambda s, g: s, state, grads)
    new_state = new_state.replace(step=step + 1)
    sums = dict(loss=sums['loss'] + jnp.where(apply, loss, 0.0) * batch,
                correct=sums['correct'] + jnp.where(apply, correct, 0),
                count=sums['count'] + jnp.where(apply, batch, 0),
                nonfinite=sums['nonfinite'] + (~finite).astype(jnp.int32),
                first_bad=jnp.where((~finite) & (sums['first_bad'] < 0), step,
                                    sums['first_bad']))
    return new_state, sums

  return train_step


def make_train_chunk(model, ds_info: dict, config, mesh, seeds):
  """Returns the jitted ``chunk(state, sums, seeds, live, images, labels, perm, n_steps)``.

  It runs ``n_steps`` training steps (a traced count: one program serves every chunk
  length, so where a chunk ends never changes a step's bits) of every model in one
  device loop, and returns (state, sums). The host dispatches a chunk and syncs once.
  ``state``, ``sums``, ``live`` and ``perm`` carry the model axis when there are
  several models (``seeds`` an array); the data set is shared by all of them.
  """
  step = over_models(make_train_step(model, ds_info, config, mesh), seeds,
                     in_axes=(0, 0, 0, 0, None, None, 0), per_vmap=seeds_per_vmap(config, mesh))

  def chunk(state, sums, seeds, live, images, labels, perm, n_steps):
    body = lambda _, carry: step(*carry, seeds, live, images, labels, perm)
    return jax.lax.fori_loop(0, n_steps, body, (state, sums))

  rep = replicated(mesh)
  return jax.jit(chunk, donate_argnums=(0, 1), out_shardings=(rep, rep))


def zero_sums(seeds=None):
  """Running sums of an epoch, for one model or (``seeds`` an array) for each model."""
  one = dict(loss=jnp.zeros((), jnp.float32), correct=jnp.zeros((), jnp.int32),
             count=jnp.zeros((), jnp.int32), nonfinite=jnp.zeros((), jnp.int32),
             first_bad=jnp.full((), -1, jnp.int32))
  return jax.tree.map(lambda a: jnp.full(np.shape(seeds), a), one)


def make_eval_step(model, ds_info: dict, config, mesh, seeds=None):
  """Returns ``eval_step(params, x_uint8, y, mask) -> (loss_sum, correct_sum)`` (per model)."""
  dtype = model_lib.compute_dtype(config.bf16)

  def eval_step(params, x, y, mask):
    x = data.normalize(x, ds_info['mean'], ds_info['std'], dtype)
    logits = model.apply({'params': params}, x, train=False)
    loss = cross_entropy(logits, y, config.model.num_classes)
    return (loss * mask).sum(), ((logits.argmax(-1) == y) * mask).sum()

  eval_step = over_models(eval_step, seeds, in_axes=(0, None, None, None))
  return jax.jit(eval_step, out_shardings=replicated(mesh))


def evaluate(eval_step, params, images: np.ndarray, labels: np.ndarray, batch: int,
             mesh) -> tuple[np.ndarray, np.ndarray]:
  """Mean loss and accuracy over the whole evaluation set (last batch padded, masked).

  Float64 NumPy scalars for one model, arrays with one entry per model for several.
  """
  n = len(labels)
  batch = max(mesh.size, batch - batch % mesh.size)
  loss_sum, correct = 0.0, 0
  sharding = batch_sharded(mesh)
  for start in range(0, n, batch):
    x, y = images[start:start + batch], labels[start:start + batch]
    pad = batch - len(y)
    mask = np.concatenate([np.ones(len(y), np.float32), np.zeros(pad, np.float32)])
    if pad:
      x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
      y = np.concatenate([y, np.zeros(pad, y.dtype)])
    l, c = eval_step(params, *jax.device_put((x, y, mask), sharding))
    loss_sum = loss_sum + np.asarray(l, np.float64)
    correct = correct + np.asarray(c, np.int64)
  return loss_sum / n, correct / n


def dataset_info(ds, config) -> dict[str, Any]:
  """Normalisation, augmentation and epoch length of ``ds`` as ``config`` trains on it.

  ``config.random_flip``: 'auto' flips where the data set allows it (not single-channel
  images such as digits), 'yes' or 'no' decide; ``config.random_crop_padding``: zero
  padding before the random crop (0: no crop).
  """
  flip = ds.flip if config.get('random_flip', 'auto') == 'auto' else config.random_flip == 'yes'
  return dict(mean=tuple(ds.mean), std=tuple(ds.std), flip=flip,
              crop_padding=config.get('random_crop_padding', 4),
              steps_per_epoch=len(ds.train_labels) // config.batch_size)
