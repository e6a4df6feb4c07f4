"""The training program as a library: one config's compiled step, from abstract shapes.

``bench`` times it; ``max_depth`` and ``compare --parallel-seeds auto`` read its memory.
Each lowers the same program that training runs (``train_step.make_train_chunk``) without
allocating anything. ``peak_memory`` is the memory figure that training and bench report.
"""
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import vit as model_lib
from vit_jax.training import config_defaults, optim, parallel, train_step


def make_config(variant: str, depth: int, batch: int, overrides: list[str], models: int = 1):
  """The CIFAR-10 preset with ``variant``, ``depth``, ``batch`` (per model), ``models``
  seed-parallel models and --config.* overrides."""
  c = config_defaults.preset(variant, 'cifar10')
  config_defaults.apply_overrides(c, overrides)
  c.model.depth, c.batch_size, c.parallel_seeds = depth, batch, models
  return c


def compile_train_step(c):
  """The training program for config ``c``, lowered from abstract shapes and compiled.

  The program is the one training runs: a chunk of steps (their number an argument) of
  ``c.parallel_seeds`` models. Nothing is allocated. Returns ``(compiled, abstract_state,
  make_inputs)``; ``make_inputs()`` puts the real inputs on the device: the initial
  state, zeroed running sums, the seeds, the live mask and a synthetic data set of four
  uint8 batches with its permutation (the step count is the caller's).
  """
  m = c.model
  mesh = parallel.make_mesh()
  rep = parallel.replicated(mesh)
  n, image_shape = 4 * c.batch_size, (m.image_size, m.image_size, m.channels)
  info = dict(mean=(0.5,) * m.channels, std=(0.25,) * m.channels, flip=True, steps_per_epoch=4)
  model = model_lib.build(c)
  tx = optim.make_optimizer(c, info['steps_per_epoch'])
  seeds = parallel.model_seeds(c)
  init = lambda: train_step.create_states(model, tx, image_shape, seeds)
  abstract = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), tree)
  state = abstract(jax.eval_shape(init))
  models = np.shape(seeds)
  inputs = abstract((jax.eval_shape(train_step.zero_sums, seeds),
                     jax.ShapeDtypeStruct(models, jnp.int32), jax.ShapeDtypeStruct(models, bool),
                     jax.ShapeDtypeStruct((n, *image_shape), jnp.uint8),
                     jax.ShapeDtypeStruct((n,), jnp.int32),
                     jax.ShapeDtypeStruct((*models, n), jnp.int32)))
  compiled = train_step.make_train_chunk(model, info, c, mesh, seeds).lower(
      state, *inputs, jax.ShapeDtypeStruct((), jnp.int32)).compile()

  def make_inputs():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, *image_shape), np.uint8)
    labels = rng.integers(0, m.num_classes, (n,), np.int32)
    return (jax.jit(init, out_shardings=rep)(), *jax.device_put(
        (train_step.zero_sums(seeds), seeds, np.ones(models, bool), images, labels,
         train_step.epoch_permutation(seeds, 0, n)), rep))

  return compiled, state, make_inputs


def compiled_memory_mib(compiled) -> float:
  """XLA's memory for a compiled program: temp + arguments + outputs - aliased, in MiB."""
  mem = compiled.memory_analysis()
  return (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
          - mem.alias_size_in_bytes) / 2**20


def peak_memory(compiled) -> tuple[float, str]:
  """(MiB, source): the device's peak bytes in use where it reports them ('device_peak'),
  else XLA's memory for ``compiled`` ('compiled_analysis')."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20, 'device_peak'
  return compiled_memory_mib(compiled), 'compiled_analysis'
