"""Shared tiny-model helpers for the model/quant/reversible tests.

JAX compilation dominates the test time on CPU, so models are tiny (8x8 images, patch 4:
5 tokens of width 16) and parameters are initialised once per architecture at depth
``INIT_DEPTH`` and sliced: a stack's blocks are independent draws on a leading depth axis,
so the first ``d`` blocks of a deep init are a valid depth-``d`` init (re-initialising at
every depth would compile the vmapped init again for each depth, ~5 s each). In-process
tests, the other pytest-xdist worker and the subprocesses share one persistent
compilation cache (``train_helpers.compile_cache``): training runs that differ only by
their seed compile one program.

In-process tests compile at XLA's backend (LLVM) optimisation level 0, as the training
subprocesses do (``train_helpers.cli_env``): about 3x faster to compile, with the same
HLO passes and buffer assignment. The programs whose bits are the point (the exactness
programs of test_reversible, the LayerNorm check of test_fixed_order) are compiled at
training's level, ``TRAINING_LEVEL``.
"""
import os

os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"

import jax  # noqa: E402  (after XLA_FLAGS, which XLA reads when JAX first uses the CPU)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

import train_helpers as th  # noqa: E402
from vit_jax.models import vit as model  # noqa: E402

TINY = dict(num_classes=3, patch_size=4, dim=16, heads=2, dim_head=8, mlp_dim=32,
            dropout=0.1, emb_dropout=0.1)
IMAGE = 8           # 8x8 images, patch 4: 4 patches + CLS = 5 tokens
BATCH = 2
INIT_DEPTH = 12     # deepest stack the tests use with real parameters

# XLA's default backend optimisation level, the one every training run compiles at.
TRAINING_LEVEL = {'xla_backend_optimization_level': 3}

_PARAMS = {}


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  for name, value in (('jax_compilation_cache_dir', str(th.compile_cache(tmp_path_factory))),
                      ('jax_persistent_cache_min_compile_time_secs', 0),
                      ('jax_persistent_cache_min_entry_size_bytes', 0)):
    jax.config.update(name, value)


def tiny_model(variant: str = 'vit', depth: int = 2, dtype=jnp.float32, **kw) -> model.ViT:
  """A tiny ViT (dim 16, 2 heads of 8, MLP 32, 3 classes, dropout 0.1 unless overridden)."""
  return model.ViT(**{**TINY, **kw}, depth=depth, variant=variant, dtype=dtype)


def tiny_params(m: model.ViT, image_size: int = IMAGE, channels: int = 3, seed: int = 0):
  """Float32 parameters for ``m`` (cached per architecture, blocks sliced to m.depth)."""
  deep = max(m.depth, INIT_DEPTH)
  # Only the head of 'revvit' differs (it reads both streams); every other variant
  # shares one parameter tree, so they share one init.
  arch = m.clone(depth=deep, variant='revvit' if m.variant == 'revvit' else 'vit',
                 dtype=jnp.float32)
  key = (repr(arch), image_size, channels, seed)
  if key not in _PARAMS:
    images = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
    # The 'rbg' PRNG compiles faster than threefry; the draws are the same distributions.
    # Always float32 and outside x64 mode, whichever test asks first: under x64 the
    # cls/pos/temperature initialisers would otherwise default to float64.
    with jax.enable_x64(False):
      rng = jax.random.key(seed, impl='rbg')
      params = jax.jit(arch.init)({'params': rng}, images)['params']
    _PARAMS[key] = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  params = dict(_PARAMS[key])
  params['blocks'] = jax.tree.map(lambda a: a[:m.depth], params['blocks'])
  return params


def xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def rel_err(a, b) -> float:
  """||a - b|| / ||b|| (0 when both are 0), in float64 NumPy."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  nb = np.linalg.norm(b)
  return float(np.linalg.norm(a - b) / nb) if nb else float(np.linalg.norm(a))


@pytest.fixture(scope='session')
def tiny_batch():
  """(images [BATCH, IMAGE, IMAGE, 3] ~ N(0,1), labels [BATCH] in 0..2)."""
  images = jax.random.normal(jax.random.PRNGKey(1), (BATCH, IMAGE, IMAGE, 3), jnp.float32)
  return images, jnp.arange(BATCH, dtype=jnp.int32) % TINY['num_classes']


# The files that take longest, longest first (measured on 2 CPU cores): pytest-xdist hands
# out whole files in collection order, so starting these first lets both workers finish
# together. Only the order changes; a file missing here runs after them.
LONGEST_FIRST = ('test_reversible.py', 'test_resume.py', 'test_parallel_seeds.py',
                 'test_verify.py', 'test_bench.py', 'test_compare.py', 'test_cli.py',
                 'test_train.py', 'test_multiprocess.py', 'test_data.py', 'test_multidevice.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: tests keep order
