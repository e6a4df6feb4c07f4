"""The five stacks, each written as a forward map and its inverse.

A stack carries a tuple of *streams* (arrays shaped like the token embeddings). Every
block applies a short sequence of additive couplings; a coupling updates one stream
(``target``, a) from another (``source``, b) through a residual branch of the block:

    a' = forward(a, b, h(b))          a = inverse(a', b, h(b), side)

Since b is unchanged, h(b) can be recomputed in the backward pass, and a is rebuilt from
a'. ``side`` is whatever ``forward`` had to discard to stay on its grid (a few bits per
element). ``reversible.py`` holds the one engine that runs any such list of couplings.
"""
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from vit_jax.models import quant

VARIANTS = ('vit', 'remat', 'revvit', 'bdia', 'momentum')


class Coupling(NamedTuple):
  target: int                    # the stream updated
  source: int                    # the stream the branch reads
  branch: Optional[str]          # 'block' (h), 'attention' (F), 'mlp' (G) or None
  forward: Callable[..., Any]    # (a, b, hb, aux) -> (a', side)
  inverse: Optional[Callable[..., Any]] = None  # (a', b, hb, aux, side) -> a
  side_bits: int = 0             # width of ``side`` (non-negative integers), 0 = none


class Variant(NamedTuple):
  name: str
  couplings: tuple
  init: Callable[[jax.Array], tuple]       # embedding -> streams
  readout: Callable[[tuple], jax.Array]    # streams -> features for the head
  order: Optional[tuple] = None            # relabel the streams after each block
  reversible: bool = False                 # train with the custom-VJP engine
  remat: bool = False                      # autodiff with each block rematerialised
  stochastic_gamma: bool = False           # needs per-sample, per-block γ (BDIA)
  exact: bool = False                      # rebuilds every activation bit for bit
  config_section: Optional[str] = None     # the config section with its quant_bits


def _residual(a, b, hb, aux):
  return a + hb, None


def _plain(name, remat=False):
  """x_{k+1} = x_k + h_k(x_k): one stream, trained by autodiff (not invertible)."""
  return Variant(name, (Coupling(0, 0, 'block', _residual),), lambda x: (x,),
                 lambda s: s[0], remat=remat)


def _revvit():
  """RevViT (Mangalam et al., CVPR 2022), two streams, plain float arithmetic.

      Y1 = X1 + F(X2)           X2 = Y2 - G(Y1)
      Y2 = X2 + G(Y1)           X1 = Y1 - F(X2)

  F = attention branch, G = MLP branch; both streams start as the embedding and the
  head reads them concatenated. Float rounding makes the inverse approximate (drift of
  a few ulps per block), which the gradient tolerates.
  """
  add = lambda a, b, hb, aux: (a + hb, None)
  sub = lambda a_new, b, hb, aux, side: a_new - hb
  return Variant('revvit', (Coupling(0, 1, 'attention', add, sub),
                            Coupling(1, 0, 'mlp', add, sub)),
                 lambda x: (x, x), lambda s: jnp.concatenate(s, axis=-1), reversible=True)


def _bdia(bits):
  """BDIA (arXiv 2407.09093) on the 2^-l grid; streams (x_{k-1}, x_k).

      x_{k+1} = γ_k·(x_{k-1} + s_{k-1}·2^-l) + Q[(1-γ_k)·x_k + (1+γ_k)·h_k(x_k)]
      x_{k-1} = (x_{k+1} - Q[(1-γ_k)·x_k + (1+γ_k)·h_k(x_k)]) / γ_k - s_{k-1}·2^-l

  s_{k-1} = parity of the code x_{k-1}·2^l (the side bit, 1 per element), so that
  x_{k-1} + s·2^-l has an even code and γ = ±1/2 keeps it on the grid: every term is
  exact. γ_k = ±1/2 per sample and block in training, 0 at evaluation. Block 0 always
  has γ = 0 (x_1 = x_0 + Q[h_0(x_0)], since x_0 is on the grid) and both streams start
  as x_0 = Q(embedding), so its inverse returns the source stream.
  """
  def forward(a, b, hb, gamma):
    s = quant.parity(a, bits)
    out = gamma * (a + s * 2.0 ** -bits) + quant.quantize((1 - gamma) * b + (1 + gamma) * hb, bits)
    return quant.guard(out, bits), s

  def inverse(a_new, b, hb, gamma, s):
    q = quant.quantize((1 - gamma) * b + (1 + gamma) * hb, bits)
    safe = jnp.where(gamma == 0, 1.0, gamma)
    return jnp.where(gamma == 0, b, (a_new - q) / safe - s * 2.0 ** -bits)

  # The update leaves (x_{k+1}, x_k); ``order`` relabels it (x_k, x_{k+1}) for block k+1.
  return Variant('bdia', (Coupling(0, 1, 'block', forward, inverse, side_bits=1),),
                 lambda x: (quant.quantize(x, bits),) * 2, lambda s: s[1],
                 order=(1, 0), reversible=True, stochastic_gamma=True, exact=True,
                 config_section='bdia')


def _momentum(bits, beta_bits):
  """Momentum ViT (Sander et al., ICML 2021), exact on the 2^-l grid; streams (x, v).

      v_{k+1} = β̃(v_k) + Q[(1-β)·h_k(x_k)]     v_k = β̃⁻¹(v_{k+1} - Q[(1-β)·h_k(x_k)], r_k)
      x_{k+1} = x_k + v_{k+1}                  x_k = x_{k+1} - v_{k+1}

  β = 1 - 2^-m. β̃(v) = (c - floor(c/2^m))·2^-l for the code c = v·2^l is β·v rounded
  down to the grid; the m discarded bits r_k = c mod 2^m are the side information
  (m bits per element per block, packed, 3 for the default β = 7/8). v_0 = 0,
  x_0 = Q(embedding). The velocity is guarded to |c| < 2^(p+1-m) so 2^m·c stays exact.
  """
  beta = 1 - 2.0 ** -beta_bits

  def v_forward(v, x, hx, aux):
    shrunk, r = quant.shrink(v, bits, beta_bits)
    return quant.guard(shrunk + quant.quantize((1 - beta) * hx, bits), bits + beta_bits), r

  def v_inverse(v_new, x, hx, aux, r):
    return quant.unshrink(v_new - quant.quantize((1 - beta) * hx, bits), r, bits, beta_bits)

  def x_forward(x, v, _, aux):
    return quant.guard(x + v, bits), None

  def x_inverse(x_new, v, _, aux, side):
    return x_new - v

  return Variant('momentum', (Coupling(1, 0, 'block', v_forward, v_inverse, beta_bits),
                              Coupling(0, 1, None, x_forward, x_inverse)),
                 lambda x: (quant.quantize(x, bits), jnp.zeros_like(x)), lambda s: s[0],
                 reversible=True, exact=True, config_section='momentum_net')


def make_variant(name: str, quant_bits: int = 9, beta_bits: int = 3) -> Variant:
  """The stack called ``name``; see the module docstrings for each one's math."""
  if name == 'vit':
    return _plain('vit')
  if name == 'remat':
    return _plain('remat', remat=True)
  if name == 'revvit':
    return _revvit()
  if name == 'bdia':
    return _bdia(quant_bits)
  if name == 'momentum':
    return _momentum(quant_bits, beta_bits)
  raise ValueError(f"model.variant={name!r} is unknown; choose one of: {', '.join(VARIANTS)}")
