"""Tests for vit_jax/optim.py: SET-Adam against a NumPy transcription, schedules, chains."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vit_jax.training import optim

SHAPES = {'w': (4, 3), 'b': (5,), 'blk': {'k': (2, 3, 2)}}


def _config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(
      optimizer='setadam', learning_rate=1e-3, weight_decay=0.0, sgd_momentum=0.9,
      schedule='cosine', warmup_epochs=0.0, grad_clip_norm=0.0, num_epochs=10))
  c.update(overrides)
  return c


def _numpy_setadam(params, grads_seq, lr_fn, b1=0.9, b2=0.999, eps=1e-8):
  """Float64 transcription of SET-Adam, one tensor at a time; returns the updates."""
  leaves, treedef = jax.tree.flatten(params)
  m = [np.zeros(np.shape(x)) for x in leaves]
  v = [np.zeros(np.shape(x)) for x in leaves]
  all_updates = []
  for step, grads in enumerate(grads_seq):
    t = step + 1
    lr = lr_fn(step)
    ups = []
    for i, g in enumerate(jax.tree.leaves(grads)):
      g = np.asarray(g, np.float64)
      m[i] = b1 * m[i] + (1 - b1) * g
      v[i] = b2 * v[i] + (1 - b2) * g ** 2
      s = np.sum(v[i]) ** 2 / (v[i].size * (np.sum(v[i] ** 2) + 1e-20))
      d = np.sqrt(s * v[i] / (1 - b2 ** t) + eps)
      den = d - 0.5 * np.min(d)
      ups.append(-lr / (1 - b1 ** t) * m[i] / den)
    all_updates.append(jax.tree.unflatten(treedef, ups))
  return all_updates


def _random_grads(num_steps, seed=0):
  """Random gradients; w[0, 0] is always 0 (so v has a zero entry), b is tiny."""
  rng = np.random.default_rng(seed)
  seq = []
  for _ in range(num_steps):
    g = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), SHAPES,
                     is_leaf=lambda x: isinstance(x, tuple))
    g['w'][0, 0] = 0.0
    g['b'] *= 1e-4  # v ~ 1e-8 ~ eps: exercises eps under the square root
    seq.append(g)
  return seq


def _params(dtype=jnp.float32):
  return jax.tree.map(lambda s: jnp.ones(s, dtype), SHAPES,
                      is_leaf=lambda x: isinstance(x, tuple))


@pytest.mark.parametrize('lr', [1e-2, 'schedule'])
def test_setadam_matches_numpy(lr):
  lr_fn = (lambda c: 0.01 * (c + 1)) if lr == 'schedule' else (lambda c: lr)
  tx = optim.setadam(lr_fn if lr == 'schedule' else lr)
  params = _params()
  grads_seq = _random_grads(5)
  expected = _numpy_setadam(params, grads_seq, lr_fn)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for step, (grads, want) in enumerate(zip(grads_seq, expected)):
    got, state = update(jax.tree.map(jnp.asarray, grads), state, params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert g.dtype == jnp.float32
      # Updates are O(lr); atol covers float32 cancellation in entries near 0.
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * lr_fn(step),
                                 err_msg=f'step {step}')
  assert float(got['w'][0, 0]) == 0.0  # zero gradient entry stays put


def test_setadam_takes_each_stacked_block_as_its_own_tensor():
  """params['blocks'] leaves stack one tensor per block; SET-Adam's statistics are per block."""
  rng = np.random.default_rng(1)
  grads_seq = [{'blocks': {'k': rng.normal(size=(3, 4, 2)).astype(np.float32)},
                'w': rng.normal(size=(4, 3)).astype(np.float32)} for _ in range(3)]
  grads_seq[0]['blocks']['k'][2] *= 100.0  # one block's gradients much larger than the others'
  params = {'blocks': {'k': jnp.ones((3, 4, 2))}, 'w': jnp.ones((4, 3))}
  unstacked = lambda t: {'k0': t['blocks']['k'][0], 'k1': t['blocks']['k'][1],
                         'k2': t['blocks']['k'][2], 'w': t['w']}
  expected = _numpy_setadam(unstacked(params), [unstacked(g) for g in grads_seq], lambda c: 1e-3)
  tx = optim.make_optimizer(_config(schedule='constant'), 5)
  whole = optim.setadam(1e-3)  # statistics over the whole stack: not the original
  state, state_whole = tx.init(params), whole.init(params)
  for grads, want in zip(grads_seq, expected):
    grads = jax.tree.map(jnp.asarray, grads)
    got, state = tx.update(grads, state, params)
    got_whole, state_whole = whole.update(grads, state_whole, params)
    for k, w in unstacked(jax.tree.map(np.asarray, got)).items():
      np.testing.assert_allclose(w, want[k], rtol=1e-5, atol=1e-9)
  assert not np.allclose(got_whole['blocks']['k'], got['blocks']['k'], rtol=1e-2)


def test_numpy_reference_is_sensitive():
  """The reference differs clearly from variants missing bias correction / min-shift."""
  params, grads_seq = _params(), _random_grads(3)
  ref = _numpy_setadam(params, grads_seq, lambda c: 1.0)[-1]
  g = np.asarray(grads_seq[0]['blk']['k'], np.float64)  # one step, one tensor
  m, v = 0.1 * g, 0.001 * g ** 2
  s = np.sum(v) ** 2 / (v.size * np.sum(v ** 2))
  d = np.sqrt(s * v / 0.001 + 1e-8)
  ref1 = -_numpy_setadam(params, grads_seq[:1], lambda c: 1.0)[0]['blk']['k']
  np.testing.assert_allclose(ref1, m / 0.1 / (d - 0.5 * d.min()), rtol=1e-12)
  assert not np.allclose(ref1, m / 0.1 / d, rtol=1e-3)   # without min-shift
  assert not np.allclose(ref1, m / (d - 0.5 * d.min()), rtol=1e-3)  # no bias corr.
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(ref))


def test_setadam_bf16_params_keep_float32_state():
  params = _params(jnp.bfloat16)
  tx = optim.setadam(1e-3)
  state = tx.init(params)
  grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), _random_grads(1)[0])
  updates, state = jax.jit(tx.update)(grads, state, params)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
  assert all(x.dtype == jnp.float32
             for x in jax.tree.leaves((state[0].mu, state[0].nu)))
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_warmup_then_cosine():
  spe = 10
  sched = optim.learning_rate_schedule(_config(warmup_epochs=2.0, num_epochs=10), spe)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(sched(10), 0.5e-3, rtol=1e-6)
  np.testing.assert_allclose(sched(20), 1e-3, rtol=1e-6)   # end of warmup: peak
  np.testing.assert_allclose(sched(60), 0.5e-3, rtol=1e-5)  # halfway through cosine
  assert abs(float(sched(100))) < 1e-9                       # end: ~0
  assert abs(float(sched(150))) < 1e-9                       # and stays there
  values = np.array([float(sched(i)) for i in range(20, 101)])
  assert np.all(np.diff(values) <= 1e-12)


def test_cosine_without_warmup():
  sched = optim.learning_rate_schedule(_config(num_epochs=4), 25)
  np.testing.assert_allclose(sched(0), 1e-3, rtol=1e-6)
  expected = 1e-3 * (1 + math.cos(math.pi * 30 / 100)) / 2
  np.testing.assert_allclose(sched(30), expected, rtol=1e-5)
  assert abs(float(sched(100))) < 1e-9


def test_constant_schedule():
  sched = optim.learning_rate_schedule(_config(schedule='constant'), 7)
  for step in [0, 1, 35, 70, 1000]:
    np.testing.assert_allclose(sched(step), 1e-3, rtol=1e-7)
  warm = optim.learning_rate_schedule(
      _config(schedule='constant', warmup_epochs=1.0), 7)
  np.testing.assert_allclose(warm(7), 1e-3, rtol=1e-7)
  np.testing.assert_allclose(warm(500), 1e-3, rtol=1e-7)
  assert float(warm(3)) < 1e-3


@pytest.mark.parametrize('name', optim.OPTIMIZERS)
@pytest.mark.parametrize('wd', [0.0, 0.1])
def test_make_optimizer_runs_under_jit(name, wd):
  tx = optim.make_optimizer(_config(optimizer=name, weight_decay=wd), 5)
  params = _params()
  grads = jax.tree.map(jnp.asarray, _random_grads(1)[0])

  @jax.jit
  def step(params, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  new_params, _ = step(params, tx.init(params))
  for old, new in zip(jax.tree.leaves(params), jax.tree.leaves(new_params)):
    assert new.shape == old.shape and new.dtype == old.dtype
    assert bool(jnp.all(jnp.isfinite(new)))
  assert not np.allclose(new_params['blk']['k'], params['blk']['k'])


def test_setadam_via_make_optimizer_equals_setadam():
  tx = optim.make_optimizer(_config(), 5)
  ref = optim.setadam(optim.learning_rate_schedule(_config(), 5))
  params, grads = _params(), jax.tree.map(jnp.asarray, _random_grads(1)[0])
  got, _ = tx.update(grads, tx.init(params), params)
  want, _ = ref.update(grads, ref.init(params), params)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_setadam_decoupled_weight_decay():
  """With wd, update = plain SET-Adam update - lr * wd * params."""
  params, grads = _params(), jax.tree.map(jnp.asarray, _random_grads(1)[0])
  cfg = _config(schedule='constant', weight_decay=0.1)
  tx, plain = optim.make_optimizer(cfg, 5), optim.setadam(1e-3)
  got, _ = tx.update(grads, tx.init(params), params)
  want, _ = plain.update(grads, plain.init(params), params)
  for g, w, p in zip(*map(jax.tree.leaves, (got, want, params))):
    np.testing.assert_allclose(g, w - 1e-3 * 0.1 * p, rtol=1e-6)


def test_grad_clipping_takes_effect():
  params = _params()
  grads = jax.tree.map(lambda x: 100.0 * jnp.asarray(x), _random_grads(1)[0])
  cfg = dict(optimizer='sgd', sgd_momentum=0.0, learning_rate=1.0, schedule='constant')
  clipped = optim.make_optimizer(_config(grad_clip_norm=0.5, **cfg), 5)
  plain = optim.make_optimizer(_config(**cfg), 5)
  up_c, _ = jax.jit(clipped.update)(grads, clipped.init(params), params)
  up_p, _ = jax.jit(plain.update)(grads, plain.init(params), params)
  np.testing.assert_allclose(optax.tree.norm(up_c), 0.5, rtol=1e-5)
  np.testing.assert_allclose(optax.tree.norm(up_p), optax.tree.norm(grads), rtol=1e-5)


@pytest.mark.parametrize('field,value', [('optimizer', 'adam'), ('schedule', 'linear')])
def test_unknown_names_raise(field, value):
  with pytest.raises(ValueError, match=f"config.{field}='{value}' is unknown"):
    optim.make_optimizer(_config(**{field: value}), 5)
  if field == 'schedule':
    with pytest.raises(ValueError, match='config.schedule'):
      optim.learning_rate_schedule(_config(schedule=value), 5)
