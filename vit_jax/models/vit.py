"""ViT for small data sets with a choice of stack: vit, remat, revvit, bdia, momentum.

Embedding (SPT, CLS token, position embedding, dropout) and head (LayerNorm, Linear on
the CLS token) are shared; only the stack differs (variants.py, reversible.py). The
blocks' parameters live in one pytree stacked on a leading depth axis, ``params['blocks']``,
so that the stack is a scan and the reversible engine can take the per-block slices.
"""
from typing import Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from vit_jax.models import fixed_order, layers, reversible, variants

_BRANCHES = {'block': layers.Block.__call__, 'attention': layers.Block.attention_branch,
             'mlp': layers.Block.mlp_branch}


class ViT(nn.Module):
  num_classes: int = 10
  patch_size: int = 4
  dim: int = 512
  depth: int = 6
  heads: int = 8
  dim_head: int = 64
  mlp_dim: int = 512
  dropout: float = 0.1
  emb_dropout: float = 0.1
  variant: str = 'vit'
  quant_bits: int = 9
  beta_bits: int = 3
  dtype: jnp.dtype = jnp.float32       # compute dtype; parameters and streams stay float32
  reversible_backprop: bool = True     # False: autodiff through the same forward (reference)

  @property
  def stream_dtype(self):
    """The residual streams' dtype: float32, or float64 for a float64 model."""
    return jnp.promote_types(jnp.float32, self.dtype)

  def block(self) -> layers.Block:
    return layers.Block(self.heads, self.dim_head, self.mlp_dim, self.dropout, self.dtype,
                        parent=None)

  @nn.compact
  def __call__(self, images, train: bool = False, probe: Optional[tuple] = None,
               gamma: Optional[jax.Array] = None):
    """Logits for ``images`` [B, H, W, C] (normalised floats).

    Training needs the 'dropout' PRNG stream (dropout and BDIA's γ). ``gamma`` [depth, B]
    (training, BDIA only) replaces the drawn γ with given ±1/2 values; block 0's is
    always 0 (parity with the original, whose γ comes from torch's generator). ``probe`` (train
    only, reversible variants; zeros from ``probe_like``) switches the probe on: the call
    then returns (logits, block inputs), and the gradient for ``probe`` is the block
    inputs the backward pass rebuilt (``reversible.reversible_stack``).
    """
    x = layers.ShiftedPatchEmbedding(self.dim, self.patch_size, self.dtype)(images)
    cls = self.param('cls_token', nn.initializers.normal(1.0), (1, 1, self.dim), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)).astype(x.dtype), x], 1)
    x = x + self.param('pos_embedding', nn.initializers.normal(1.0), (1, x.shape[1], self.dim),
                       jnp.float32)
    x = layers.Dropout(self.emb_dropout)(x, not train).astype(self.stream_dtype)

    block = self.block()
    params = self.param('blocks', lambda rng: jax.vmap(
        lambda k: block.init(k, x[:1])['params'])(jax.random.split(rng, self.depth)))
    variant = variants.make_variant(self.variant, self.quant_bits, self.beta_bits)
    keys, aux = self._block_randomness(variant, train, x.shape[0])
    if gamma is not None and aux is not None and train:
      aux = jnp.asarray(gamma, jnp.float32).reshape(aux.shape).at[0].set(0.0)

    def branch_fn(p, name, h_in, key):
      return block.apply({'params': p}, h_in, not train, rngs={'dropout': key},
                         method=_BRANCHES[name])

    streams = variant.init(x)
    block_inputs = None
    if train and variant.reversible and self.reversible_backprop:
      stack = reversible.reversible_stack(variant, branch_fn, with_probe=probe is not None)
      streams = stack(params, streams, aux, keys, probe)
      if probe is not None:
        streams, block_inputs = streams
    else:
      streams = reversible.autodiff_stack(variant, branch_fn, params, streams, aux, keys)

    features = variant.readout(streams)[:, 0]
    self.sow('intermediates', 'head_input', features)  # with mutable=['intermediates']
    x = fixed_order.LayerNorm(epsilon=layers.LN_EPS, dtype=self.dtype)(features)
    logits = layers.torch_linear(self.num_classes, x.shape[-1], dtype=self.dtype)(x)
    logits = logits.astype(self.stream_dtype)
    return (logits, block_inputs) if probe is not None else logits

  def _block_randomness(self, variant, train, batch):
    """Per-block dropout keys and BDIA's γ ∈ {±1/2} per sample and block (γ_0 = 0)."""
    if not train:
      keys = jax.random.split(jax.random.PRNGKey(0), self.depth)
      gamma = jnp.zeros((self.depth, batch, 1, 1), jnp.float32)
    else:
      rng = self.make_rng('dropout')
      keys = jax.random.split(jax.random.fold_in(rng, 0), self.depth)
      sign = jax.random.bernoulli(jax.random.fold_in(rng, 1), 0.5, (self.depth, batch, 1, 1))
      gamma = jnp.where(sign, 0.5, -0.5).at[0].set(0.0)
    return keys, (gamma if variant.stochastic_gamma else None)


def compute_dtype(bf16: bool):
  """The dtype of the model's matmuls and activations: bfloat16 or float32."""
  return jnp.bfloat16 if bf16 else jnp.float32


def from_config(model_config, bf16: bool = False, **overrides) -> ViT:
  """The ViT described by ``config.model`` (and ``config.bdia``/``momentum_net``)."""
  m = model_config
  kwargs = dict(num_classes=m.num_classes, patch_size=m.patch_size, dim=m.dim, depth=m.depth,
                heads=m.heads, dim_head=m.dim_head, mlp_dim=m.mlp_dim, dropout=m.dropout,
                emb_dropout=m.emb_dropout, variant=m.variant, dtype=compute_dtype(bf16))
  kwargs.update(overrides)
  return ViT(**kwargs)


def build(config) -> ViT:
  """The model for a full training config (its variant names the section of its grid bits)."""
  section = variants.make_variant(config.model.variant).config_section
  grid = {'quant_bits': config[section].quant_bits} if section else {}
  return from_config(config.model, config.bf16, beta_bits=config.momentum_net.beta_bits, **grid)


def probe_like(model: ViT, batch: int, image_size: int) -> tuple:
  """The probe: zeros shaped like the stacked block inputs, for ``ViT(..., probe=...)``."""
  tokens = (image_size // model.patch_size) ** 2 + 1
  n_streams = len(variants.make_variant(model.variant, model.quant_bits, model.beta_bits)
                  .init(jnp.zeros((1,))))
  return tuple(jnp.zeros((model.depth, batch, tokens, model.dim), model.stream_dtype)
               for _ in range(n_streams))
