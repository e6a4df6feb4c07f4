"""The workdir format: what a run writes (metrics.csv, config.json, summary.json,
TensorBoard events) and how the report reads it back.

A run with one model writes into its workdir; with several (``config.parallel_seeds``)
model k writes into ``workdir/seed<seed+k>/`` (``model_dirs``). The readers (from
``find_run_dirs`` on) fail with one ``SystemExit`` line naming the bad file, and give
per run the numbers the report aggregates over seeds, including the training time until
the validation accuracy first reached a target (``time_to_accuracy``).
"""
import csv
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

# train_loss/train_acc: running means over the epoch's training steps (augmented, dropout,
# BDIA's γ); train_eval_*: config.train_eval_examples training images evaluated as the
# validation set is (empty when off). epoch_time_s: training steps only, no evaluation.
COLUMNS = ('epoch', 'step', 'train_loss', 'train_acc', 'val_loss', 'val_acc', 'train_eval_loss',
           'train_eval_acc', 'lr', 'epoch_time_s', 'images_per_s', 'peak_memory_mib',
           'memory_source')


def write_json(path: str, obj) -> None:
  """Writes atomically (temp file + rename): a kill never leaves half a file."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', suffix='.tmp')
  with os.fdopen(fd, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)


def move_aside(workdir: str) -> None:
  """--fresh: renames a non-empty ``workdir`` to ``<workdir>.old-<time>``; deletes nothing.

  The lock file (``workdir_lock``) alone does not make a run.
  """
  if os.path.exists(workdir) and set(os.listdir(workdir)) - {'.lock'}:
    aside = f'{os.path.abspath(workdir).rstrip(os.sep)}.old-{time.strftime("%Y%m%d-%H%M%S")}'
    shutil.move(workdir, aside)
    log.warning('--fresh: moved the previous run to %s', aside)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _complete(row: dict) -> bool:
  try:
    int(row['epoch'])
    float(row['val_acc'])
    return row.get('memory_source') not in (None, '')
  except (KeyError, TypeError, ValueError):
    return False


class MetricsCsv:
  """``workdir/metrics.csv``, one row per epoch; resuming never duplicates a row."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'metrics.csv')

  def rows(self) -> list[dict]:
    """The complete rows (a row cut short by a kill is skipped)."""
    if not os.path.exists(self.path):
      return []
    with open(self.path, newline='') as f:
      return [r for r in csv.DictReader(f) if _complete(r)]

  def keep_epochs_up_to(self, epoch: int) -> None:
    """Drops rows after ``epoch`` (written after the checkpoint we resume from)."""
    rows = {int(r['epoch']): r for r in self.rows() if int(r['epoch']) <= epoch}
    rows = [rows[e] for e in sorted(rows)]  # one row per epoch, the last one written
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), suffix='.tmp')
    with os.fdopen(fd, 'w', newline='') as f:
      writer = csv.DictWriter(f, COLUMNS, extrasaction='ignore')
      writer.writeheader()
      writer.writerows(rows)
    os.replace(tmp, self.path)

  def append(self, row: dict) -> None:
    with open(self.path, 'a', newline='') as f:
      csv.DictWriter(f, COLUMNS, extrasaction='ignore').writerow(row)
      f.flush()
      os.fsync(f.fileno())


def model_dirs(workdir: str, seeds) -> list[str]:
  """Where each model of a run writes: ``workdir`` for one, ``workdir/seed<s>`` for several."""
  if np.ndim(seeds) == 0:
    return [workdir]
  return [os.path.join(workdir, f'seed{int(s)}') for s in seeds]


class TensorBoard:
  """Scalars to TensorBoard event files when TensorFlow's summary writer is importable."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.writer = None
    if enabled:
      try:
        from flax.metrics import tensorboard  # imports TensorFlow and TensorBoard
        self.writer = tensorboard.SummaryWriter(os.path.join(workdir, 'tensorboard'))
      except Exception as e:  # metrics.csv has everything; say why there are no events
        log.warning('no TensorBoard events (%s: %s): pip install tensorflow-cpu tensorboard, '
                    'or set --config.tensorboard=False', type(e).__name__, e)

  def scalars(self, step: int, values: dict) -> None:
    if self.writer:
      for k, v in values.items():
        if isinstance(v, (int, float)):
          self.writer.scalar(k, v, step)
      self.writer.flush()


class ModelFolder:
  """One model's outputs: metrics.csv, config.json, summary.json and TensorBoard events.

  Only the process that writes (``writer``) creates the folder and the event files.
  """

  def __init__(self, path: str, writer: bool, tensorboard: bool):
    if writer:
      os.makedirs(path, exist_ok=True)
    self.path, self.metrics = path, MetricsCsv(path)
    self.tb = TensorBoard(path, writer and tensorboard)

  def write_json(self, name: str, obj) -> None:
    write_json(os.path.join(self.path, name), obj)


# ---------------------------------------------------------------- reading runs back
_REQUIRED = ('epoch', 'val_acc')
_FLOAT_COLS = ('step', 'train_loss', 'train_acc', 'val_loss', 'val_acc', 'train_eval_loss',
               'train_eval_acc', 'lr', 'epoch_time_s', 'images_per_s', 'peak_memory_mib')


def _fail(msg: str):
  raise SystemExit(f'report: error: {msg}')


def find_run_dirs(paths: Sequence[str]) -> list[str]:
  """Workdirs (folders holding metrics.csv) at or below each path, sorted, no duplicates."""
  found, seen = [], set()
  for path in paths:
    if not os.path.isdir(path):
      _fail(f'no such directory: {path}')
    for root, dirs, files in os.walk(path):
      dirs.sort()
      if 'metrics.csv' in files:
        dirs.clear()  # a workdir's subfolders are checkpoints, not runs
        key = os.path.realpath(root)
        if key not in seen:
          seen.add(key)
          found.append(root)
  if not found:
    _fail('no run directories (folders containing metrics.csv) found under: ' + ', '.join(paths))
  return found


def read_metrics(path: str) -> dict[str, Any]:
  """Columns of a metrics.csv as arrays (one entry per epoch, sorted, last row per epoch wins).

  Empty cells become NaN (numbers) or '' (memory_source). Raises SystemExit naming the file
  for an unreadable file, a missing header or required column, or a non-numeric cell.
  """
  try:
    with open(path, newline='') as f:
      reader = csv.DictReader(f)
      header = reader.fieldnames
      if not header:
        _fail(f'malformed {path}: empty file, expected a header line')
      missing = [c for c in _REQUIRED if c not in header]
      if missing:
        _fail(f'malformed {path}: missing column(s) {", ".join(missing)}')
      rows = {}
      for row in reader:
        line = reader.line_num
        if None in row or None in row.values():
          _fail(f'malformed {path}: line {line} has a different number of fields than the header')
        try:
          rec = {c: float(row[c]) if row[c].strip() else math.nan for c in _FLOAT_COLS if c in row}
          rec['epoch'] = int(float(row['epoch']))
        except ValueError as e:
          _fail(f'malformed {path}: line {line}: {e}')
        rec['memory_source'] = row.get('memory_source') or ''
        rows[rec['epoch']] = rec  # a resumed run may repeat epochs: keep the latest
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    _fail(f'cannot read {path}: {e}')
  recs = [rows[e] for e in sorted(rows)]
  out = {c: np.array([r.get(c, math.nan) for r in recs], dtype=float) for c in _FLOAT_COLS}
  out['epoch'] = np.array([r['epoch'] for r in recs], dtype=int)
  return dict(out, memory_source=[r['memory_source'] for r in recs])


def _read_json(path: str) -> dict | None:
  """The JSON object in ``path``; None when the file does not exist."""
  if not os.path.exists(path):
    return None
  try:
    data = read_json(path)
  except (OSError, ValueError) as e:
    _fail(f'cannot read {path}: {e}')
  if not isinstance(data, dict):
    _fail(f'malformed {path}: expected a JSON object')
  return data


def _steady_mean(values: np.ndarray) -> float | None:
  """Mean over epochs, without the first one (it includes compilation) when there are ≥2."""
  values = values[1:] if len(values) >= 2 else values
  values = values[np.isfinite(values)]
  return float(values.mean()) if len(values) else None


def load_run(run_dir: str) -> dict | None:
  """One run's config, summary, metrics and per-run numbers; None when no epoch is recorded."""
  m = read_metrics(os.path.join(run_dir, 'metrics.csv'))
  if not len(m['epoch']):
    print(f'note: skipping {run_dir}: metrics.csv has no epochs yet')
    return None
  config = _read_json(os.path.join(run_dir, 'config.json'))
  summary = _read_json(os.path.join(run_dir, 'summary.json')) or {}
  cfg = config or {}
  acc = m['val_acc']
  best_i = int(np.nanargmax(acc)) if np.isfinite(acc).any() else None
  run = dict(
      dir=run_dir, config=config, metrics=m, finished=bool(summary.get('finished', False)),
      variant=str(cfg.get('model', {}).get('variant') or summary.get('variant') or 'unknown'),
      dataset=str(cfg.get('dataset') or summary.get('dataset') or '?'),
      seed=cfg.get('seed', summary.get('seed')), planned_epochs=cfg.get('num_epochs'),
      epochs=len(m['epoch']), final_val_acc=float(acc[-1]),
      best_val_acc=None if best_i is None else float(acc[best_i]),
      best_epoch=None if best_i is None else int(m['epoch'][best_i]),
      epoch_time_s=_steady_mean(m['epoch_time_s']),
      images_per_s=_steady_mean(m['images_per_s']) or summary.get('images_per_s'),
      params=summary.get('params'), compile_time_s=summary.get('compile_time_s'),
      peak_memory_mib=summary.get('peak_memory_mib'),
      memory_source=summary.get('memory_source') or '')
  mem = m['peak_memory_mib']
  if run['peak_memory_mib'] is None and np.isfinite(mem).any():
    i = int(np.nanargmax(mem))
    run['peak_memory_mib'], run['memory_source'] = float(mem[i]), m['memory_source'][i]
  s_best, best = summary.get('best_val_acc'), run['best_val_acc']
  if s_best is not None and best is not None and abs(s_best - best) > 1e-6:
    print(f'note: {run_dir}: summary.json best_val_acc differs from metrics.csv; using metrics.csv')
  return run


def time_to_accuracy(metrics: dict[str, Any], target: float) -> float | None:
  """Training seconds until the first epoch whose val_acc ≥ ``target`` (a fraction).

  The time is the sum of ``epoch_time_s`` up to and including that epoch: training only
  (evaluation excluded), XLA compilation included, as a user waits for it. None when no
  recorded epoch reaches the target or an epoch before it has no time.
  """
  reached = np.flatnonzero(metrics['val_acc'] >= target - 1e-9)
  if not len(reached):
    return None
  elapsed = float(np.sum(metrics['epoch_time_s'][:reached[0] + 1]))
  return elapsed if math.isfinite(elapsed) else None


def default_targets(runs: Sequence[dict]) -> dict[str, float]:
  """Per dataset, the target accuracy every run reaches: the lowest best val_acc, in whole %.

  Rounding down to a whole percent keeps the label readable and the target reached by
  every run, so each has a time. Unfinished runs count only where no run has finished:
  a run stopped after its first epoch would otherwise set a target of little meaning.
  """
  targets = {}
  for dataset in dict.fromkeys(r['dataset'] for r in runs):
    mine = [r for r in runs if r['dataset'] == dataset and r['best_val_acc'] is not None]
    best = [r['best_val_acc'] for r in ([r for r in mine if r['finished']] or mine)]
    if best:
      targets[dataset] = math.floor(100.0 * min(best) + 1e-9) / 100.0
  return targets
