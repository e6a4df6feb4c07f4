"""Sums whose bits do not depend on how XLA compiles them: what makes h reproducible.

The exact stacks recompute each block's branch h in the backward pass and need the very
bits the forward pass produced, although XLA compiles the recomputation in another
context (next to h's VJP). On XLA:CPU the matmuls and elementwise ops of h gave the same
bits in both places; a ``reduce`` over more than about 3,000 rows did not (how XLA:CPU
compiles a large reduction depends on what shares the program with it). Measured (dim
512, batch 128, 8,320 rows): a LayerNorm computed alone and computed next to its VJP
differed in 1.0 M of 4.3 M outputs (by up to 7e-7), enough to move BDIA's quantizer
across a rounding boundary for about 100 elements per block at the CIFAR-10 preset.
Other backends (GPU: TF32, autotuned GEMMs, FMA contraction) may differ in other ways;
``python -m vit_jax.tools.verify`` checks a machine.

``tree_sum`` writes the order out: the last axis is zero-padded to a power of two and
halved, ``x[..., :n/2] + x[..., n/2:]``, until one element is left. These are
elementwise additions, which XLA never reassociates (no fast-math), so the result is
the same in every program. The cost is one padded pass over the data. Its derivative is
an ordinary ``jnp.sum`` (gradients need no particular bits).
"""
import jax
import jax.numpy as jnp
import flax.linen as nn


@jax.custom_jvp
def tree_sum(x: jax.Array) -> jax.Array:
  """Σ over the last axis in a fixed pairwise order; keeps the axis (size 1)."""
  n = x.shape[-1]
  width = 1 << max(n - 1, 0).bit_length()
  if width != n:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - n)])
  while x.shape[-1] > 1:
    half = x.shape[-1] // 2
    x = x[..., :half] + x[..., half:]
  return x


@tree_sum.defjvp
def _tree_sum_jvp(primals, tangents):
  return tree_sum(primals[0]), jnp.sum(tangents[0], axis=-1, keepdims=True)


def softmax(logits: jax.Array) -> jax.Array:
  """softmax over the last axis; the max is exact in any order, the sum is ``tree_sum``."""
  e = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
  return e / tree_sum(e)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis with fixed-order statistics.

  Same parameters ('scale', 'bias'), initialisation and arithmetic as ``flax.linen.LayerNorm``
  (statistics in at least float32, var = E[x²] - E[x]², clipped at 0), so checkpoints
  are interchangeable; only the order of the two sums is pinned.
  """
  epsilon: float = 1e-5
  dtype: jnp.dtype = None

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = tree_sum(xf) / d
    var = jnp.maximum(0.0, tree_sum(xf * xf) / d - mean * mean)
    scale = self.param('scale', nn.initializers.ones, (d,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (d,), jnp.float32)
    y = (xf - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype or xf.dtype)
