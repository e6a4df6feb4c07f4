"""The user-facing tools on tiny models: verify, bench and compare (issue 3 and 4 commands)."""
import csv
import json
import math
import os

import pytest

from tests.train_helpers import make_image_folder
from vit_jax import bench, compare, presets, steps, variants, verify, workdir_lock

TINY_WIDTH = ['--config.model.dim=16', '--config.model.heads=2', '--config.model.dim_head=8',
              '--config.model.mlp_dim=32', '--config.model.image_size=8']
TINY = TINY_WIDTH + ['--config.model.depth=2']


def tiny_config(variant):
  c = presets.preset(variant, 'cifar10')
  presets.apply_overrides(c, TINY)
  return c


def test_verify_passes_on_the_exact_engine():
  report = verify.run(tiny_config('bdia'), batch_size=4)
  assert report['ok'], report
  assert sum(map(sum, report['mismatches'])) == 0
  assert report['grad_rel_error_max'] < 1e-4


def test_verify_checks_a_seed_parallel_program():
  c = tiny_config('momentum')
  c.parallel_seeds, c.vmap_seeds = 3, 3  # vectorised, as on a GPU
  report = verify.run(c, batch_size=4)
  assert report['ok'] and report['models'] == 3, report
  assert sum(map(sum, report['mismatches'])) == 0 and len(report['mismatches']) == 2


def test_verify_fails_when_the_inverse_is_broken(monkeypatch):
  good = variants.make_variant('bdia')
  c = good.couplings[0]
  off_by_one_step = lambda *a: c.inverse(*a) + 2.0 ** -9
  broken = good._replace(couplings=(c._replace(inverse=off_by_one_step),))
  monkeypatch.setattr(variants, 'make_variant', lambda *a, **k: broken)
  # another batch size than above, so that jit traces again instead of reusing the good trace
  report = verify.run(tiny_config('bdia'), batch_size=6)
  assert not report['ok']
  assert sum(map(sum, report['mismatches'])) > 0


def test_bench_writes_a_well_formed_table(tmp_path, capsys):
  out = tmp_path / 'bench.csv'
  bench.main(['--variants', 'vit,bdia', '--depths', '1', '--batch-sizes', '4', '--steps', '1',
              '--warmup', '1', '--parallel-seeds', '1,2', '--csv', str(out), *TINY_WIDTH])
  rows = list(csv.DictReader(open(out)))
  assert [(r['variant'], r['parallel_seeds']) for r in rows] == [
      ('vit', '1'), ('bdia', '1'), ('vit', '2'), ('bdia', '2')]
  assert set(bench.COLUMNS) <= set(rows[0])
  assert float(rows[0]['memory_ratio_vs_vit']) == float(rows[2]['memory_ratio_vs_vit']) == 1.0
  assert 0 < float(rows[1]['memory_ratio_vs_vit'])
  assert all(float(r['step_time_ms']) > 0 and r['status'] == 'ok' for r in rows)
  assert all(0 < float(r['temp_mib']) < float(r['compiled_memory_mib']) for r in rows)
  for r in rows:  # images/s counts every model of the program
    k = int(r['parallel_seeds'])
    assert math.isclose(float(r['images_per_s']), k * 4 / float(r['step_time_ms']) * 1e3,
                        rel_tol=0.01)
    assert math.isclose(float(r['step_time_per_model_ms']), float(r['step_time_ms']) / k,
                        rel_tol=0.01)
  assert float(rows[2]['state_mib']) == 2 * float(rows[0]['state_mib'])
  # --max-depth's abstract lowering (no arrays) needs what the real step needed.
  from vit_jax import max_depth
  abstract = max_depth.compiled_memory_mib('bdia', 1, 4, TINY_WIDTH)
  assert round(abstract, 1) == float(rows[1]['compiled_memory_mib'])
  table = capsys.readouterr().out.strip().splitlines()
  assert table[0].startswith('| variant |') and len(table) == 6


def test_model_flops_match_xla_cost_of_the_forward_pass():
  """MFU's model FLOPs (3× the forward matmuls) agree with XLA's count of the forward pass."""
  import jax
  import jax.numpy as jnp
  from vit_jax import model as model_lib
  c = bench.make_config('vit', 2, 1, [])
  m = model_lib.build(c)
  x = jnp.zeros((1, 32, 32, 3))
  params = jax.jit(m.init)(jax.random.PRNGKey(0), x)
  cost = jax.jit(m.apply).lower(params, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  # XLA also counts the elementwise work (LayerNorm, softmax, GELU): about 2 % more here.
  assert 1.0 <= cost['flops'] / (bench.train_flops_per_image(c) / 3) <= 1.05


@pytest.mark.parametrize('memory, limit, expected', [
    (lambda d: 100 + 7 * d, 500, 57),            # affine: the guess is the answer
    (lambda d: 100 + 7 * d + 0.02 * d * d, 500, 50),  # convex: the guess is too deep
    (lambda d: 100 + 30 * d ** 0.5, 500, 177),   # concave: the guess is too shallow
    # small depths grow by activations (30 MiB a block), deep ones by parameters (100)
    (lambda d: max(1500 + 30 * d, 700 + 100 * d), 24105, 234),
    (lambda d: 100 + 7 * d, 110, 1),             # below the probes
    (lambda d: 100 + 7 * d, 100, 0),             # not even one block fits
])
def test_max_depth_finds_the_deepest_fit(memory, limit, expected):
  from vit_jax import max_depth
  depth, seen = max_depth.max_depth(memory, limit)
  assert depth == expected
  assert all((m <= limit) == (d <= expected) for d, m in seen.items())
  assert expected + 1 in seen or expected == max_depth.MAX_DEPTH  # D + 1 was tried, and failed
  # Compiles: 2 probes + guess + D + 1 when memory is affine in depth, 6 when it bends
  # once (as the models' memory does); otherwise logarithmic in the depth.
  budget = {57: 4, 234: 6}.get(expected, 2 * math.log2(expected + 2) + 4)
  assert len(seen) <= budget


def test_bench_max_depth_table(tmp_path, monkeypatch):
  from vit_jax import max_depth
  per_block = {'vit': 40.0, 'bdia': 3.0}  # MiB per block; the compile is faked here and
  monkeypatch.setattr(max_depth, 'compiled_memory_mib',  # checked for real below
                      lambda variant, depth, batch, overrides: 100 + per_block[variant] * depth)
  out = tmp_path / 'depth.csv'
  bench.main(['--max-depth', '--memory-limit-mib', '1000', '--variants', 'vit,bdia',
              '--batch-sizes', '128', '--csv', str(out)])
  rows = list(csv.DictReader(open(out)))
  assert [(r['variant'], r['max_depth']) for r in rows] == [('vit', '22'), ('bdia', '300')]
  assert rows[0]['memory_mib_at_max'] == '980.0' and rows[0]['memory_mib_at_max_plus_1'] == '1020.0'
  assert {r['limit_source'] for r in rows} == {'--memory-limit-mib'}


def test_bench_rejects_overrides_that_contradict_its_grid():
  for override in ('--config.model.depth=2', '--config.batch_size=8'):
    with pytest.raises(SystemExit):
      bench.main(['--variants', 'vit', '--steps', '0', override])


def test_bench_rejects_an_unknown_variant():
  with pytest.raises(SystemExit):
    bench.main(['--variants', 'vit,nope'])


def test_compare_trains_reports_and_skips_finished_runs(tmp_path, capsys):
  """Two seeds a variant in one program (the default), then one by one: the same report."""
  data = tmp_path / 'data'
  make_image_folder(data, classes=3, train=16, test=4)
  args = ['--dataset', f'folder:{data}', '--variants', 'vit,bdia', '--seeds', '2',
          '--config.num_epochs=1', '--config.batch_size=8',
          '--config.progress_bar=False', '--config.tensorboard=False',
          '--config.model.num_classes=3', *TINY]
  parallel, sequential = tmp_path / 'parallel', tmp_path / 'sequential'
  compare.main([*args, '--workdir', str(parallel)])
  report = (parallel / 'report' / 'results.md').read_text()
  assert '| vit |' in report and '| bdia |' in report
  for name in ('vit', 'bdia'):
    for seed in (0, 1):
      summary = json.loads((parallel / name / 'seeds0-1' / f'seed{seed}' / 'summary.json')
                           .read_text())
      assert summary['finished'] and (summary['variant'], summary['seed']) == (name, seed)
  capsys.readouterr()
  compare.main([*args, '--workdir', str(parallel), '--target-acc', '1'])  # nothing trains again
  assert capsys.readouterr().out.count('finished, skipped') == 2
  assert 'Target: 1 % (folder:' in (parallel / 'report' / 'results.md').read_text()

  compare.main([*args, '--workdir', str(sequential), '--parallel-seeds', '1', '--target-acc', '1'])
  assert (sequential / 'bdia' / 'seed1' / 'summary.json').exists()
  rows = {w: list(csv.DictReader(open(w / 'report' / 'results.csv'))) for w in (parallel, sequential)}
  assert [r['label'] for r in rows[parallel]] == [r['label'] for r in rows[sequential]] == \
      ['vit', 'bdia']
  assert list(rows[parallel][0]) == list(rows[sequential][0])
  for a, b in zip(rows[parallel], rows[sequential]):
    assert (a['n_seeds'], a['seeds'], a['n_finished']) == (b['n_seeds'], b['seeds'],
                                                           b['n_finished']) == ('2', '0;1', '2')
    for column in ('best_val_acc_pct_mean', 'final_val_acc_pct_mean'):
      assert math.isclose(float(a[column]), float(b[column]), abs_tol=1e-3), column
  pictures = lambda w: sorted(p.name for p in (w / 'report').glob('*.png'))
  assert pictures(parallel) == pictures(sequential) and pictures(parallel)

  # A run another process holds is reported in one line and left alone; the rest go on.
  vit = sequential / 'vit' / 'seed0'
  (vit / 'summary.json').unlink()  # unfinished as far as compare can tell
  capsys.readouterr()
  with workdir_lock.WorkdirLock(str(vit)) as held:
    held.acquire()
    with pytest.raises(SystemExit) as stop:
      compare.main([*args, '--workdir', str(sequential), '--parallel-seeds', '1'])
  out, err = capsys.readouterr()
  assert stop.value.code == 2 and out.count('finished, skipped') == 3  # the others
  assert f'compare: skipped: workdir {vit} is in use by another run (pid {os.getpid()} on ' in err
  assert f'1 run(s) did not finish: {vit} (in use by another process)' in err
  assert not (vit / 'summary.json').exists()


LINEAR = lambda k: 100 + 40 * k
CONVEX = lambda k: 100 + 40 * k + 30 * k * k  # extrapolation overshoots: halve to fit


@pytest.mark.parametrize('seeds, memory, limit, expected', [
    (8, LINEAR, (100 + 3.5 * 40) / 0.9, 3),  # room for 3.5 models: 3
    (2, LINEAR, (100 + 3.5 * 40) / 0.9, 2),  # never more than the seeds asked for
    (8, LINEAR, 139 / 0.9, 1),               # not even one fits: 1, and training says so
    (8, CONVEX, 1000 / 0.9, 3),              # 7 extrapolated, 1,850 MiB: halved to 3
])
def test_compare_auto_fits_as_many_seeds_as_the_memory_holds(seeds, memory, limit, expected):
  """--parallel-seeds auto; the real compiled memory per model is checked in the bench test."""
  tried = []
  measure = lambda k: tried.append(k) or memory(k)
  assert compare.fitting_seeds(seeds, measure, limit) == expected
  assert expected == 1 or memory(expected) <= 0.9 * limit
  assert len(tried) <= 4


def test_compare_rejects_a_bad_parallel_seeds_value():
  for value in ('0', 'many'):
    with pytest.raises(SystemExit):
      compare.main(['--dataset', 'folder:/nowhere', '--workdir', '/tmp/x', '--parallel-seeds', value])


def test_exactness_guard_passes_then_stops_on_a_broken_inverse(monkeypatch):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from vit_jax import model as model_lib, train_lib
  c = tiny_config('bdia')
  c.batch_size, c.exactness_check_action = 4, 'stop'
  info = dict(mean=(0.5,) * 3, std=(0.25,) * 3)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), np.uint8))
  labels, perm, seed = jnp.arange(8) % 3, jnp.arange(8), np.int32(0)
  m = model_lib.build(c)
  params = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))['params']
  guard = lambda: verify.ExactnessGuard(m, info, c, seed, steps.make_mesh())
  assert guard().check(params, seed, images, labels, perm, 1) == 0
  good = variants.make_variant('bdia')
  cp = good.couplings[0]
  broken = good._replace(couplings=(cp._replace(inverse=lambda *a: cp.inverse(*a) + 2.0 ** -9),))
  monkeypatch.setattr(variants, 'make_variant', lambda *a, **k: broken)
  c.batch_size = 3  # another shape, so that jit traces the broken stack instead of reusing
  with pytest.raises(train_lib.TrainingError, match='rebuilt differently'):
    guard().check(params, seed, images, labels, perm, 2)
