"""compare on tiny models: seeds in one program or one by one give the same report; runs
that cannot finish are reported and the others go on; --parallel-seeds auto."""
import csv
import json
import math
import os
import sys

import pytest

import train_helpers as th
from vit_jax.tools import compare
from vit_jax.training import workdir_lock


def test_compare_trains_reports_and_skips_finished_runs(tmp_path_factory):
  """Two seeds a variant in one program (the default), then one by one: the same report.

  The runs are subprocesses, as a user runs compare, compiled as the other training
  subprocesses are (``th.cli_env``: optimisation level 0, the session's cache).
  """
  tmp_path = tmp_path_factory.mktemp('compare')
  env = th.cli_env(th.compile_cache(tmp_path_factory))
  data = tmp_path / 'data'
  th.make_image_folder(data, classes=3, train=16, test=4)
  args = ['--dataset', f'folder:{data}', '--variants', 'bdia', '--seeds', '2',
          '--config.num_epochs=1', '--config.batch_size=8',
          '--config.progress_bar=False', '--config.tensorboard=False',
          '--config.model.num_classes=3', *th.TINY_MODEL]
  compare = lambda *more: th.run([sys.executable, '-m', 'vit_jax.tools.compare', *args, *more],
                                 env)
  parallel, sequential = tmp_path / 'parallel', tmp_path / 'sequential'
  assert compare('--workdir', str(parallel)).returncode == 0
  report = (parallel / 'report' / 'results.md').read_text()
  assert '| bdia |' in report
  for seed in (0, 1):
    summary = json.loads((parallel / 'bdia' / 'seeds0-1' / f'seed{seed}' / 'summary.json')
                         .read_text())
    assert summary['finished'] and (summary['variant'], summary['seed']) == ('bdia', seed)
  again = compare('--workdir', str(parallel), '--target-acc', '1')  # nothing trains again
  assert again.returncode == 0 and again.stdout.count('finished, skipped') == 1
  assert 'Target: 1 % (folder:' in (parallel / 'report' / 'results.md').read_text()

  one_by_one = compare('--workdir', str(sequential), '--parallel-seeds', '1', '--target-acc', '1')
  assert one_by_one.returncode == 0, one_by_one.stderr
  assert (sequential / 'bdia' / 'seed1' / 'summary.json').exists()
  rows = {w: list(csv.DictReader(open(w / 'report' / 'results.csv'))) for w in (parallel, sequential)}
  assert [r['label'] for r in rows[parallel]] == [r['label'] for r in rows[sequential]] == \
      ['bdia']
  assert list(rows[parallel][0]) == list(rows[sequential][0])
  for a, b in zip(rows[parallel], rows[sequential]):
    assert (a['n_seeds'], a['seeds'], a['n_finished']) == (b['n_seeds'], b['seeds'],
                                                           b['n_finished']) == ('2', '0;1', '2')
    for column in ('best_val_acc_pct_mean', 'final_val_acc_pct_mean'):
      assert math.isclose(float(a[column]), float(b[column]), abs_tol=1e-3), column
  pictures = lambda w: sorted(p.name for p in (w / 'report').glob('*.png'))
  assert pictures(parallel) == pictures(sequential) and pictures(parallel)

  # A run another process holds is reported in one line and left alone; the rest go on.
  held_run = sequential / 'bdia' / 'seed0'
  (held_run / 'summary.json').unlink()  # unfinished as far as compare can tell
  with workdir_lock.WorkdirLock(str(held_run)) as held:
    held.acquire()
    out = compare('--workdir', str(sequential), '--parallel-seeds', '1')
  assert out.returncode == 2 and out.stdout.count('finished, skipped') == 1  # seed 1
  assert (f'compare: skipped: workdir {held_run} is in use by another run (pid {os.getpid()} on '
          in out.stderr)
  assert f'1 run(s) did not finish: {held_run} (in use by another process)' in out.stderr
  assert not (held_run / 'summary.json').exists()


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
