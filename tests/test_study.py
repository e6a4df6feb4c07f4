"""The study: its statistics on hand-made numbers, its subset rule, and one tiny study run
end to end (train, rerun: nothing trains again, the same report)."""
import csv
import json
import math
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

import train_helpers as th
from vit_jax.tools import stats, study, study_report
from vit_jax.training import data


# ---------------------------------------------------------------- statistics
def test_mean_std_uses_the_sample_std_and_skips_missing_values():
  assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
  assert stats.mean_std([4.0, None, math.nan]) [0] == 4.0
  assert math.isnan(stats.mean_std([4.0])[1])
  assert all(math.isnan(v) for v in stats.mean_std([]))


def test_welch_interval_of_two_equal_spread_groups():
  """a = 1, 2, 3 and b = 4, 5, 6: both variances 1, se = sqrt(2/3), Welch df = 4,
  t(0.975, 4) = 2.7764451: 3 ± 2.26694."""
  d = stats.welch_difference([1, 2, 3], [4, 5, 6])
  assert d.diff == 3.0
  assert d.low == pytest.approx(3 - 2.7764451 * math.sqrt(2 / 3), abs=1e-6)
  assert d.high == pytest.approx(3 + 2.7764451 * math.sqrt(2 / 3), abs=1e-6)
  assert d.detectable and d.describe('').endswith(': higher')
  lower = stats.welch_difference([4, 5, 6], [1, 2, 3])
  assert lower.diff == -3.0 and lower.detectable and lower.describe().endswith(': lower')


def test_welch_interval_uses_unequal_variances():
  """Variances 1 (n=3) and 250 (n=5): Welch–Satterthwaite df ≈ 4.05, not the pooled 6."""
  a, b = [1, 2, 3], [10, 20, 30, 40, 50]
  va, vb = 1 / 3, 250 / 5
  df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 4)
  half = scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vb)
  d = stats.welch_difference(a, b)
  assert df == pytest.approx(4.053, abs=1e-3)
  assert (d.low, d.high) == (pytest.approx(28 - half), pytest.approx(28 + half))


def test_an_interval_covering_zero_says_no_difference_detectable():
  d = stats.welch_difference([50.0, 52.0, 54.0], [51.0, 53.5, 52.0])
  assert d.low < 0 < d.high and not d.detectable
  assert d.describe('') == (f'+0.17 [{d.low:+.2f}, {d.high:+.2f}]: '
                            'no difference detectable with 3 seeds')


def test_no_interval_without_two_seeds_or_any_spread():
  for a, b in (([1.0], [2.0, 3.0]), ([1.0, 1.0], [2.0, 2.0])):
    d = stats.welch_difference(a, b)
    assert math.isnan(d.low) and not d.detectable and 'no interval' in d.describe()


# ---------------------------------------------------------------- the report's numbers
def _run(variant, seed, val, train):
  val, train = np.array(val), np.array(train)
  return dict(variant=variant, seed=seed, epochs=len(val), finished=True,
              config={'parallel_seeds': 3},
              peak_memory_mib=100.0 if variant == 'vit' else 50.0,
              metrics=dict(epoch=np.arange(1, len(val) + 1), step=10 * np.arange(1, len(val) + 1),
                           val_acc=val, train_eval_acc=train,
                           epoch_time_s=np.array([20.0, 6.0, 6.0])))


def test_study_rows_take_best_final_and_gap_per_seed_then_compare_with_vit():
  runs = {'vit': [_run('vit', s, [0.3, 0.5 + s / 100, 0.4 - s / 100], [0.4, 0.6, 0.8 - s / 50])
                  for s in range(3)],
          'bdia': [_run('bdia', s, [0.3, 0.45, 0.44 + s / 100], [0.4, 0.5, 0.6 - s / 50])
                   for s in range(3)]}
  sitting = {'rows': [{'variant': 'vit', 'step_time_ms': 100.0},
                      {'variant': 'bdia', 'step_time_ms': 130.0}]}
  vit, bdia = study_report.summarize(runs, sitting)
  assert vit['best_val'] == pytest.approx([50, 51, 52])
  assert vit['final_val'] == pytest.approx([40, 39, 38])
  assert vit['gap'] == pytest.approx([40, 39, 38]) and vit['gap_vs_vit'] is None
  assert bdia['best_val'] == pytest.approx([45, 45, 46])  # epoch 3 overtakes epoch 2 for seed 2
  assert bdia['gap'] == pytest.approx([16, 13, 10]) and bdia['gap_mean'] == pytest.approx(13)
  assert bdia['final_val_vs_vit'].diff == pytest.approx(6) and bdia['gap_vs_vit'].detectable
  assert bdia['memory_mib_ratio'] == 0.5 and bdia['epoch_time_s_ratio'] == 1.0
  assert vit['epoch_time_s'] == 2.0  # 6 s a 3-model program's epoch
  assert (vit['sitting_epoch_s'], bdia['sitting_epoch_s']) == (1.0, 1.3)  # 10 steps an epoch
  assert bdia['sitting_epoch_s_ratio'] == pytest.approx(1.3)


def test_epoch_time_is_one_models_share_of_the_median_epoch_after_the_first():
  run = dict(config={'parallel_seeds': 3},
             metrics={'epoch_time_s': np.array([20.0, 6.0, 60.0, 6.3, 5.7])})
  assert study_report.epoch_time(run) == pytest.approx(6.15 / 3)  # 60 s: another job's load


# ---------------------------------------------------------------- the subset rule
def test_first_per_class_keeps_the_first_images_of_each_class_in_order():
  labels = np.array([0, 0, 0, 1, 1, 2, 0, 1], np.int32)
  images = np.arange(8, dtype=np.uint8).reshape(8, 1, 1, 1)
  ds = data.Dataset('t', images, labels, images[:3], labels[:3], ('a', 'b', 'c'), (0.5,),
                    (0.2,), False)
  sub = data.first_per_class(ds, train=2, test=1)
  assert sub.train_images.ravel().tolist() == [0, 1, 3, 4, 5]  # class 2 has only one
  assert sub.test_images.ravel().tolist() == [0]
  assert 'first 2 training and 1 test images of each class: 5 of 8 and 1 of 3' in sub.note
  assert data.first_per_class(ds) is ds


# ---------------------------------------------------------------- one tiny study
def test_a_tiny_study_trains_reports_and_resumes_without_training_again(tmp_path_factory):
  """vit only, 2 epochs, three seeds in one program, on a tiny image folder; a rerun
  trains nothing, records its invocation and writes the same table; another set of
  changes is refused in one line."""
  tmp = tmp_path_factory.mktemp('study')
  root = th.make_image_folder(tmp / 'data', classes=3, train=6, test=3)
  env = th.cli_env(th.compile_cache(tmp_path_factory))
  changes = [*th.TINY_MODEL, '--config.num_epochs=2', '--config.batch_size=4',
             '--config.train_per_class=4', '--config.train_eval_examples=12',
             '--config.model.num_classes=3', '--config.warmup_epochs=0',
             '--config.progress_bar=False', '--config.tensorboard=False']
  work = tmp / 'work'
  cmd = [sys.executable, '-m', 'vit_jax.tools.study', 'small-cifar10', '--data', str(root),
         '--variants', 'vit', '--workdir', str(work)]
  first = th.run(cmd + changes, env)
  assert first.returncode == 0, first.stderr
  rows = list(csv.DictReader(open(work / 'study_report' / 'study.csv')))
  assert [r['variant'] for r in rows] == ['vit'] and rows[0]['n_seeds'] == '3'
  metrics = list(csv.DictReader(open(work / 'vit' / 'seeds0-2' / 'seed1' / 'metrics.csv')))
  assert len(metrics) == 2 and all(0 <= float(m['train_eval_acc']) <= 1 for m in metrics)
  gaps = [float(v) for v in rows[0]['gap_per_seed'].split(';')]
  assert len(gaps) == 3 and all(-100 <= g <= 100 for g in gaps)
  assert sorted(p.name for p in (work / 'study_report').glob('*.png')) == ['gap.png',
                                                                           'val_acc.png']
  timed = json.loads((work / 'step_times.json').read_text())  # once, when all had finished
  assert [r['variant'] for r in timed['rows']] == ['vit'] and timed['rows'][0]['step_time_ms'] > 0
  assert float(rows[0]['sitting_epoch_s']) > 0

  again = th.run(cmd + changes, env)
  assert again.returncode == 0 and 'finished, skipped' in again.stdout
  assert list(csv.DictReader(open(work / 'study_report' / 'study.csv'))) == rows
  manifest = json.loads((work / 'study.json').read_text())
  assert len(manifest['invocations']) == 2 and manifest['changes'] == changes
  assert json.loads((work / 'step_times.json').read_text()) == timed  # not timed again
  assert 'changed from the study\'s definition' in (work / 'study_report' / 'study.md').read_text()

  other = th.run(cmd + changes[:-1], env)
  assert other.returncode == 2 and 'use another --workdir' in other.stderr
  assert len(json.loads((work / 'study.json').read_text())['invocations']) == 2


def test_every_study_states_its_rule_and_runs_all_five_variants_with_three_seeds():
  assert set(study.STUDIES) == {'small-cifar10', 'small-mnist'} and study.SEEDS == 3
  for s in study.STUDIES.values():
    assert s.rule and s.why and s.overrides['num_epochs'] > 0
