"""train_and_evaluate in-process: config files, a 2-step run and its files, MNIST for real."""
import csv
import dataclasses
import json
import logging
import os
import sys
import time

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

import train_helpers as th
from vit_jax.training import config_checks, config_defaults, run_files, train_lib

CONFIGS = sorted((th.ROOT / 'configs').glob('*_*.py'))
OVERRIDES = ['--config.num_epochs=7', '--config.model.dim=48', '--config.learning_rate=0.5',
             '--config.dataset=folder:/data/x', '--config.bf16=True', '--config.bdia.quant_bits=8',
             '--config.checkpoint_every_steps=100', '--config.on_nonfinite=skip']


def _load(path, *overrides):
  """The config as train.py's flags parse it (overrides are read from sys.argv)."""
  argv, values = ['train.py', f'--config={path}', *overrides], flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=values, lock_config=True)
  saved, sys.argv = sys.argv, argv
  try:
    values(argv)
    return values.config
  finally:
    sys.argv = saved


@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')  # ml_collections
@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_file_loads_and_overrides_parse(path):
  variant, dataset = path.stem.split('_')
  config = _load(path)
  assert (config.model.variant, config.dataset) == (variant, dataset)
  config_checks.check_config(config, num_devices=1)
  config = _load(path, *OVERRIDES)
  assert (config.num_epochs, config.model.dim, config.learning_rate) == (7, 48, 0.5)
  assert (config.dataset, config.bf16, config.bdia.quant_bits) == ('folder:/data/x', True, 8)
  assert (config.checkpoint_every_steps, config.on_nonfinite) == (100, 'skip')
  config_checks.check_config(config, num_devices=1)
  assert isinstance(config.learning_rate, float) and isinstance(config.num_epochs, int)


def _tiny_config(data, **fields):
  c = config_defaults.get_config()
  c.model.update(image_size=8, num_classes=2, patch_size=4, dim=16, depth=2, heads=2,
                 dim_head=8, mlp_dim=32, dropout=0.0, emb_dropout=0.0)
  c.update(dataset=f'folder:{data}', batch_size=8, eval_batch_size=8, num_epochs=1,
           optimizer='sgd', learning_rate=0.01, progress_bar=False, tensorboard=False)
  c.update(**fields)
  return c


def test_two_step_train_and_eval(tmp_path, caplog):
  """16 images, batch 8: one epoch of 2 steps, then evaluation; every file is written."""
  caplog.set_level(logging.INFO, logger='vit_jax')
  data = th.make_image_folder(tmp_path / 'data', classes=2, train=8, test=3)
  config, work = _tiny_config(data, tensorboard=True), tmp_path / 'run'
  summary = train_lib.train_and_evaluate(config, str(work))
  assert summary['finished'] and summary['epochs_completed'] == 1
  assert summary['num_devices'] == jax.device_count() and summary['compile_time_s'] > 0
  assert 0 <= summary['final_val_acc'] <= 1 and summary['params'] > 0
  assert summary['last_checkpoint_step'] == 2 and summary['resumed_from_step'] == 0
  assert json.loads((work / 'summary.json').read_text()) == summary
  assert json.loads((work / 'config.json').read_text()) == config.to_dict()
  with open(work / 'metrics.csv', newline='') as f:
    (row,) = list(csv.DictReader(f))
  assert tuple(row) == run_files.COLUMNS
  assert (row['epoch'], row['step']) == ('1', '2') and float(row['images_per_s']) > 0
  assert np.isfinite([float(row[k]) for k in ('train_loss', 'val_loss', 'peak_memory_mib')]).all()
  assert os.listdir(work / 'checkpoints') == ['2']
  assert 'train step compiled in' in caplog.text
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(work / 'tensorboard'))

  # The same command again: nothing to train, nothing compiled, nothing duplicated.
  t0 = time.perf_counter()
  again = train_lib.train_and_evaluate(config, str(work))
  assert time.perf_counter() - t0 < 10 and again['compile_time_s'] == 0.0
  assert again['epochs_completed'] == 1 and again['final_val_acc'] == summary['final_val_acc']
  assert len(run_files.MetricsCsv(str(work)).rows()) == 1

  # Without config.json the checkpoint itself refuses another run's config.
  (work / 'config.json').unlink()
  with pytest.raises(train_lib.TrainingError, match=r'another config \(learning_rate differ\)'):
    train_lib.train_and_evaluate(_tiny_config(data, learning_rate=0.5), str(work))
  assert os.listdir(work / 'checkpoints') == ['2']


MNIST = th.SHARED_DATA / 'mnist'


@pytest.mark.slow
@pytest.mark.skipif(not (MNIST / 't10k-images-idx3-ubyte.gz').exists(),
                    reason=f'MNIST IDX files not found in {MNIST}')
def test_mnist_small_vit_learns(tmp_path):
  """A small ViT on the MNIST test images (first 8,000 train, last 2,000 eval), ~1 min.

  On 2 CPU cores it reaches 92.1% after 6 epochs (20 s of training, ~35 s in all); the
  90% threshold leaves a margin for other platforms' numerics and seeds. train.py runs it,
  compiled as training compiles (this test's time is execution, not compilation).
  """
  model = dict(patch_size=7, dim=64, depth=2, heads=4, dim_head=16, mlp_dim=128,
               dropout=0.0, emb_dropout=0.0)
  run = dict(dataset=f'mnist_idx:{MNIST}', num_epochs=6, batch_size=32, optimizer='adamw',
             learning_rate=3e-3, warmup_epochs=0.3, progress_bar=False, tensorboard=False,
             eval_batch_size=1000)
  overrides = [*(f'--config.model.{k}={v}' for k, v in model.items()),
               *(f'--config.{k}={v}' for k, v in run.items())]
  work = tmp_path / 'mnist'
  result = th.run(th.train_cmd(work, *overrides, config='configs/vit_mnist.py'),
                  th.cli_env(tmp_path / 'cache', level=3))
  assert result.returncode == 0, result.stderr
  summary = th.run_files.read_json(work / 'summary.json')
  assert '8000/2000' in summary['data_note']
  print(f"MNIST: final val acc {summary['final_val_acc']:.4f} (best {summary['best_val_acc']:.4f})"
        f", {summary['total_train_time_s']:.0f} s training")
  assert summary['final_val_acc'] >= 0.90, summary


def test_workdir_written_before_a_new_field_still_resumes(tmp_path):
  """A config.json from an older version lacks new fields: their defaults match."""
  config = config_defaults.get_config()
  old = config.to_dict()
  del old['train_examples'], old['model']['emb_dropout']
  (tmp_path / 'config.json').write_text(json.dumps(old))
  config_checks.check_workdir(config, str(tmp_path))  # no error
  config.train_examples = 100
  with pytest.raises(config_checks.ConfigError, match='train_examples'):
    config_checks.check_workdir(config, str(tmp_path))


def test_missing_tensorboard_is_one_warning_not_an_error(tmp_path, monkeypatch, caplog):
  import flax.metrics
  monkeypatch.delattr(flax.metrics, 'tensorboard', raising=False)
  monkeypatch.setitem(sys.modules, 'flax.metrics.tensorboard', None)  # import fails
  tb = run_files.TensorBoard(str(tmp_path), enabled=True)
  tb.scalars(1, {'loss': 1.0})
  assert tb.writer is None and 'no TensorBoard events (' in caplog.text
  assert '--config.tensorboard=False' in caplog.text


def test_presets_augment_as_the_original():
  """CIFAR-10: random crops (padding 4) and flips; MNIST: flips and no crop."""
  from vit_jax.training import data
  digits = data.Dataset('mnist', *(np.zeros((2, 8, 8, 1), np.uint8), np.zeros(2, np.int32)) * 2,
                        data.MNIST_CLASSES, data.MNIST_MEAN, data.MNIST_STD, flip=False)
  mnist, cifar = config_defaults.preset('vit', 'mnist'), config_defaults.preset('vit', 'cifar10')
  mnist.batch_size = cifar.batch_size = 1
  assert {k: data.dataset_info(digits, mnist)[k] for k in ('flip', 'crop_padding')} == \
      {'flip': True, 'crop_padding': 0}
  # 'auto' leaves single-channel images unflipped; 'no' never flips
  assert data.dataset_info(digits, cifar)['flip'] is False
  assert data.dataset_info(digits, cifar)['crop_padding'] == 4
  cifar.random_flip = 'no'
  assert data.dataset_info(dataclasses.replace(digits, flip=True), cifar)['flip'] is False
