"""evaluate: a finished run's checkpoint gives the accuracy its summary.json reports, per
class and exported; bad input is one line and writes nothing."""
import csv
import json
import sys

import jax
import numpy as np

import train_helpers as th
from vit_jax.training import config_defaults, train_lib


def test_evaluate_reproduces_the_summary_writes_per_class_and_exports(tmp_path):
  images = th.make_image_folder(tmp_path / 'data', classes=3, train=8, test=5)
  config = th.tiny_config('vit', f'--config.dataset=folder:{images}', '--config.num_epochs=2',
                          '--config.batch_size=8', '--config.eval_batch_size=4',
                          '--config.model.num_classes=3', '--config.progress_bar=False',
                          '--config.tensorboard=False', '--config.keep_checkpoints=0')
  run = tmp_path / 'run'
  summary = train_lib.train_and_evaluate(config, str(run))
  env = th.cli_env(tmp_path / 'cache')
  tool = [sys.executable, '-m', 'vit_jax.tools.evaluate', '--workdir', str(run)]
  out = th.run([*tool, '--step', 'best', '--export', str(tmp_path / 'model.npz')], env)
  assert out.returncode == 0, out.stderr
  best_step = summary['best_epoch'] * 3  # 24 images, batch 8: 3 steps an epoch
  folder = run / 'evaluation' / f'seed0-step{best_step}'
  assert f'accuracy {100 * summary["best_val_acc"]:.2f} % on 15 images' in out.stdout
  rows = list(csv.DictReader(open(folder / 'per_class.csv')))
  assert [r['class'] for r in rows] == ['c0', 'c1', 'c2'] and all(r['images'] == '5' for r in rows)
  assert sum(int(r['correct']) for r in rows) == round(15 * summary['best_val_acc'])
  confusion = list(csv.reader(open(folder / 'confusion.csv')))
  assert confusion[0] == ['true \\ predicted', 'c0', 'c1', 'c2'] and len(confusion) == 4
  assert (folder / 'confusion.png').stat().st_size > 0
  saved, meta = np.load(tmp_path / 'model.npz'), json.loads((tmp_path / 'model.json').read_text())
  _, train, _ = th.checkpoints.load_arrays(str(run), best_step)
  flat = {'/'.join(str(k.key) for k in path): leaf for path, leaf in
          jax.tree_util.tree_leaves_with_path(train['state']['params'])}
  assert set(saved.files) == set(flat) and all(np.array_equal(saved[k], flat[k]) for k in flat)
  assert meta['classes'] == ['c0', 'c1', 'c2'] and meta['step'] == best_step
  last = th.run(tool, env)  # the final epoch: summary's final accuracy
  assert f'accuracy {100 * summary["final_val_acc"]:.2f} %' in last.stdout

  before = th.tree_digest(run)
  for args, says in ((['--seed', '5'], 'the run in'), (['--step', '7'], 'choose last, best'),
                     (['--dataset', 'folder:/nowhere'], 'does not exist')):
    bad = th.run([*tool, *args], env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert bad.stderr.startswith('evaluate: error: ') and says in bad.stderr
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'config.json').write_text(json.dumps(config_defaults.get_config().to_dict()))
  none = th.run([sys.executable, '-m', 'vit_jax.tools.evaluate', '--workdir', str(empty)], env)
  assert none.returncode == 2 and 'no checkpoint in' in none.stderr
  assert th.tree_digest(run) == before and sorted(p.name for p in empty.iterdir()) == [
      'config.json']
