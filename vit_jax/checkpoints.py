"""Orbax checkpoints that survive kills, corruption and full disks.

``CheckpointManager`` writes each step to a temporary folder and renames it when complete,
so a kill mid-write leaves the previous checkpoint intact. On restore we try the newest
step first and fall back to older ones when a checkpoint is unreadable (truncated file,
empty folder), with a warning naming the step.
"""
import logging
import os
from typing import Any, Optional

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or restored; the message says what to do."""


class Checkpoints:
  """Saves and restores one pytree per step under ``workdir/checkpoints``."""

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps(read=True))

  def save(self, step: int, item: Any) -> None:
    """Writes ``item`` for ``step``; on failure the earlier checkpoints are kept."""
    try:
      self.manager.save(step, args=ocp.args.StandardSave(item), force=True)
      self.manager.wait_until_finished()
    except OSError as e:
      kept = [s for s in self.steps() if s != step]
      where = f'step {kept[-1]}' if kept else 'none'
      raise CheckpointError(
          f'could not write the checkpoint for step {step} in {self.directory} '
          f'({e.strerror or e}); the previous checkpoint ({where}) is kept. Free disk '
          'space and rerun the same command to resume.') from e

  def restore_latest(self, abstract_item: Any) -> Optional[tuple[int, Any]]:
    """(step, item) of the newest readable checkpoint, or None if there is none."""
    errors = []
    for step in reversed(self.steps()):
      try:
        return step, self.manager.restore(step, args=ocp.args.StandardRestore(abstract_item))
      except Exception as e:  # orbax raises many types for damaged files
        errors.append((step, e))
        log.warning('checkpoint %d in %s is unreadable (%s: %s); trying an older one',
                    step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
    if errors:
      step, e = errors[0]
      raise CheckpointError(
          f'no checkpoint in {self.directory} could be restored (newest, step {step}: '
          f'{type(e).__name__}: {str(e).splitlines()[0][:200]}). If the model config '
          'changed, use another --workdir; or rerun with --fresh to move this run aside.')
    return None

  def close(self) -> None:
    self.manager.close()
