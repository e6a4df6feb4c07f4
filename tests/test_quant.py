"""Tests for vit_jax/quant.py (exact grid arithmetic) and the exact couplings built on it.

Everything here is elementwise and eager: no model, nothing big to compile.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import quant, variants

L = 9               # grid 2^-9, the default quant_bits
STEP = 2.0 ** -L


def _grid(seed, shape, max_code, dtype=jnp.float32):
  """Random grid values c·2^-L with |c| <= max_code, both signs, negative odd codes included."""
  codes = np.random.default_rng(seed).integers(-max_code, max_code + 1, shape)
  codes.flat[:4] = [-1, -3, -max_code + (1 - max_code % 2), -5]  # negative odd codes for sure
  return jnp.asarray(codes.astype(np.float64) * STEP, dtype)


def _normal(seed, shape, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).normal(0, scale, shape), jnp.float32)


# ------------------------------------------------------------------ quantize
@pytest.mark.parametrize('bits', [L, 3])
def test_quantize_ties_round_half_to_even(bits):
  step = 2.0 ** -bits
  u = jnp.array([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, 0.49, 0.51, -0.51, 7.0], jnp.float32) * step
  want = np.array([0, 2, 2, 4, -0.0, -2, -2, 0, 1, -1, 7], np.float32) * step
  got = np.asarray(quant.quantize(u, bits))
  np.testing.assert_array_equal(got, want)
  # -0.5·2^-l rounds to -0 (sign kept), as jnp.round / IEEE round-half-even do.
  assert np.signbit(got[4]) and not np.signbit(got[0])


def test_quantize_gradient_is_straight_through():
  u = jnp.linspace(-3.0, 3.0, 37, dtype=jnp.float32) * 0.01
  g = jax.grad(lambda u: jnp.sum(quant.quantize(u, L) * jnp.arange(37.0)))(u)
  np.testing.assert_array_equal(g, np.arange(37.0))
  _, tangent = jax.jvp(lambda u: quant.quantize(u, L), (u,), (jnp.ones_like(u),))
  np.testing.assert_array_equal(tangent, np.ones(37))


def test_quantize_lands_on_grid_and_is_idempotent():
  u = _normal(0, (1000,), 50.0)
  q = quant.quantize(u, L)
  codes = np.asarray(q, np.float64) * 2 ** L
  np.testing.assert_array_equal(codes, np.round(codes))
  assert float(jnp.max(jnp.abs(q - u))) <= STEP / 2
  np.testing.assert_array_equal(quant.quantize(q, L), q)


# ------------------------------------------------------------------ parity
def test_parity_of_codes_including_negative_odd():
  codes = np.array([-7, -4, -3, -2, -1, 0, 1, 2, 3, 4, 32767, -32767], np.float32)
  got = quant.parity(jnp.asarray(codes) * STEP, L)
  np.testing.assert_array_equal(got, np.abs(codes) % 2)
  assert got.dtype == jnp.float32
  # No gradient flows through the side bit.
  g = jax.grad(lambda x: jnp.sum(quant.parity(x, L)))(jnp.asarray(codes) * STEP)
  np.testing.assert_array_equal(g, np.zeros_like(codes))


# ------------------------------------------------------------------ shrink / unshrink
@pytest.mark.parametrize('dtype,max_code', [(jnp.float32, 2 ** 20), (jnp.float64, 2 ** 40)])
@pytest.mark.parametrize('beta_bits', [1, 3])
def test_shrink_unshrink_round_trip(dtype, max_code, beta_bits):
  with jax.enable_x64(dtype == jnp.float64):
    x = _grid(1, (4, 5, 16), max_code, dtype)
    y, r = quant.shrink(x, L, beta_bits)
    assert y.dtype == x.dtype and r.dtype == x.dtype
    c = np.round(np.asarray(x, np.float64) * 2 ** L).astype(np.int64)
    m = 2 ** beta_bits
    # β̃(x) = (c - floor(c/2^m))·2^-l and r = c mod 2^m (floor semantics for negatives).
    np.testing.assert_array_equal(np.asarray(y, np.float64) * 2 ** L, c - np.floor_divide(c, m))
    np.testing.assert_array_equal(np.asarray(r), np.mod(c, m))
    assert np.all((np.asarray(r) >= 0) & (np.asarray(r) < m))
    np.testing.assert_array_equal(quant.unshrink(y, r, L, beta_bits), x)
    # A wrong side value must not round-trip (the test can fail).
    assert not np.array_equal(quant.unshrink(y, (r + 1) % m, L, beta_bits), x)


def test_shrink_gradient_is_beta():
  x = _grid(2, (3, 7), 1000)
  w = jnp.arange(21.0).reshape(3, 7)
  g = jax.grad(lambda x: jnp.sum(quant.shrink(x, L, 3)[0] * w))(x)
  np.testing.assert_array_equal(g, 0.875 * w)


# ------------------------------------------------------------------ guard
def test_guard_nans_values_at_or_over_the_exact_limit():
  limit = quant.exact_limit(jnp.float32, L)
  assert limit == 2.0 ** 15
  x = jnp.array([0.0, -1.5, limit - STEP, -(limit - STEP), limit, -limit, 2 * limit, jnp.inf],
                jnp.float32)
  got = np.asarray(quant.guard(x, L))
  np.testing.assert_array_equal(np.isnan(got), [0, 0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(got[:4], np.asarray(x[:4]))
  assert quant.exact_limit(jnp.float64, L) == 2.0 ** 44


# ------------------------------------------------------------------ pack / unpack
@pytest.mark.parametrize('width', [1, 3])
def test_pack_unpack_round_trip(width):
  shape = (2, 3, 13)  # last axis not a multiple of 8
  values = np.random.default_rng(width).integers(0, 2 ** width, shape)
  values[0, 0] = np.arange(13) % 2 ** width  # every value occurs
  packed = quant.pack_bits(jnp.asarray(values, jnp.float32), width)
  assert packed.dtype == jnp.uint8 and packed.shape == (width, 2, 3, 2)
  out = quant.unpack_bits(packed, width, 13, jnp.float32)
  assert out.dtype == jnp.float32 and out.shape == shape
  np.testing.assert_array_equal(out, values)


# ------------------------------------------------------------------ exact couplings
def test_bdia_coupling_inverts_exactly():
  coupling, = variants.make_variant('bdia', quant_bits=L).couplings
  shape = (6, 5, 16)
  a = _grid(3, shape, 20000)           # x_{k-1}: both signs, negative odd codes included
  b = _grid(4, shape, 20000)           # x_k
  hb = _normal(5, shape, 3.0)          # h_k(x_k): any float
  gamma = jnp.array([0.5, -0.5, 0.0, 0.5, -0.5, 0.0], jnp.float32).reshape(6, 1, 1)
  # γ = 0 only happens at block 0, where both streams are x_0: the inverse returns b.
  a = jnp.where(gamma == 0, b, a)
  assert int(jnp.sum(quant.parity(a, L))) > 0
  a_new, s = coupling.forward(a, b, hb, gamma)
  np.testing.assert_array_equal(s, quant.parity(a, L))
  codes = np.asarray(a_new, np.float64) * 2 ** L
  np.testing.assert_array_equal(codes, np.round(codes))           # stays on the grid
  np.testing.assert_array_equal(coupling.inverse(a_new, b, hb, gamma, s), a)
  # The documented formula, for γ = ±1/2:
  q = quant.quantize((1 - gamma) * b + (1 + gamma) * hb, L)
  np.testing.assert_array_equal(a_new, gamma * (a + s * STEP) + q)
  # A wrong side bit breaks it (the comparison can fail).
  bad = coupling.inverse(a_new, b, hb, gamma, 1 - s)
  assert int(jnp.sum(bad != a)) > 0


def test_momentum_couplings_invert_exactly():
  v_c, x_c = variants.make_variant('momentum', quant_bits=L, beta_bits=3).couplings
  shape = (4, 5, 16)
  x, v = _grid(6, shape, 2 ** 14), _grid(7, shape, 2 ** 12)
  hx = _normal(8, shape)
  v_new, r = v_c.forward(v, x, hx, None)
  x_new, _ = x_c.forward(x, v_new, None, None)
  np.testing.assert_array_equal(x_c.inverse(x_new, v_new, None, None, None), x)
  np.testing.assert_array_equal(v_c.inverse(v_new, x, hx, None, r), v)
  assert float(jnp.max(jnp.abs(v_new - (0.875 * v + 0.125 * hx)))) <= 2 * STEP
