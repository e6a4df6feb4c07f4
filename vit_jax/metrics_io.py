"""What a run leaves in its workdir: metrics.csv, config.json, summary.json, TensorBoard."""
import csv
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np

log = logging.getLogger(__name__)

COLUMNS = ('epoch', 'step', 'train_loss', 'train_acc', 'val_loss', 'val_acc', 'lr',
           'epoch_time_s', 'images_per_s', 'peak_memory_mib', 'memory_source')


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
