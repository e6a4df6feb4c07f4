"""How one program is laid out: a data mesh over the devices, a model axis over the seeds.

Data parallelism is a one-axis mesh ('data') over every local device: the batch is
sharded along it, parameters and optimizer state are replicated, and XLA inserts the
gradient all-reduce. One device is the same code with a mesh of one.

Seed-parallel training (``config.parallel_seeds`` = N > 1) trains the models with seeds
``seed … seed+N-1`` in one program: every step function is written for one model and
mapped over a leading model axis (``over_models``), so model k draws exactly what a
single run with seed ``seed+k`` draws, and each kernel does N models' work.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
  return Mesh(np.asarray(devices or jax.devices()), ('data',))


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharded(mesh):
  return NamedSharding(mesh, P('data'))


def model_seeds(config) -> np.ndarray:
  """The seeds of the models one program trains: ``seed … seed+parallel_seeds-1``.

  One model (the default) has a scalar seed and unbatched state, exactly as before
  seed-parallel training existed; N > 1 models have every array on a leading model axis.
  """
  n = config.get('parallel_seeds', 1)
  seeds = config.seed + np.arange(n, dtype=np.int32)
  return seeds[0] if n == 1 else seeds


def over_models(fn, seeds, in_axes=0, per_vmap=None):
  """``fn`` for one model, or ``fn`` over the leading model axis of several.

  Arguments whose ``in_axes`` entry is 0 carry the model axis, None ones are shared.
  ``per_vmap`` (None: all) models are vectorised together by ``jax.vmap``; groups of
  them run one after another in the same program (``jax.lax.map``). The math is the same;
  the rounding of a vectorised matmul may differ.
  """
  if np.ndim(seeds) == 0:
    return fn
  if per_vmap is None or per_vmap >= np.size(seeds):
    return jax.vmap(fn, in_axes=in_axes)
  axes = in_axes if isinstance(in_axes, tuple) else None

  def mapped(*args):
    slots = [i for i, ax in enumerate(axes or (in_axes,) * len(args)) if ax is not None]

    def one(xs):  # one model's (or one vmapped group's) slices in their slots
      return fn(*[xs[slots.index(i)] if i in slots else a for i, a in enumerate(args)])
    batch = None if per_vmap == 1 else per_vmap  # 1: no vmap at all, plain per-model ops
    return jax.lax.map(one, [args[i] for i in slots], batch_size=batch)
  return mapped


def seeds_per_vmap(config, mesh):
  """How many of the run's models one ``jax.vmap`` covers (``config.vmap_seeds``).

  0 (auto): all of them on an accelerator, where N models' work in each kernel is what
  makes them fast; one at a time on a CPU, where XLA's batched matmuls run slower than
  its plain ones (CIFAR-10 preset, 3 vit models vmapped: 0.85x the per-model speed of one
  model alone, RESULTS.md).
  """
  n = config.get('vmap_seeds', 0)
  if n:
    return n
  return 1 if mesh.devices.flat[0].platform == 'cpu' else None
