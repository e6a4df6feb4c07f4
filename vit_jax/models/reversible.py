"""One engine for every stack: plain autodiff, remat, and exact reversible backprop.

A ``Variant`` (variants.py) is a list of couplings a' = forward(a, b, h(b)) applied to
each block's streams. Block parameters are stacked on a leading depth axis, as are the
per-block PRNG keys and ``aux`` (BDIA's γ), so a stack is one ``lax.scan``.

Reversible backprop (``reversible_stack``), for blocks k = K-1 … 0, coupling by coupling
in reverse order, starting from the stack's output and its cotangent ḡ:

    h, vjp_h   = vjp(branch_k)(θ_k, b)        # b, the source stream, is known
    a          = inverse(a', b, h, side)      # rebuild the target stream
    ḡa, ḡb, ḡh = vjp(forward)(ḡa')            # elementwise: cheap to recompute
    θ̄_k, ḡb'   = vjp_h(ḡh)
    ḡb        += ḡb'

Each branch thus runs once in the forward pass and once forward and once backward in the
backward pass, as under remat; memory holds only the current streams, the side bits
(packed) and the keys, so it does not grow with depth but for the side bits.

The exact variants need h in the backward pass to reproduce the forward pass's bits
although XLA compiles it in another context (here: as the primal half of a VJP, fused
with other work). On XLA:CPU its matmuls and elementwise operations do; its large
reductions did not, so the branch sums in a fixed order (fixed_order.py).
``python -m vit_jax.tools.verify`` checks the result on the machine at hand.
"""
import jax
import jax.numpy as jnp

from vit_jax.models import quant


def _reorder(streams, order, inverse=False):
  if order is None:
    return tuple(streams)
  if inverse:
    order = tuple(order.index(i) for i in range(len(order)))
  return tuple(streams[i] for i in order)


def block_forward(variant, branch_fn, params, streams, aux, key):
  """Applies one block's couplings; returns (new streams, side info per coupling)."""
  streams, sides = list(streams), []
  for i, c in enumerate(variant.couplings):
    b = streams[c.source]
    hb = None if c.branch is None else branch_fn(params, c.branch, b, jax.random.fold_in(key, i))
    streams[c.target], side = c.forward(streams[c.target], b, hb, aux)
    sides.append(side)
  return _reorder(streams, variant.order), sides


def block_backward(variant, branch_fn, params, streams, grads, aux, key, sides):
  """Inverts one block and back-propagates through it (see the module docstring)."""
  streams = list(_reorder(streams, variant.order, inverse=True))
  grads = list(_reorder(grads, variant.order, inverse=True))
  grad_params = jax.tree.map(jnp.zeros_like, params)
  for i in reversed(range(len(variant.couplings))):
    c = variant.couplings[i]
    b = streams[c.source]
    k = jax.random.fold_in(key, i)
    hb = None
    if c.branch is not None:
      hb, vjp_branch = jax.vjp(lambda p, x: branch_fn(p, c.branch, x, k), params, b)
    a = c.inverse(streams[c.target], b, hb, aux, sides[i])
    _, vjp_forward = jax.vjp(lambda a, b, hb: c.forward(a, b, hb, aux)[0], a, b, hb)
    grad_a, grad_b, grad_hb = vjp_forward(grads[c.target])
    if c.branch is not None:
      grad_p, grad_b_branch = vjp_branch(grad_hb)
      grad_params = jax.tree.map(jnp.add, grad_params, grad_p)
      grad_b = grad_b + grad_b_branch
    streams[c.target], grads[c.target] = a, grad_a
    grads[c.source] = grads[c.source] + grad_b
  return tuple(streams), tuple(grads), grad_params


def autodiff_stack(variant, branch_fn, params, streams, aux, keys):
  """The stack for plain autodiff (each block under ``jax.checkpoint`` for remat)."""
  def step(streams, xs):
    p, a, k = xs
    return block_forward(variant, branch_fn, p, streams, a, k)[0], None
  if variant.remat:
    step = jax.checkpoint(step)
  # Plain autodiff unrolls the blocks: each block's activations then get their own
  # buffers instead of being copied into the scan's stacked ones (CPU, depth 6, batch 128:
  # 6.7 -> 5.3 s a step). remat stays a scan: unrolled, XLA:CPU kept everything anyway.
  return jax.lax.scan(step, tuple(streams), (params, aux, keys), unroll=not variant.remat)[0]


def _pack(variant, sides):
  return [quant.pack_bits(s, c.side_bits) if c.side_bits else None
          for c, s in zip(variant.couplings, sides)]


def _unpack(variant, packed, like):
  return [quant.unpack_bits(p, c.side_bits, like.shape[-1], like.dtype) if c.side_bits
          else None for c, p in zip(variant.couplings, packed)]


def reversible_stack(variant, branch_fn, with_probe=False):
  """A function (params, streams, aux, keys[, probe]) -> streams with reversible backprop.

  The probe, for checking the reconstruction: with ``with_probe=True`` the stack also
  returns every block's input streams from the forward pass (stacked: the *block
  inputs*), and the cotangent it returns for the zero argument ``probe`` is the same
  inputs as the backward pass rebuilt them (the *rebuilt inputs*). Differentiating with
  respect to ``probe`` compares the two inside the very program that trains
  (training/exactness.py). The probe costs O(depth) memory.
  """
  def forward_scan(params, streams, aux, keys):
    def step(streams, xs):
      p, a, k = xs
      new, sides = block_forward(variant, branch_fn, p, streams, a, k)
      return new, (_pack(variant, sides), streams if with_probe else None)
    return jax.lax.scan(step, tuple(streams), (params, aux, keys))

  @jax.custom_vjp
  def stack(params, streams, aux, keys, probe=None):
    out, (_, inputs) = forward_scan(params, streams, aux, keys)
    return (out, inputs) if with_probe else out

  def stack_fwd(params, streams, aux, keys, probe=None):
    out, (packed, inputs) = forward_scan(params, streams, aux, keys)
    return ((out, inputs) if with_probe else out), (params, out, aux, keys, packed)

  def stack_bwd(residuals, grad_out):
    params, out, aux, keys, packed = residuals
    grad_streams = grad_out[0] if with_probe else grad_out

    def step(carry, xs):
      streams, grads = carry
      p, a, k, pk = xs
      sides = _unpack(variant, pk, streams[0])
      streams, grads, grad_p = block_backward(variant, branch_fn, p, streams, grads, a, k, sides)
      return (streams, grads), (grad_p, streams if with_probe else None)

    (_, grad_in), (grad_params, rebuilt_inputs) = jax.lax.scan(
        step, (out, tuple(grad_streams)), (params, aux, keys, packed), reverse=True)
    return grad_params, grad_in, None, None, rebuilt_inputs

  stack.defvjp(stack_fwd, stack_bwd)
  return stack
