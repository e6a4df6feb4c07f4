"""Building blocks of ViT for small data sets (Lee et al. 2021): SPT, LSA and the block.

Initialisation follows the PyTorch original so that results are comparable:
``nn.Linear`` weights and biases ~ U(±1/sqrt(fan_in)), LayerNorm eps 1e-5, exact (erf)
GELU, LSA log-temperature initialised to log(dim_head^-0.5).

The block is written as its *residual branch*: ``Block`` returns h(x), everything the
block adds to x, so that every stack (plain, rematerialised, reversible) reuses exactly
the same function. ``attention_branch`` and ``mlp_branch`` are the two halves that
RevViT couples separately.
"""
import math

import jax
import jax.numpy as jnp
import flax.linen as nn

from vit_jax.models import fixed_order

LN_EPS = 1e-5


def torch_linear(features: int, fan_in: int, use_bias: bool = True, dtype=None,
                 name=None) -> nn.Dense:
  """A Dense layer initialised like PyTorch's ``nn.Linear``: U(±1/sqrt(fan_in))."""
  bound = fan_in ** -0.5
  uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)
  return nn.Dense(features, use_bias=use_bias, kernel_init=uniform, bias_init=uniform,
                  dtype=dtype, name=name)


def shift_image(images: jax.Array, dy: int, dx: int) -> jax.Array:
  """Moves image content by (dy, dx) pixels ([B, H, W, C]), filling with zeros."""
  h, w = images.shape[1:3]
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return padded[:, 1 - dy:1 - dy + h, 1 - dx:1 - dx + w, :]


def shifted_patches(images: jax.Array, patch_size: int) -> jax.Array:
  """SPT's input: the image and its four one-pixel shifts, cut into flat patches.

  Returns [B, (H/p)*(W/p), p*p*5C]; each patch vector is ordered (row, col, channel)
  as in the original's ``'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'``.
  """
  shifts = [(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0)]  # identity, right, left, down, up
  x = jnp.concatenate([shift_image(images, dy, dx) for dy, dx in shifts], axis=-1)
  b, h, w, c = x.shape
  p = patch_size
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


class Dropout(nn.Module):
  """Inverted dropout drawn from 8-bit random numbers: a quarter of ``nn.Dropout``'s PRNG work.

  ``nn.Dropout`` spends one 32-bit threefry draw per element: the 19 masks of a ViT-small
  forward pass at batch 128 took 1.45 s on 2 CPU cores, 0.25 s this way. The reversible
  stacks redraw every mask in the backward pass, so they gain most (bdia's CPU step:
  10.8 s -> 8.5 s; vit's did not change, see RESULTS.md). Here each 32-bit word yields four bytes; an element is dropped when its byte is
  below round(rate·256). The realised rate is therefore a multiple of 1/256 (0.1 becomes
  26/256 ≈ 0.1016), and kept values are scaled by 256/(256 − threshold) so E[y] = x.
  The mask depends only on the key and the shape: the same key gives the same mask,
  which is what the reversible backward pass relies on.
  """
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    threshold = round(self.rate * 256)
    if deterministic or threshold == 0:
      return x
    if threshold >= 256:
      return jnp.zeros_like(x)
    last = x.shape[-1]
    words = jax.random.bits(self.make_rng('dropout'), (*x.shape[:-1], math.ceil(last / 4)),
                            jnp.uint32)
    draws = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(*x.shape[:-1], -1)
    keep = draws[..., :last] >= threshold
    scale = jnp.asarray(256 / (256 - threshold), x.dtype)
    return jnp.where(keep, x * scale, jnp.zeros((), x.dtype))


class ShiftedPatchEmbedding(nn.Module):
  """SPT: shifted patches, LayerNorm, Linear to ``dim``."""
  dim: int
  patch_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    x = shifted_patches(images, self.patch_size)
    x = fixed_order.LayerNorm(epsilon=LN_EPS, dtype=self.dtype)(x)
    return torch_linear(self.dim, x.shape[-1], dtype=self.dtype)(x)


class LocalitySelfAttention(nn.Module):
  """LSA: multi-head attention with a learned temperature and no attention to self."""
  heads: int
  dim_head: int
  dropout: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool):
    dim, inner = x.shape[-1], self.heads * self.dim_head
    log_temp = self.param('temperature', nn.initializers.constant(jnp.log(self.dim_head ** -0.5)),
                          (), jnp.float32)
    qkv = torch_linear(3 * inner, dim, use_bias=False, dtype=self.dtype, name='to_qkv')(x)
    q, k, v = jnp.split(qkv.reshape(*x.shape[:-1], 3 * self.heads, self.dim_head), 3, axis=-2)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) * jnp.exp(log_temp).astype(q.dtype)
    n = x.shape[-2]
    logits = jnp.where(jnp.eye(n, dtype=bool), jnp.finfo(logits.dtype).min, logits)
    weights = fixed_order.softmax(logits.astype(jnp.float32)).astype(v.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(*x.shape[:-1], inner)
    if not (self.heads == 1 and self.dim_head == dim):
      out = torch_linear(dim, inner, dtype=self.dtype, name='to_out')(out)
    return Dropout(self.dropout)(out, deterministic)


class FeedForward(nn.Module):
  """Linear, exact GELU, dropout, Linear, dropout."""
  mlp_dim: int
  dropout: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool):
    dim = x.shape[-1]
    y = torch_linear(self.mlp_dim, dim, dtype=self.dtype)(x)
    y = Dropout(self.dropout)(nn.gelu(y, approximate=False), deterministic)
    y = torch_linear(dim, self.mlp_dim, dtype=self.dtype)(y)
    return Dropout(self.dropout)(y, deterministic)


class Block(nn.Module):
  """A pre-norm transformer block, as its residual branch h.

  The plain block is x + h(x) with h(x) = a + f(x + a), a = attn(LN(x)), f = mlp(LN(.)).
  Inputs are float32 (the residual stream); with ``dtype=bfloat16`` the branch computes
  in bf16 and returns float32.
  """
  heads: int
  dim_head: int
  mlp_dim: int
  dropout: float
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.attn_norm = fixed_order.LayerNorm(epsilon=LN_EPS, dtype=self.dtype)
    self.attn = LocalitySelfAttention(self.heads, self.dim_head, self.dropout, self.dtype)
    self.mlp_norm = fixed_order.LayerNorm(epsilon=LN_EPS, dtype=self.dtype)
    self.mlp = FeedForward(self.mlp_dim, self.dropout, self.dtype)

  def attention_branch(self, x, deterministic: bool = True):
    """F(x) = attn(LN(x))."""
    return self.attn(self.attn_norm(x), deterministic).astype(x.dtype)

  def mlp_branch(self, x, deterministic: bool = True):
    """G(x) = mlp(LN(x))."""
    return self.mlp(self.mlp_norm(x), deterministic).astype(x.dtype)

  def __call__(self, x, deterministic: bool = True):
    """h(x) = F(x) + G(x + F(x)): what one pre-norm block adds to its input."""
    a = self.attention_branch(x, deterministic)
    return a + self.mlp_branch(x + a, deterministic)
