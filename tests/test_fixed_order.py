"""Tests for vit_jax/fixed_order.py: reductions whose bits do not depend on the program."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TRAINING_LEVEL
from vit_jax.models import fixed_order


@pytest.mark.parametrize('n', [1, 2, 5, 65, 512])
def test_tree_sum_is_a_sum_over_the_last_axis(n):
  x = jax.random.normal(jax.random.PRNGKey(n), (3, 4, n))
  s = fixed_order.tree_sum(x)
  assert s.shape == (3, 4, 1)
  np.testing.assert_allclose(s[..., 0], np.sum(np.asarray(x, np.float64), -1), rtol=1e-5, atol=1e-5)


def test_tree_sum_order_is_pairwise_halves():
  """Σ(1, 2^-24, 2^-24, 2^-24): left to right gives 1; (1 + 2^-24) + (2^-24 + 2^-24) = 1 + 2^-23."""
  eps = 2.0 ** -24
  x = jnp.asarray([1.0, eps, eps, eps], jnp.float32)
  assert float(fixed_order.tree_sum(x)[0]) == 1.0 + 2 * eps


def test_tree_sum_gradient_is_ones():
  g = jax.grad(lambda x: jnp.sum(fixed_order.tree_sum(x) ** 2))(jnp.arange(6.0).reshape(2, 3))
  np.testing.assert_array_equal(g, [[6, 6, 6], [24, 24, 24]])


def test_softmax_matches_jax():
  x = 5 * jax.random.normal(jax.random.PRNGKey(0), (4, 8, 65))
  np.testing.assert_allclose(fixed_order.softmax(x), jax.nn.softmax(x), rtol=2e-6, atol=1e-7)
  g = jax.grad(lambda x: jnp.sum(jnp.sin(fixed_order.softmax(x))))(x)
  g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(jax.nn.softmax(x))))(x)
  np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_layernorm_matches_flax_with_the_same_parameters(dtype):
  x = (3 * jax.random.normal(jax.random.PRNGKey(0), (2, 5, 64)) + 1).astype(dtype)
  ref = nn.LayerNorm(epsilon=1e-5, dtype=dtype)
  params = ref.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p + jax.random.uniform(jax.random.PRNGKey(2), p.shape), params)
  ours = fixed_order.LayerNorm(epsilon=1e-5, dtype=dtype)
  assert jax.tree.structure(ours.init(jax.random.PRNGKey(1), x)) == jax.tree.structure(params)
  y, y_ref = ours.apply(params, x), ref.apply(params, x)
  assert y.dtype == y_ref.dtype == dtype
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32),
                             rtol=tol, atol=tol)


def test_layernorm_bits_are_the_same_next_to_its_vjp():
  """The property the exact stacks need: h's bits do not depend on the rest of the program.

  8,320 rows is the CIFAR-10 preset's 128 x 65 tokens. There, ``flax.linen.LayerNorm``
  computed alone and in a program that also runs its VJP differed in 36,237 of 133,120
  outputs (XLA:CPU, jax 0.10.2; none below ~3,000 rows).
  """
  x = jax.random.normal(jax.random.PRNGKey(0), (8320, 16))
  ln = fixed_order.LayerNorm()
  params = ln.init(jax.random.PRNGKey(1), x)
  f = lambda p, x: ln.apply(p, x)
  barrier = jax.lax.optimization_barrier
  alone = lambda p, x: barrier(f(*barrier((p, x))))
  next_to_vjp = lambda p, x, g: (alone(p, x), jax.vjp(f, *barrier((p, x)))[1](g))
  as_trained = lambda fn, *args: jax.jit(fn).lower(*args).compile(TRAINING_LEVEL)(*args)
  y = as_trained(alone, params, x)
  y2, _ = as_trained(next_to_vjp, params, x, jnp.ones_like(y))
  assert int(jnp.sum(y != y2)) == 0
