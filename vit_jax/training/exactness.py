"""The exactness check as a library: rebuilt activations and gradients from one program.

``verify`` runs it once on random data; training runs ``ExactnessGuard`` every N steps
(``config.exactness_check_every_steps``). The reconstruction is read out of the real
backward pass through the engine's probe: the forward pass returns the block inputs, and
the gradient of a zero ``probe`` argument is the inputs the backward pass rebuilt
(``models/reversible.py``, ``reversible_stack(with_probe=True)``).
"""
import logging

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import variants, vit as model_lib
from vit_jax.training import data, parallel, train_step
from vit_jax.training.run_control import TrainingError

log = logging.getLogger(__name__)


def _loss(model, params, images, labels, key, probe=None):
  out = model.apply({'params': params}, images, train=True, rngs={'dropout': key}, probe=probe)
  logits, block_inputs = out if probe is not None else (out, None)
  loss = train_step.cross_entropy(logits, labels, model.num_classes).mean()
  return loss, block_inputs


def reconstruction_and_grads(model, params, images, labels, key):
  """(mismatches [depth, streams], max |error| [depth, streams], gradients)."""
  probe = model_lib.probe_like(model, images.shape[0], images.shape[1])
  grad_fn = jax.grad(lambda p, pr: _loss(model, p, images, labels, key, pr), (0, 1), has_aux=True)
  (grads, rebuilt_inputs), block_inputs = grad_fn(params, probe)
  pairs = list(zip(block_inputs, rebuilt_inputs))
  mismatches = jnp.stack([jnp.sum(f != r, axis=(1, 2, 3)) for f, r in pairs], 1)
  errors = jnp.stack([jnp.max(jnp.abs(f - r), axis=(1, 2, 3)) for f, r in pairs], 1)
  return mismatches, errors, grads


def reference_grads(model, params, images, labels, key):
  """Gradients by plain autodiff through the identical forward pass."""
  ref = model.clone(reversible_backprop=False)
  return jax.grad(lambda p: _loss(ref, p, images, labels, key)[0])(params)


def relative_errors(grads, ref) -> dict[str, float]:
  """‖g - g_ref‖ / ‖g_ref‖ per parameter leaf, keyed by its path."""
  flat, _ = jax.tree_util.tree_flatten_with_path(grads)
  flat_ref = jax.tree.leaves(ref)
  out = {}
  for (path, g), r in zip(flat, flat_ref):
    g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
    out[jax.tree_util.keystr(path)] = float(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-30))
  return out


class ExactnessGuard:
  """During training: every N steps, rebuild one batch's activations per model and compare."""

  def __init__(self, model, ds_info, config, seeds, mesh):
    c = config
    self.stop = c.exactness_check_action == 'stop'
    self.exact = variants.make_variant(c.model.variant).exact
    dtype = model_lib.compute_dtype(c.bf16)

    def mismatches(params, seed, images, labels, perm, step):
      # A whole training batch: whether XLA compiles h reproducibly can depend on the
      # shapes (a LayerNorm over 2,080 rows was reproducible where one over 8,320 was not).
      idx = perm[:c.batch_size]
      x = data.normalize(images[idx], ds_info['mean'], ds_info['std'], dtype)
      _, model_key = train_step.step_keys(seed, step)
      return jnp.sum(reconstruction_and_grads(model, params, x, labels[idx], model_key)[0])

    self.fn = jax.jit(parallel.over_models(mismatches, seeds, in_axes=(0, 0, None, None, 0, None),
                                           per_vmap=parallel.seeds_per_vmap(c, mesh)))

  def check(self, params, seeds, images, labels, perm, step) -> int:
    """The number of differently rebuilt elements, summed over the models."""
    n = int(np.sum(self.fn(params, seeds, images, labels, perm, step))) if self.exact else 0
    if n:
      msg = (f'exactness check at step {step}: {n} activation elements were rebuilt '
             'differently from the forward pass; run python -m vit_jax.tools.verify on this '
             'machine')
      if self.stop:
        raise TrainingError(msg)
      log.warning('%s', msg)
    return n
