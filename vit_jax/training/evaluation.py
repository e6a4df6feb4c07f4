"""Evaluation: the loss and accuracy of every model on the whole evaluation set."""
import jax
import numpy as np

from vit_jax.models import vit as model_lib
from vit_jax.training import data
from vit_jax.training.parallel import batch_sharded, over_models, replicated
from vit_jax.training.train_step import cross_entropy


def make_eval_step(model, ds_info: dict, config, mesh, seeds=None):
  """Returns ``eval_step(params, x_uint8, y, mask) -> (loss_sum, correct_sum)`` (per model)."""
  dtype = model_lib.compute_dtype(config.bf16)

  def eval_step(params, x, y, mask):
    x = data.normalize(x, ds_info['mean'], ds_info['std'], dtype)
    logits = model.apply({'params': params}, x, train=False)
    loss = cross_entropy(logits, y, config.model.num_classes)
    return (loss * mask).sum(), ((logits.argmax(-1) == y) * mask).sum()

  eval_step = over_models(eval_step, seeds, in_axes=(0, None, None, None))
  return jax.jit(eval_step, out_shardings=replicated(mesh))


def evaluate(eval_step, params, images: np.ndarray, labels: np.ndarray, batch: int,
             mesh) -> tuple[np.ndarray, np.ndarray]:
  """Mean loss and accuracy over the whole evaluation set (last batch padded, masked).

  Float64 NumPy scalars for one model, arrays with one entry per model for several.
  """
  n = len(labels)
  batch = max(mesh.size, batch - batch % mesh.size)
  loss_sum, correct = 0.0, 0
  sharding = batch_sharded(mesh)
  for start in range(0, n, batch):
    x, y = images[start:start + batch], labels[start:start + batch]
    pad = batch - len(y)
    mask = np.concatenate([np.ones(len(y), np.float32), np.zeros(pad, np.float32)])
    if pad:
      x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
      y = np.concatenate([y, np.zeros(pad, y.dtype)])
    l, c = eval_step(params, *jax.device_put((x, y, mask), sharding))
    loss_sum = loss_sum + np.asarray(l, np.float64)
    correct = correct + np.asarray(c, np.int64)
  return loss_sum / n, correct / n
