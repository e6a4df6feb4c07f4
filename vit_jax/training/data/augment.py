"""On-device augmentation and normalisation: jitted, every random draw from one key."""
import functools

import jax
import jax.numpy as jnp

from vit_jax.training.data.dataset import DataError


@functools.partial(jax.jit, static_argnames=('flip', 'pad'))
def augment(key, images, *, flip: bool, pad: int = 4) -> jax.Array:
  """Random crop after ``pad`` zero padding, plus random horizontal flips if ``flip``.

  Args:
    key: PRNG key; all randomness comes from it (same key -> same output).
    images: [B, H, W, C], any dtype (kept).
    flip: flip each image left-right with probability 0.5.
    pad: zero padding on each side; crop offsets are uniform in [0, 2 * pad].

  Returns:
    [B, H, W, C] array of the input dtype.
  """
  images = jnp.asarray(images)
  b, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * pad + 1)
  crop = lambda x, o: jax.lax.dynamic_slice(x, (o[0], o[1], 0), (h, w, c))
  out = jax.vmap(crop)(padded, offsets)
  if flip:
    flips = jax.random.bernoulli(flip_key, 0.5, (b,))
    out = jnp.where(flips[:, None, None, None], out[:, :, ::-1], out)
  return out


@functools.partial(jax.jit, static_argnames=('dtype',))
def normalize(images_uint8, mean, std, dtype=jnp.float32) -> jax.Array:
  """Returns ``(x / 255 - mean) / std`` per channel (last axis), computed in float32."""
  x = jnp.asarray(images_uint8).astype(jnp.float32) / 255.0
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  if mean.shape != (x.shape[-1],) or std.shape != (x.shape[-1],):
    raise DataError(f'normalize: images have {x.shape[-1]} channels but mean/std have '
                    f'shapes {mean.shape}/{std.shape}')
  return ((x - mean) / std).astype(dtype)
