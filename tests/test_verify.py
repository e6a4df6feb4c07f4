"""verify and the run-time exactness guard on tiny models: they pass on the exact engine,
fail on a broken inverse, and check seed-parallel programs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_helpers as th
from vit_jax.models import variants, vit as model_lib
from vit_jax.tools import verify
from vit_jax.training import exactness, parallel, train_lib


def test_verify_passes_on_the_exact_engine_in_a_seed_parallel_program():
  """Three bdia models vectorised in one program, as a GPU runs them (vmap_seeds=3)."""
  c = th.tiny_config('bdia')
  c.parallel_seeds, c.vmap_seeds = 3, 3
  report = verify.run(c, batch_size=4)
  assert report['ok'] and report['models'] == 3, report
  assert sum(map(sum, report['mismatches'])) == 0 and len(report['mismatches']) == 2
  assert report['grad_rel_error_max'] < 1e-4


def test_verify_fails_when_the_inverse_is_broken(monkeypatch):
  good = variants.make_variant('bdia')
  c = good.couplings[0]
  off_by_one_step = lambda *a: c.inverse(*a) + 2.0 ** -9
  broken = good._replace(couplings=(c._replace(inverse=off_by_one_step),))
  monkeypatch.setattr(variants, 'make_variant', lambda *a, **k: broken)
  # another batch size than above, so that jit traces again instead of reusing the good trace
  report = verify.run(th.tiny_config('bdia'), batch_size=6)
  assert not report['ok']
  assert sum(map(sum, report['mismatches'])) > 0


def test_exactness_guard_passes_then_stops_on_a_broken_inverse(monkeypatch):
  c = th.tiny_config('bdia')
  c.batch_size, c.exactness_check_action = 4, 'stop'
  info = dict(mean=(0.5,) * 3, std=(0.25,) * 3)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), np.uint8))
  labels, perm, seed = jnp.arange(8) % 3, jnp.arange(8), np.int32(0)
  m = model_lib.build(c)
  params = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))['params']
  guard = lambda: exactness.ExactnessGuard(m, info, c, seed, parallel.make_mesh())
  assert guard().check(params, seed, images, labels, perm, 1) == 0
  good = variants.make_variant('bdia')
  cp = good.couplings[0]
  broken = good._replace(couplings=(cp._replace(inverse=lambda *a: cp.inverse(*a) + 2.0 ** -9),))
  monkeypatch.setattr(variants, 'make_variant', lambda *a, **k: broken)
  c.batch_size = 3  # another shape, so that jit traces the broken stack instead of reusing
  with pytest.raises(train_lib.TrainingError, match='rebuilt differently'):
    guard().check(params, seed, images, labels, perm, 2)
