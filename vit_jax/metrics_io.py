"""What a run leaves in its workdir: metrics.csv, config.json, summary.json, TensorBoard."""
import csv
import json
import os
import tempfile

COLUMNS = ('epoch', 'step', 'train_loss', 'train_acc', 'val_loss', 'val_acc', 'lr',
           'epoch_time_s', 'images_per_s', 'peak_memory_mib', 'memory_source')


def write_json(path: str, obj) -> None:
  """Writes atomically (temp file + rename): a kill never leaves half a file."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', suffix='.tmp')
  with os.fdopen(fd, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


class MetricsCsv:
  """``workdir/metrics.csv``, one row per epoch; resuming never duplicates a row."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'metrics.csv')

  def rows(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path, newline='') as f:
      return [r for r in csv.DictReader(f) if r.get('epoch')]

  def keep_epochs_up_to(self, epoch: int) -> None:
    """Drops rows after ``epoch`` (written after the checkpoint we resume from)."""
    rows = [r for r in self.rows() if int(r['epoch']) <= epoch]
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


class TensorBoard:
  """Scalars to TensorBoard event files when TensorFlow's summary writer is importable."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.writer = None
    if enabled:
      try:
        from flax.metrics import tensorboard  # imports TensorFlow
        self.writer = tensorboard.SummaryWriter(os.path.join(workdir, 'tensorboard'))
      except Exception:  # TensorFlow/TensorBoard missing: metrics.csv has everything
        self.writer = None

  def scalars(self, step: int, values: dict) -> None:
    if self.writer:
      for k, v in values.items():
        if isinstance(v, (int, float)):
          self.writer.scalar(k, v, step)
      self.writer.flush()
