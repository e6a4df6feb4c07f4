"""bench on tiny models: the speed and memory table, MFU's FLOP count, --max-depth."""
import csv
import math
import sys

import jax
import jax.numpy as jnp
import pytest

import train_helpers as th
from vit_jax.models import vit as model_lib
from vit_jax.tools import bench, max_depth
from vit_jax.training import program


def test_bench_writes_a_well_formed_table(tmp_path_factory):
  """bench as a user runs it, compiled as the training subprocesses are (``th.cli_env``)."""
  tmp = tmp_path_factory.mktemp('bench')
  env = th.cli_env(th.compile_cache(tmp_path_factory))
  out = tmp / 'bench.csv'
  result = th.run([sys.executable, '-m', 'vit_jax.tools.bench', '--variants', 'vit,bdia',
                   '--depths', '1', '--batch-sizes', '4', '--steps', '1', '--warmup', '1',
                   '--parallel-seeds', '1,2', '--csv', str(out), *th.TINY_WIDTH], env)
  assert result.returncode == 0, result.stderr
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
  abstract = th.run([sys.executable, '-c', 'import sys; from vit_jax.tools import max_depth; '
                     'print(max_depth.compiled_memory_mib("bdia", 1, 4, sys.argv[1:]))',
                     *th.TINY_WIDTH], env)
  assert round(float(abstract.stdout), 1) == float(rows[1]['compiled_memory_mib']), abstract.stderr
  table = result.stdout.strip().splitlines()
  assert table[0].startswith('| variant |') and len(table) == 6


def test_model_flops_match_xla_cost_of_the_forward_pass():
  """MFU's model FLOPs (3× the forward matmuls) agree with XLA's count of the forward pass."""
  c = program.make_config('vit', 2, 1, [])
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
  depth, seen = max_depth.max_depth(memory, limit)
  assert depth == expected
  assert all((m <= limit) == (d <= expected) for d, m in seen.items())
  assert expected + 1 in seen or expected == max_depth.MAX_DEPTH  # D + 1 was tried, and failed
  # Compiles: 2 probes + guess + D + 1 when memory is affine in depth, 6 when it bends
  # once (as the models' memory does); otherwise logarithmic in the depth.
  budget = {57: 4, 234: 6}.get(expected, 2 * math.log2(expected + 2) + 4)
  assert len(seen) <= budget


def test_bench_max_depth_table(tmp_path, monkeypatch):
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
