"""Seed-parallel training (``config.parallel_seeds``): N models in one program, each its own run.

One subprocess per variant trains seeds 0-2 in one program and seeds 0 and 2 alone, with
9 training images and a batch of 8 (one step an epoch, so metrics.csv holds every step's
loss) for 20 steps, with dropout, SET-Adam and BDIA's γ. vit runs its models one after
another in the program (the CPU default), bdia vectorised by one vmap (the GPU default,
``vmap_seeds=3``). A third process is the bdia run, killed by SIGKILL after a checkpoint
and resumed through train.py.
"""
import os
import signal
import sys
import time

import jax
import numpy as np
import pytest

import train_helpers as th

EPOCHS = 20
RUN = [*th.TINY, f'--config.num_epochs={EPOCHS}', '--config.checkpoint_every_epochs=0']
SCRIPT = """
import sys
from vit_jax.training import config_defaults, train_lib
variant, out, *overrides = sys.argv[1:]
for seed, n, name in ((0, 3, 'parallel'), (0, 1, 'seed0'), (2, 1, 'seed2')):
  c = config_defaults.preset(variant, 'cifar10')
  config_defaults.apply_overrides(c, overrides)
  c.seed, c.parallel_seeds = seed, n
  train_lib.train_and_evaluate(c, f'{out}/{variant}_{name}')
"""
# Seed 1 starts with parameters scaled by 1e30, so its first loss is not finite.
NAN_SCRIPT = """
import sys
import jax, jax.numpy as jnp
from vit_jax.training import config_defaults, train_lib, train_step
real = train_step.create_state
def huge_for_seed_1(model, tx, image_shape, seed):
  state = real(model, tx, image_shape, seed)
  return state.replace(params=jax.tree.map(lambda p: jnp.where(seed == 1, p * 1e30, p),
                                           state.params))
train_step.create_state = huge_for_seed_1
out, *overrides = sys.argv[1:]
c = config_defaults.preset('vit', 'cifar10')
config_defaults.apply_overrides(c, overrides)
c.parallel_seeds, c.vmap_seeds = 3, 3  # vectorised: the step's cond becomes a select
try:
  train_lib.train_and_evaluate(c, out)
except train_lib.TrainingError as e:
  print(f'TrainingError: {e}')
"""
VARIANTS = ('vit', 'bdia')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('parallel')
  th.make_image_folder(tmp / 'data', train=3, test=2)
  env = th.cli_env(th.compile_cache(tmp_path_factory))
  overrides = [f'--config.dataset=folder:{tmp / "data"}', *RUN]
  vmap = {'vit': [], 'bdia': ['--config.vmap_seeds=3']}
  jobs = [([sys.executable, '-c', SCRIPT, v, str(tmp), *overrides, *vmap[v]], env)
          for v in VARIANTS]
  jobs.append(([sys.executable, '-c', NAN_SCRIPT, str(tmp / 'nan'), *overrides,
                '--config.num_epochs=2'], env))
  *done, nan = th.run_all(jobs)
  for result in [*done, nan]:
    assert result.returncode == 0, result.stderr
  return tmp, env, overrides, nan.stdout


@pytest.mark.parametrize('variant', VARIANTS)
def test_each_parallel_model_trains_as_its_single_seed_run(runs, variant):
  tmp = runs[0]
  parallel = tmp / f'{variant}_parallel'
  assert sorted(os.listdir(parallel)) == ['.lock', 'checkpoints', 'config.json', 'seed0', 'seed1',
                                         'seed2']
  _, stacked = th.final_leaves(parallel)
  losses = {}
  for seed in (0, 2):  # slices 0 and 2 of the model axis
    mine, alone = parallel / f'seed{seed}', tmp / f'{variant}_seed{seed}'
    rows, rows_alone = th.metric_rows(mine), th.metric_rows(alone)
    assert [r[:2] for r in rows] == [(str(e), str(e)) for e in range(1, EPOCHS + 1)]
    assert [r[:2] for r in rows_alone] == [r[:2] for r in rows]
    # train_loss, train_acc, val_loss, val_acc, lr of each of the 20 steps. The vmapped
    # program rounds some float32 sums differently; BDIA's quantizer can turn such an
    # ulp into a 2^-9 grid step of an activation. Measured (2 CPU cores, jax 0.10.2):
    # vit bit-identical, bdia 1.2e-5 relative at step 17 of seed 0.
    np.testing.assert_allclose(np.array([r[2:] for r in rows], float),
                               np.array([r[2:] for r in rows_alone], float), rtol=1e-4)
    losses[seed] = [r[2] for r in rows]
    # Parameters to a hundredth of one update (SET-Adam moves each by about lr = 1e-3 a
    # step); measured: at most 4.4e-6 apart (bdia).
    for a, b in zip([x[seed] for x in stacked], th.final_leaves(alone)[1]):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    config = th.run_files.read_json(mine / 'config.json')
    assert (config['seed'], config['parallel_seeds']) == (seed, 3)
    summary = th.run_files.read_json(mine / 'summary.json')
    assert summary['finished'] and summary['seed'] == seed and summary['parallel_seeds'] == 3
  assert losses[0] != losses[2], 'the models must differ: each has its own seed'


def test_parallel_run_killed_and_resumed_is_bit_identical(runs):
  tmp, env, overrides, _ = runs
  work, reference = tmp / 'killed', tmp / 'bdia_parallel'
  cmd = th.train_cmd(work, *overrides, '--config.parallel_seeds=3', '--config.vmap_seeds=3',
                     '--config.checkpoint_every_steps=2',  # checkpoint settings may change
                     config='configs/bdia_cifar10.py')
  proc = th.start(cmd, env)
  ckpts = work / 'checkpoints'
  t0 = time.time()
  while not (ckpts.is_dir() and any(n.startswith('10') for n in os.listdir(ckpts))):
    assert proc.poll() is None, proc.communicate()[1]
    assert time.time() - t0 < 120, 'no checkpoint appeared'
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert not (ckpts / str(EPOCHS)).exists()
  resumed = th.run(cmd, env)
  assert resumed.returncode == 0, resumed.stderr
  assert 'resuming from the checkpoint at step' in resumed.stderr
  step, ref = th.final_leaves(reference)
  assert th.final_leaves(work)[0] == step == EPOCHS
  assert th.same_arrays(ref, th.final_leaves(work)[1]), 'parameters differ'
  for seed in (0, 1, 2):
    assert th.metric_rows(work / f'seed{seed}') == th.metric_rows(reference / f'seed{seed}')


def test_one_models_nan_stops_that_model_only(runs):
  tmp, _, _, stdout = runs
  run = tmp / 'nan'
  assert ('TrainingError: 1 of 3 models stopped: seed 1: loss or gradients became NaN/Inf at '
          'step 1 (epoch 1, step 1 of 1)') in stdout
  stopped = th.run_files.read_json(run / 'seed1' / 'summary.json')
  assert not stopped['finished'] and 'NaN/Inf at step 1' in stopped['stopped']
  assert th.metric_rows(run / 'seed1') == []
  for seed in (0, 2):
    summary = th.run_files.read_json(run / f'seed{seed}' / 'summary.json')
    assert summary['finished'] and summary['stopped'] is None
    rows = th.metric_rows(run / f'seed{seed}')
    assert len(rows) == 2 and np.isfinite(np.array([r[2:] for r in rows], float)).all()
  # The stopped model keeps the state it had before its bad step: no update was applied, so
  # its optimizer moments are still all zero (the trained models' are not), and nothing
  # non-finite reached its parameters.
  _, train, meta = th.checkpoints.load_arrays(str(run))
  assert set(meta['stopped']) == {'1'}
  moments = [x for x in jax.tree.leaves(train['state']['opt_state']) if x.ndim > 1]
  assert moments and all(not np.any(x[1]) for x in moments)
  assert all(np.any(x[0]) and np.any(x[2]) for x in moments)
  assert all(np.isfinite(x[1]).all() for x in jax.tree.leaves(train['state']['params']))


def test_evaluate_picks_one_model_of_a_parallel_run(runs):
  """evaluate --seed 2 on the 3-seed vit run: the accuracy seed 2's summary.json reports."""
  tmp, env = runs[0], runs[1]
  summary = th.run_files.read_json(str(tmp / 'vit_parallel' / 'seed2' / 'summary.json'))
  out = th.run([sys.executable, '-m', 'vit_jax.tools.evaluate', '--workdir',
                str(tmp / 'vit_parallel'), '--seed', '2'], env)
  assert out.returncode == 0, out.stderr
  assert f'seed 2, step {EPOCHS}' in out.stdout
  assert f'accuracy {100 * summary["final_val_acc"]:.2f} % on 6 images' in out.stdout
  loss = th.run_files.read_metrics(str(tmp / 'vit_parallel' / 'seed2' / 'metrics.csv'))['val_loss']
  assert f'loss {loss[-1]:.4f}' in out.stdout  # seed 2's model, not seed 0's
