"""Tests for vit_jax/reversible.py: exact reconstruction, gradients, memory, training.

Compilation dominates on CPU (a tiny ViT train step compiles in ~5 s, mostly fixed cost
per program), so the checks share a few *merged* programs, each built once per module:

- ``exact_run``: one jitted program holding the probe train step of bdia and momentum at
  depths 1, 2, 6, 12 (float32) and 6 (bfloat16 compute), revvit at depth 12 and a
  deliberately broken bdia (merging saves ~40% of the compile time of separate programs);
- ``train_run``: the ordinary (probe-free) train step of all five variants plus the autodiff
  references of the three reversible ones, float32; reused for 3 SGD steps;
- ``f64_run``: the same gradients and references in float64;
- memory: one lower+compile per (variant, depth), nothing executed.

Reconstruction is read out of the real backward pass: with ``probe`` the model also
returns the forward's block inputs, and the gradient w.r.t. ``probe`` is what the
backward pass rebuilt (reversible.reversible_stack).
"""
import contextlib
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import BATCH, IMAGE, TRAINING_LEVEL, rel_err, tiny_model, tiny_params, xent
from vit_jax.models import variants, vit as model

EXACT = ('bdia', 'momentum')
REVERSIBLE = ('revvit', 'bdia', 'momentum')
DEPTHS = (1, 2, 6, 12)
GRAD_DEPTH = 3       # gradient and training checks: block 0 (γ = 0) and two γ = ±1/2 blocks
DROPOUT_KEY = 2
ROWS = 1024          # batch of the many-rows check: 1024 images x 5 tokens


@contextlib.contextmanager
def patched_variant(edit):
  """While tracing: every model builds ``edit(make_variant(...))`` instead of its stack."""
  real = variants.make_variant
  with mock.patch.object(variants, 'make_variant', lambda *a, **k: edit(real(*a, **k))):
    yield


def traced_with(edit, fn):
  """``fn`` traced under ``patched_variant(edit)`` (None: unchanged)."""
  if edit is None:
    return fn
  def wrapped(*args):
    with patched_variant(edit):
      return fn(*args)
  return wrapped


def autodiff(v):
  """The same stack and forward, differentiated by plain autodiff (the reference)."""
  return v._replace(reversible=False)


def off_by_one_inverse(v):
  """BDIA whose inverse is one grid step off: its reconstruction must be caught."""
  c, = v.couplings
  bad = c._replace(inverse=lambda *a: c.inverse(*a) + 2.0 ** -9)
  return v._replace(couplings=(bad,))


def probe_step(m, images, labels):
  """(params, probe) -> ((loss, forward block inputs), (param grads, rebuilt block inputs))."""
  key = jax.random.PRNGKey(DROPOUT_KEY)
  def loss(params, probe):
    logits, block_inputs = m.apply({'params': params}, images, train=True, probe=probe,
                                   rngs={'dropout': key})
    return xent(logits, labels), block_inputs
  return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)


def train_step(m, images, labels):
  """params -> (loss, grads): the ordinary training computation."""
  key = jax.random.PRNGKey(DROPOUT_KEY)
  return jax.value_and_grad(lambda p: xent(
      m.apply({'params': p}, images, train=True, rngs={'dropout': key}), labels))


# XLA's LLVM optimisation level changes neither the HLO passes nor the buffer assignment
# (compiled temp bytes were identical for all eight memory programs at levels 0 and default,
# jax 0.10.2) but halves CPU compile time. Used where a test compares two computations
# compiled alike (gradients vs their reference, training, memory); the exactness programs
# are compiled at training's level (conftest.TRAINING_LEVEL).
FAST = {'xla_backend_optimization_level': 0}


def merged(steps, args, compiler_options=None):
  """{name: fn} compiled as ONE program taking {name: args}."""
  fn = lambda args: {k: f(*args[k]) for k, f in steps.items()}
  return jax.jit(fn).lower(args).compile(compiler_options)


def run_merged(steps, args, compiler_options=None):
  """Runs {name: fn} on {name: args} as one program; NumPy results."""
  return jax.tree.map(np.asarray, merged(steps, args, compiler_options)(args))


def probe_args(m):
  return (tiny_params(m), model.probe_like(m, BATCH, IMAGE))


def mismatches(result):
  """Per stream, the number of block-input elements rebuilt differently from the forward."""
  (_, forward), (_, rebuilt) = result
  assert [f.shape for f in forward] == [r.shape for r in rebuilt]
  return [int(np.sum(f != r)) for f, r in zip(forward, rebuilt)]


# ------------------------------------------------------------------ shared programs
@pytest.fixture(scope='module')
def exact_run(tiny_batch):
  images, labels = tiny_batch
  many_rows = (jax.random.normal(jax.random.PRNGKey(3), (ROWS, IMAGE, IMAGE, 3)),
               jax.random.randint(jax.random.PRNGKey(4), (ROWS,), 0, 3))
  steps, args = {}, {}
  for v in EXACT:
    for d in DEPTHS:
      m = tiny_model(v, d)
      steps[f'{v}{d}'], args[f'{v}{d}'] = probe_step(m, images, labels), probe_args(m)
    # bfloat16 compute (streams stay float32) at one depth: the bf16 branch is the only
    # difference and depth 6 already chains five γ = ±1/2 blocks.
    m = tiny_model(v, 6, dtype=jnp.bfloat16)
    steps[v + '-bf16'], args[v + '-bf16'] = probe_step(m, images, labels), probe_args(m)
    # Many rows on a fine grid: XLA:CPU compiles a reduction over more than ~3k rows
    # differently next to its VJP, which the quantizer turns into grid steps (with
    # flax.linen.LayerNorm here: hundreds of mismatched elements; see fixed_order.py).
    m = tiny_model(v, 2, quant_bits=16)
    steps[v + '-rows'] = probe_step(m, *many_rows)
    args[v + '-rows'] = (tiny_params(m), model.probe_like(m, ROWS, IMAGE))
  m = tiny_model('revvit', 12)
  steps['revvit12'], args['revvit12'] = probe_step(m, images, labels), probe_args(m)
  m = tiny_model('bdia', 2)
  steps['broken'] = traced_with(off_by_one_inverse, probe_step(m, images, labels))
  args['broken'] = probe_args(m)
  return run_merged(steps, args, TRAINING_LEVEL)


# ------------------------------------------------------------------ exact reconstruction
@pytest.mark.parametrize('depth', DEPTHS)
@pytest.mark.parametrize('variant', EXACT)
def test_reconstruction_is_bit_exact_float32(exact_run, variant, depth):
  result = exact_run[f'{variant}{depth}']
  (loss, forward), _ = result
  assert np.isfinite(loss)
  assert forward[0].shape == (depth, BATCH, 5, 16) and len(forward) == 2
  assert mismatches(result) == [0, 0]
  if depth > 1:  # the blocks really change the streams (the comparison is not trivial)
    assert not all(np.array_equal(f[0], f[-1]) for f in forward)


@pytest.mark.parametrize('variant', EXACT)
def test_reconstruction_is_bit_exact_with_many_rows(exact_run, variant):
  """5,120 token rows and a 2^-16 grid: what tiny batches hide (see ``exact_run``)."""
  result = exact_run[variant + '-rows']
  assert result[0][1][0].shape == (2, ROWS, 5, 16)
  assert mismatches(result) == [0, 0]


@pytest.mark.parametrize('variant', EXACT)
def test_reconstruction_is_bit_exact_bf16(exact_run, variant):
  (loss, forward), _ = result = exact_run[variant + '-bf16']
  assert np.isfinite(loss) and forward[0].dtype == np.float32  # streams stay float32
  assert mismatches(result) == [0, 0]


def test_revvit_reconstruction_is_close_not_exact(exact_run):
  (_, forward), (_, rebuilt) = exact_run['revvit12']
  err = max(float(np.max(np.abs(f - r))) for f, r in zip(forward, rebuilt))
  print(f'\nrevvit depth 12: max |rebuilt - forward| = {err:.3g}, '
        f'mismatched elements {[int(np.sum(f != r)) for f, r in zip(forward, rebuilt)]}')
  assert err < 1e-4


def test_broken_inverse_is_detected(exact_run):
  """The exactness check can fail: an inverse one grid step off is reported."""
  bad = mismatches(exact_run['broken'])
  assert bad[0] > 0, bad
  (_, forward), (_, rebuilt) = exact_run['broken']
  assert np.abs(forward[0] - rebuilt[0]).max() >= 2.0 ** -9  # whole grid steps off


# ------------------------------------------------------------------ gradients
def _grad_programs(images, labels, dtype):
  steps, args = {}, {}
  for v in REVERSIBLE:
    m = tiny_model(v, GRAD_DEPTH, dtype=dtype)
    params = jax.tree.map(lambda a: a.astype(dtype), tiny_params(m))
    steps[v] = train_step(m, images, labels)
    steps[v + '/ref'] = traced_with(autodiff, train_step(m, images, labels))
    args[v] = args[v + '/ref'] = (params,)
  return steps, args


@pytest.fixture(scope='module')
def train_run(tiny_batch):
  """Float32 train steps of all variants (+ references); also the 3-step SGD runs."""
  images, labels = tiny_batch
  steps, args = _grad_programs(images, labels, jnp.float32)
  for v in ('vit', 'remat'):
    m = tiny_model(v, GRAD_DEPTH)
    steps[v], args[v] = train_step(m, images, labels), (tiny_params(m),)
  fn = merged(steps, args, FAST)
  first = jax.tree.map(np.asarray, fn(args))
  # 3 steps of plain SGD for every variant with the same program; a 4th call for the loss.
  opt = optax.sgd(0.1)
  params = {k: a[0] for k, a in args.items() if not k.endswith('/ref')}
  states = {k: opt.init(p) for k, p in params.items()}
  losses = {k: [] for k in params}
  for step in range(4):
    out = first if step == 0 else fn(args)
    for k in params:
      loss, grads = out[k]
      losses[k].append(float(loss))
      if step < 3:
        updates, states[k] = opt.update(grads, states[k], params[k])
        params[k] = optax.apply_updates(params[k], updates)
        args[k] = (params[k],)
        if k + '/ref' in args:
          args[k + '/ref'] = (params[k],)
  return first, losses, params


@pytest.fixture(scope='module')
def f64_run(tiny_batch):
  images, labels = tiny_batch
  with jax.enable_x64(True):
    steps, args = _grad_programs(images.astype(jnp.float64), labels, jnp.float64)
    return run_merged(steps, args, FAST)


def _leaf_errors(grads, ref):
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  return {jax.tree_util.keystr(k): rel_err(g, r) for (k, g), r in zip(flat, jax.tree.leaves(ref))}


@pytest.mark.parametrize('variant', REVERSIBLE)
def test_gradients_match_autodiff_float64(f64_run, variant):
  (loss, grads), (loss_ref, ref) = f64_run[variant], f64_run[variant + '/ref']
  assert jax.tree.leaves(grads)[0].dtype == np.float64
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)  # same forward computation
  errs = _leaf_errors(grads, ref)
  worst = max(errs, key=errs.get)
  print(f'\n{variant} float64: worst leaf {worst} rel err {errs[worst]:.2e}')
  assert errs[worst] <= 1e-10, (worst, errs[worst])
  assert all(np.linalg.norm(r) > 0 for r in jax.tree.leaves(ref))


@pytest.mark.parametrize('variant', REVERSIBLE)
def test_gradients_match_autodiff_float32(train_run, variant):
  # Two programs (custom VJP vs autodiff) compute the same forward with different fusion
  # and reduction order, so their float32 bits differ (~1e-7 relative); the quantized
  # stacks can then round the odd grid cell differently (a 2^-9 jump in one activation),
  # which moves gradients by ~1e-5..1e-4. A real VJP bug (a missing skip path, a wrong γ
  # or β factor, a stale stream) is O(0.1..1). Hence 1e-3, per leaf, relative norm.
  first, _, _ = train_run
  (loss, grads), (loss_ref, ref) = first[variant], first[variant + '/ref']
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
  errs = _leaf_errors(grads, ref)
  worst = max(errs, key=errs.get)
  print(f'\n{variant} float32: worst leaf {worst} rel err {errs[worst]:.2e}')
  assert errs[worst] <= 1e-3, (worst, errs[worst])


# ------------------------------------------------------------------ training
@pytest.mark.parametrize('variant', variants.VARIANTS)
def test_three_sgd_steps_train(train_run, variant):
  _, losses, params = train_run
  assert all(np.isfinite(losses[variant])), losses[variant]
  assert all(np.all(np.isfinite(np.asarray(l))) for l in jax.tree.leaves(params[variant]))
  assert losses[variant][-1] != losses[variant][0]
  # Same data, same dropout key every step: plain SGD on a tiny model goes downhill.
  assert losses[variant][-1] < losses[variant][0], losses[variant]


# ------------------------------------------------------------------ memory
MEM = dict(dim=32, batch=8, image=16)


def _temp_bytes(variant, depth):
  m = tiny_model(variant, depth, dim=MEM['dim'])
  images = jax.ShapeDtypeStruct((MEM['batch'], MEM['image'], MEM['image'], 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((MEM['batch'],), jnp.int32)
  params = jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x), images)['params']
  def grad_fn(p, x, y):
    return jax.grad(lambda p: xent(m.apply({'params': p}, x, train=True,
                                           rngs={'dropout': jax.random.PRNGKey(0)}), y))(p)
  compiled = jax.jit(grad_fn).lower(params, images, labels).compile(FAST)
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.fixture(scope='module')
def temp_bytes():
  out = {(v, d): _temp_bytes(v, d) for v in ('vit', 'revvit', 'bdia', 'momentum') for d in (4, 16)}
  print('\ncompiled temp bytes (dim 32, batch 8, 16x16 images, 17 tokens):')
  for v in ('vit', 'revvit', 'bdia', 'momentum'):
    a, b = out[v, 4], out[v, 16]
    print(f'  {v:9s} depth 4: {a / 2**20:7.2f} MiB  depth 16: {b / 2**20:7.2f} MiB  x{b / a:.2f}')
  return out


@pytest.mark.parametrize('variant', REVERSIBLE)
def test_reversible_memory_is_flat_in_depth(temp_bytes, variant):
  growth = temp_bytes[variant, 16] / temp_bytes[variant, 4]
  assert growth <= 1.3, growth


def test_plain_vit_memory_grows_with_depth(temp_bytes):
  growth = temp_bytes['vit', 16] / temp_bytes['vit', 4]
  assert growth >= 2.5, growth
  assert temp_bytes['vit', 16] > 2 * max(temp_bytes[v, 16] for v in REVERSIBLE)
