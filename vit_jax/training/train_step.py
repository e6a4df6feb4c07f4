"""The training step: one model's update, and a jitted chunk of steps for every model.

The whole data set sits on the device(s) as uint8. A step picks its batch from an epoch
permutation and augments it from keys derived from (seed, step) only, so a resumed run
sees exactly the batches, crops, flips, dropout masks and γ it would have seen. Each
function is written for one model; ``parallel.over_models`` maps it over several.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from vit_jax.models import vit as model_lib
from vit_jax.training import data
from vit_jax.training.parallel import batch_sharded, over_models, replicated, seeds_per_vmap


class TrainState(train_state.TrainState):
  pass


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
