"""Data parallelism: the same seed gives the same losses and parameters on 1 and 4 devices.

A subprocess with four forced CPU devices (XLA_FLAGS set before JAX is imported) trains
each variant twice through ``train_and_evaluate``: on a mesh of the first device and on
a mesh of all four (batch sharded, state replicated). With 9 training images and a batch
of 8, an epoch is one step, so metrics.csv holds the loss of every step. Only the order
of the floating-point reductions differs between the two runs. (SGD and no dropout
keep the compile time down; the random crops and BDIA's γ still come from sharded RNG.)
"""
import sys

import numpy as np
import pytest

import train_helpers as th

SCRIPT = """
import sys
import jax
from vit_jax.training import config_defaults, train_lib
variant, data, out = sys.argv[1:]
assert jax.device_count() == 4, jax.devices()
for n in (1, 4):
  c = config_defaults.get_config()
  c.model.update(variant=variant, image_size=8, num_classes=3, patch_size=4, dim=16, depth=2,
                 heads=2, dim_head=8, mlp_dim=32, dropout=0.0, emb_dropout=0.0)
  c.update(dataset='folder:' + data, batch_size=8, eval_batch_size=8, num_epochs=3,
           optimizer='sgd', learning_rate=0.05, checkpoint_every_epochs=0, progress_bar=False,
           tensorboard=False)
  summary = train_lib.train_and_evaluate(c, f'{out}/{variant}{n}', devices=jax.devices()[:n])
  assert summary['num_devices'] == n, summary
"""

VARIANTS = ('vit', 'bdia')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('multidevice')
  th.make_image_folder(tmp / 'data', train=3, test=2)
  env = th.cli_env(th.compile_cache(tmp_path_factory), devices=4)
  jobs = [([sys.executable, '-c', SCRIPT, v, str(tmp / 'data'), str(tmp)], env)
          for v in VARIANTS]
  for result in th.run_all(jobs):
    assert result.returncode == 0, result.stderr
  return tmp


@pytest.mark.parametrize('variant', VARIANTS)
def test_one_and_four_devices_agree(runs, variant):
  one, four = runs / f'{variant}1', runs / f'{variant}4'
  rows1, rows4 = th.metric_rows(one), th.metric_rows(four)  # one row per step
  assert [r[:2] for r in rows1] == [r[:2] for r in rows4] == [('1', '1'), ('2', '2'), ('3', '3')]
  # train_loss, train_acc, val_loss, val_acc, lr of each step
  np.testing.assert_allclose(np.array([r[2:] for r in rows4], float),
                             np.array([r[2:] for r in rows1], float), rtol=2e-6)
  (step1, params1), (step4, params4) = th.final_leaves(one), th.final_leaves(four)
  assert step1 == step4 == 3
  for a, b in zip(params4, params1):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert th.run_files.read_json(four / 'summary.json')['num_devices'] == 4
