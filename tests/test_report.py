"""Tests for vit_jax/report.py and vit_jax/plots.py on synthetic workdirs (no training)."""
import csv
import json
import os
import pathlib
import statistics
import subprocess
import sys

import pytest
from PIL import Image

from vit_jax.tools import report

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
HEADER = ('epoch,step,train_loss,train_acc,val_loss,val_acc,lr,epoch_time_s,images_per_s,'
          'peak_memory_mib,memory_source')
# Validation accuracy per epoch for each (variant, seed); the first epoch's time includes
# compilation (30 s), later epochs take base + seed / 10 seconds.
VAL_ACC = {
    ('vit', 0): [0.30, 0.45, 0.52, 0.50],
    ('vit', 1): [0.32, 0.47, 0.49, 0.51],
    ('vit', 2): [0.28, 0.40, 0.55, 0.54],
    ('bdia', 0): [0.25, 0.41, 0.50, 0.53],
    ('bdia', 1): [0.27, 0.44, 0.46, 0.45],
    ('bdia', 2): [0.26, 0.39, 0.48, 0.47],
}
EPOCH_TIME = {'vit': 10.0, 'bdia': 14.0}
MEMORY = {'vit': 900.0, 'bdia': 400.0}
PARAMS = {'vit': 9_622_512, 'bdia': 9_622_512}


def _config(variant, seed, depth=6, **extra):
  c = {'dataset': 'cifar10', 'data_dir': '', 'seed': seed, 'num_epochs': 4, 'batch_size': 128,
       'learning_rate': 1e-4, 'optimizer': 'setadam', 'progress_bar': True,
       'log_every_steps': 50, 'checkpoint_every_epochs': 1, 'keep_checkpoints': 3,
       'model': {'variant': variant, 'depth': depth, 'dim': 512},
       'bdia': {'quant_bits': 9}, 'momentum_net': {'quant_bits': 9}}
  c.update(extra)
  return c


def _write_run(d, config, val_acc, epoch_time, memory=None, summary=None, source='device_peak'):
  d.mkdir(parents=True)
  (d / 'config.json').write_text(json.dumps(config))
  lines = [HEADER]
  for e, acc in enumerate(val_acc):
    t = 30.0 if e == 0 else epoch_time
    mem = '' if memory is None else f'{memory:.1f}'
    lines.append(f'{e},{(e + 1) * 390},{2.3 - 2 * acc:.3f},{acc - 0.05:.3f},{1.9 - 0.3 * e:.3f},'
                 f'{acc},1e-4,{t},{50000 / t:.3f},{mem},{source if memory else ""}')
  (d / 'metrics.csv').write_text('\n'.join(lines) + '\n')
  if summary is not None:
    (d / 'summary.json').write_text(json.dumps(summary))


@pytest.fixture(name='runs_root')
def fixture_runs_root(tmp_path):
  """2 variants x 3 seeds (bdia seed 2 unfinished) + 1 unfinished bdia depth=12 run."""
  root = tmp_path / 'runs'
  for (variant, seed), accs in VAL_ACC.items():
    finished = not (variant == 'bdia' and seed == 2)
    accs = accs if finished else accs[:3]
    summary = {'variant': variant, 'dataset': 'cifar10', 'seed': seed,
               'epochs_completed': len(accs), 'best_val_acc': max(accs),
               'final_val_acc': accs[-1], 'params': PARAMS[variant],
               'peak_memory_mib': MEMORY[variant], 'memory_source': 'device_peak',
               'compile_time_s': 12.0, 'finished': finished}
    # Bookkeeping fields differ between seeds and must not split the group.
    config = _config(variant, seed, progress_bar=bool(seed % 2), checkpoint_every_steps=seed)
    _write_run(root / variant / f'seed{seed}', config, accs, EPOCH_TIME[variant] + seed / 10,
               memory=MEMORY[variant], summary=summary)
  _write_run(root / 'deep' / 'bdia_d12_s0', _config('bdia', 0, depth=12), [0.2, 0.35],
             20.0, memory=None)  # unfinished: no summary.json, no memory numbers
  return root


def _expected(variant, seeds_epochs):
  accs = [VAL_ACC[(variant, s)][:n] for s, n in seeds_epochs]
  best = [100 * max(a) for a in accs]
  final = [100 * a[-1] for a in accs]
  return best, final


def test_table_values(runs_root, tmp_path):
  rows = report.build_report([str(runs_root)], str(tmp_path / 'out'), plots=False)
  by_label = {r['label']: r for r in rows}
  assert list(by_label) == ['vit', 'bdia depth=6', 'bdia depth=12']

  vit = by_label['vit']
  best, final = _expected('vit', [(0, 4), (1, 4), (2, 4)])
  assert vit['n_seeds'] == 3 and vit['n_finished'] == 3 and sorted(vit['seeds']) == [0, 1, 2]
  assert vit['best_val_acc_pct_mean'] == pytest.approx(statistics.mean(best))
  assert vit['best_val_acc_pct_std'] == pytest.approx(statistics.stdev(best))  # ddof=1
  assert vit['final_val_acc_pct_mean'] == pytest.approx(statistics.mean(final))
  assert vit['final_val_acc_pct_std'] == pytest.approx(statistics.stdev(final))
  assert vit['best_epoch_mean'] == pytest.approx((2 + 3 + 2) / 3)
  # Epoch time excludes the first (compiling) epoch: 10.0, 10.1, 10.2 -> 10.1.
  assert vit['epoch_time_s'] == pytest.approx(10.1)
  images_per_s = statistics.mean(50000 / (10 + s / 10) for s in range(3))
  assert vit['images_per_s'] == pytest.approx(images_per_s, rel=1e-5)
  assert vit['peak_memory_mib'] == 900.0 and vit['memory_source'] == 'device_peak'
  assert vit['params'] == 9_622_512 and vit['epochs_min'] == vit['epochs_max'] == 4

  bdia = by_label['bdia depth=6']  # seed 2 stopped after 3 epochs and is reported from metrics.csv
  best, final = _expected('bdia', [(0, 4), (1, 4), (2, 3)])
  assert bdia['n_seeds'] == 3 and bdia['n_finished'] == 2
  assert (bdia['epochs_min'], bdia['epochs_max']) == (3, 4)
  assert bdia['best_val_acc_pct_mean'] == pytest.approx(statistics.mean(best))
  assert bdia['best_val_acc_pct_std'] == pytest.approx(statistics.stdev(best))
  assert bdia['final_val_acc_pct_mean'] == pytest.approx(statistics.mean(final))
  assert bdia['epoch_time_s'] == pytest.approx(statistics.mean([14.0, 14.1, 14.2]))

  deep = by_label['bdia depth=12']  # one seed: no std, no memory
  assert deep['n_seeds'] == 1 and deep['n_finished'] == 0
  assert deep['best_val_acc_pct_mean'] == pytest.approx(35.0)
  assert deep['best_val_acc_pct_std'] is None and deep['peak_memory_mib'] is None
  assert deep['epoch_time_s'] == pytest.approx(20.0) and deep['params'] is None


def _time_to(variant, seed, target, epochs=4):
  """Seconds of training until the first epoch with val_acc >= target (fixture's times)."""
  elapsed = 0.0
  for e, acc in enumerate(VAL_ACC[(variant, seed)][:epochs]):
    elapsed += 30.0 if e == 0 else EPOCH_TIME[variant] + seed / 10
    if acc >= target:
      return elapsed
  return None


def test_time_to_accuracy_default_target(runs_root, tmp_path):
  # Default target: the lowest best accuracy of the finished runs (bdia seed 1: 46 %),
  # rounded down to a whole percent; the unfinished runs do not set it.
  rows = {r['label']: r for r in
          report.build_report([str(runs_root)], str(tmp_path / 'o'), plots=False)}
  assert [r['target_acc_pct'] for r in rows.values()] == pytest.approx([46.0] * 3)
  vit = [_time_to('vit', s, 0.46) for s in range(3)]
  assert vit == pytest.approx([50.0, 40.1, 50.4])
  assert rows['vit']['time_to_target_s_mean'] == pytest.approx(statistics.mean(vit))
  assert rows['vit']['time_to_target_s_std'] == pytest.approx(statistics.stdev(vit))
  assert rows['vit']['n_reached_target'] == 3
  bdia = [_time_to('bdia', s, 0.46, 3 if s == 2 else 4) for s in range(3)]
  assert rows['bdia depth=6']['time_to_target_s_mean'] == pytest.approx(statistics.mean(bdia))
  deep = rows['bdia depth=12']  # best 35 %: never reaches the target
  assert deep['n_reached_target'] == 0 and deep['time_to_target_s_mean'] is None


def test_time_to_accuracy_explicit_target(runs_root, tmp_path):
  out = tmp_path / 'o'
  assert report.main([str(runs_root), '--out', str(out), '--target-acc', '50']) == 0
  with open(out / 'results.csv', newline='') as f:
    rows = {r['label']: r for r in csv.DictReader(f)}
  vit = [_time_to('vit', s, 0.50) for s in range(3)]
  assert vit == pytest.approx([50.0, 60.3, 50.4])  # seed 1 reaches 51 % only in epoch 4
  assert float(rows['vit']['time_to_target_s_mean']) == pytest.approx(statistics.mean(vit))
  # bdia: only seed 0 reaches 50 %; the mean is over it alone and the table says 1/3.
  assert rows['bdia depth=6']['n_reached_target'] == '1'
  assert float(rows['bdia depth=6']['time_to_target_s_mean']) == pytest.approx(58.0)
  md = (out / 'results.md').read_text()
  assert '| 58 ± — (1/3 reached) |' in md and 'not reached (0/1)' in md
  assert 'Target: 50 % (cifar10)' in md and 'reached 50% after 50.0 s' in md
  with pytest.raises(SystemExit, match='--target-acc must be a percentage'):
    report.main([str(runs_root), '--out', str(out), '--target-acc', '0.5e3'])


def test_outputs_md_csv_and_pngs(runs_root, tmp_path, capsys):
  out = tmp_path / 'out'
  assert report.main([str(runs_root), '--out', str(out)]) == 0
  md = (out / 'results.md').read_text()
  assert '| vit | cifar10 | 3 | 3/3 | 4 |' in md
  assert '| bdia depth=6 | cifar10 | 3 | 2/3 | 3–4 |' in md
  assert '| bdia depth=12 | cifar10 | 1 | 0/1 | 2 | 35.00 ± — |' in md
  best, _ = _expected('vit', [(0, 4), (1, 4), (2, 4)])
  assert f'{statistics.mean(best):.2f} ± {statistics.stdev(best):.2f}' in md
  assert 'excluding the first one' in md and '"final" is the last' in md
  assert str(runs_root / 'deep' / 'bdia_d12_s0') in md and '**unfinished**' in md

  with open(out / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['label'] for r in rows] == ['vit', 'bdia depth=6', 'bdia depth=12']
  assert float(rows[0]['epoch_time_s']) == pytest.approx(10.1)
  assert rows[2]['best_val_acc_pct_std'] == '' and rows[2]['peak_memory_mib'] == ''

  for name in ('val_acc.png', 'val_acc_vs_time.png', 'train_loss.png', 'memory.png',
               'acc_vs_memory.png'):
    path = out / name
    assert path.read_bytes()[:8] == PNG_SIGNATURE, name
    with Image.open(path) as img:
      assert img.format == 'PNG' and img.size[0] > 0 and img.size[1] > 0
      img.verify()
  assert 'unfinished' in capsys.readouterr().out


def test_grouping_labels_and_dedup(tmp_path, capsys):
  root = tmp_path / 'r'
  _write_run(root / 'a', _config('vit', 0, learning_rate=3e-4), [0.5], 10.0)
  _write_run(root / 'b', _config('vit', 1, learning_rate=1e-4), [0.6], 10.0)
  _write_run(root / 'c', _config('revvit', 0), [0.4], 10.0)
  _write_run(root / 'd', _config('revvit', 1), [], 10.0)  # just started: header only, skipped
  # The same run reached twice (parent and itself) counts once.
  rows = report.build_report([str(root), str(root / 'a')], str(tmp_path / 'o'), plots=False)
  assert [r['label'] for r in rows] == ['vit learning_rate=0.0001', 'vit learning_rate=0.0003',
                                        'revvit']
  assert all(r['n_seeds'] == 1 for r in rows)
  assert 'metrics.csv has no epochs yet' in capsys.readouterr().out


def test_skips_plots_without_memory_or_matplotlib(tmp_path, capsys, monkeypatch):
  root = tmp_path / 'r'
  _write_run(root / 'a', _config('vit', 0), [0.5, 0.6], 10.0)
  report.build_report([str(root)], str(tmp_path / 'o'))
  assert (tmp_path / 'o' / 'val_acc.png').exists()
  assert not (tmp_path / 'o' / 'memory.png').exists()
  assert 'skipping memory.png' in capsys.readouterr().out
  monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib -> ImportError
  report.build_report([str(root)], str(tmp_path / 'p'))
  assert (tmp_path / 'p' / 'results.md').exists() and not (tmp_path / 'p' / 'val_acc.png').exists()
  assert 'matplotlib is not installed' in capsys.readouterr().out


def test_empty_folder_error(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(SystemExit) as e:
    report.main([str(tmp_path / 'empty'), '--out', str(tmp_path / 'o')])
  assert 'no run directories' in str(e.value) and str(tmp_path / 'empty') in str(e.value)


@pytest.mark.parametrize('content, message', [
    ('', 'empty file'),
    ('epoch,step,train_loss\n0,1,2.0\n', 'missing column(s) val_acc'),
    (HEADER + '\n0,390,2.0,0.1,1.9,oops,1e-4,30,1000,,\n', 'line 2'),
    (HEADER + '\n0,390,2.0\n', 'line 2 has a different number of fields'),
])
def test_malformed_metrics_error(tmp_path, content, message):
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'metrics.csv').write_text(content)
  with pytest.raises(SystemExit) as e:
    report.main([str(run), '--out', str(tmp_path / 'o')])
  assert message in str(e.value) and str(run / 'metrics.csv') in str(e.value)


def test_cli_exit_status(tmp_path):
  (tmp_path / 'empty').mkdir()
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.run([sys.executable, '-m', 'vit_jax.tools.report', str(tmp_path / 'empty'),
                         '--out', str(tmp_path / 'o')], capture_output=True, text=True, env=env,
                        cwd=tmp_path, timeout=60, check=False)
  assert proc.returncode != 0
  last_line = proc.stderr.strip().splitlines()[-1]
  assert last_line.startswith('report: error: no run directories')
