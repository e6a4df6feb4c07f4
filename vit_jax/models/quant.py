"""Exact arithmetic on the 2^-l grid, for the bit-exact reversible stacks.

A grid value x = c·2^-l (c an integer "code") is held in an ordinary float array. Scaling
by a power of two is exact, so every operation below is exact while |c| < 2^(p+1), p the
mantissa width (float32: |x| < 2^(24-l), 32768 for l = 9; float64: 2^(53-l)).

Why a float carry and not int32 codes: the same float functions then serve the forward
pass, the inverse, the VJP of each step (straight-through) and the float64 autodiff
reference, so there is one implementation to trust. ``guard`` turns any value outside the
exact range into NaN, so a run that leaves the range stops at the NaN check instead of
reconstructing wrong activations silently. A pre-norm ViT's residual stream stays in the
tens to hundreds, far below 32768.
"""
import functools

import jax
import jax.numpy as jnp


def exact_limit(dtype, bits: int) -> float:
  """Largest |x| for which codes on the 2^-bits grid are exact integers in ``dtype``."""
  return float(2.0 ** (jnp.finfo(dtype).nmant + 1 - bits))


@jax.custom_jvp
def _round_to_grid(u, scale):
  return jnp.round(u * scale) / scale  # round half to even, as everywhere in this file


@_round_to_grid.defjvp
def _round_to_grid_jvp(primals, tangents):
  u, scale = primals
  return _round_to_grid(u, scale), tangents[0]  # straight-through


def quantize(u: jax.Array, bits: int) -> jax.Array:
  """Q(u) = round(u·2^l)·2^-l with a straight-through gradient (dQ/du = 1)."""
  return _round_to_grid(u, jnp.asarray(2.0 ** bits, u.dtype))


def parity(x: jax.Array, bits: int) -> jax.Array:
  """s = c mod 2 of the code c = x·2^l, as 0/1 in x's dtype (no gradient)."""
  code = jax.lax.stop_gradient(x) * 2.0 ** bits
  return jnp.abs(jnp.fmod(code, 2.0))


def _codes(x: jax.Array, bits: int) -> jax.Array:
  """The integer codes x·2^l (int32, or int64 for float64 x): exact for grid values."""
  itype = jnp.int64 if x.dtype == jnp.float64 else jnp.int32
  return jnp.round(x * 2.0 ** bits).astype(itype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _shrink(x, bits, beta_bits):
  c = _codes(x, bits)
  return (c - (c >> beta_bits)).astype(x.dtype) * 2.0 ** -bits


@_shrink.defjvp
def _shrink_jvp(bits, beta_bits, primals, tangents):
  (x,), (t,) = primals, tangents
  return _shrink(x, bits, beta_bits), t * (1 - 2.0 ** -beta_bits)


def shrink(x: jax.Array, bits: int, beta_bits: int):
  """β̃(x) = (c - floor(c/2^m))·2^-l ≈ β·x for β = 1 - 2^-m, and the lost bits.

  Returns (β̃(x), r) with r = c mod 2^m in [0, 2^m): exactly the information the
  rounding discards, so ``unshrink`` can undo it. Integer arithmetic on the codes c
  (an arithmetic shift is floor division). The gradient is β (straight-through).
  """
  r = _codes(jax.lax.stop_gradient(x), bits) & (2 ** beta_bits - 1)
  return _shrink(x, bits, beta_bits), r.astype(x.dtype)


def unshrink(y: jax.Array, r: jax.Array, bits: int, beta_bits: int) -> jax.Array:
  """Inverse of ``shrink``: c = (2^m·c' - r) / (2^m - 1), an exact integer division.

  (Integers, not floats: XLA may turn a float division by 7 into a multiplication by
  1/7, which is not exact.)
  """
  c = _codes(y, bits)
  c = ((c << beta_bits) - r.astype(c.dtype)) // (2 ** beta_bits - 1)
  return c.astype(y.dtype) * 2.0 ** -bits


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def guard(x: jax.Array, bits: int) -> jax.Array:
  """x where every grid code is exactly representable, NaN elsewhere (see module doc).

  Its gradient is the identity: where x is out of range the loss is NaN anyway. (The
  gradient of ``where`` needs the mask, i.e. x itself, in the backward pass; XLA:CPU then
  recomputed momentum's whole inverse, bit unpacking and integer division included,
  inside two transposing copies that feed weight-gradient matmuls, twice per block.)
  """
  return jnp.where(jnp.abs(x) < exact_limit(x.dtype, bits), x, jnp.nan)


@guard.defjvp
def _guard_jvp(bits, primals, tangents):
  (x,), (t,) = primals, tangents
  return guard(x, bits), t


def pack_bits(values: jax.Array, width: int) -> jax.Array:
  """Packs non-negative integers < 2^width (any dtype) into uint8 bit planes.

  Returns uint8 [width, ..., ceil(last/8)]: 1/8 byte per element per bit.
  """
  codes = values.astype(jnp.uint8)
  planes = [(codes >> i) & 1 for i in range(width)]
  return jnp.stack([jnp.packbits(p, axis=-1) for p in planes])


def unpack_bits(packed: jax.Array, width: int, size: int, dtype) -> jax.Array:
  """Inverse of ``pack_bits``; ``size`` is the original last-axis length."""
  out = 0
  for i in range(width):
    out = out + (jnp.unpackbits(packed[i], axis=-1, count=size).astype(jnp.uint8) << i)
  return jnp.asarray(out).astype(dtype)
