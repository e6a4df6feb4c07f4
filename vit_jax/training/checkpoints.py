"""Orbax checkpoints that survive kills, corruption and full disks.

Each step is one folder ``workdir/checkpoints/<step>`` with two items: ``train`` (the
arrays: train state and the epoch's running sums) and ``meta`` (a small JSON dict).
``CheckpointManager`` writes a step into a temporary folder and renames it when complete,
so a kill mid-write leaves the previous checkpoints intact (stale temporary folders are
removed when the next run starts).

On restore the newest step is tried first:

* shapes, dtypes or tree structure differ from this config's: the checkpoint belongs to
  another model, and we refuse (``CheckpointError``) without touching anything;
* unreadable (empty folder, truncated or corrupt file): a warning names it, it is moved
  to ``workdir/corrupt_checkpoints/`` once an older good one was found, and the next
  older step is tried.

A failed save (disk full, ...) removes its own partial folder and keeps the others.

In a multi-process run (one process per host) process 0 alone reads and writes the
checkpoints, with an orbax manager of its own (``active_processes={0}``: no barriers
with the others, which would wait minutes for a process that died). It saves the host
copy of the replicated state; on restore it sends the arrays and metadata to the others,
bit for bit (``multiprocess.from_process_0``). The other hosts need not see the workdir.
"""
import contextlib
import errno
import logging
import os
import shutil
import sys
import threading
import time
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from vit_jax.training import multiprocess
from vit_jax.training.run_control import UserError

log = logging.getLogger(__name__)

TRAIN, META = 'train', 'meta'


class CheckpointError(UserError, RuntimeError):
  """A checkpoint could not be written or restored; the message says what to do."""


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def shapes_of(tree) -> dict[str, tuple]:
  """{'state/params/...': (shape, dtype name)} for arrays, abstract arrays or metadata."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(_key_name(k) for k in path): (tuple(x.shape), np.dtype(x.dtype).name)
          for path, x in leaves}


def _differences(saved: dict, wanted: dict) -> list[str]:
  params_first = lambda k: ('/params/' not in f'/{k}', k)
  out = [f'{k} is {saved[k][0]} {saved[k][1]} there but {wanted[k][0]} {wanted[k][1]} here'
         for k in sorted(set(saved) & set(wanted), key=params_first) if saved[k] != wanted[k]]
  out += [f'{k} is missing there' for k in sorted(set(wanted) - set(saved))]
  out += [f'{k} is only there' for k in sorted(set(saved) - set(wanted))]
  return out


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  text = text[0].split(' See full TensorStore details')[0][:160] if text else ''
  return f'{type(e).__name__}: {text}'.rstrip(': ')


@contextlib.contextmanager
def _quiet_unraisable():
  """Orbax's readers print 'Exception ignored in coroutine' tracebacks for damaged files."""
  old = sys.unraisablehook
  sys.unraisablehook = lambda u: log.debug('ignored while reading a checkpoint: %s', u.exc_value)
  try:
    yield
  finally:
    sys.unraisablehook = old


@contextlib.contextmanager
def _quiet_absl():
  """Orbax logs a failed save's traceback from its threads; we report it in one line."""
  logger = logging.getLogger('absl')
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


class Checkpoints:
  """Saves and restores (train pytree, meta dict) per step under ``workdir/checkpoints``."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    self.several = jax.process_count() > 1  # then only process 0 has a manager
    self.manager, alone = None, {}
    if self.several:
      if jax.process_index() != 0:
        return
      if not read_only:  # orbax creates folders only together with every process
        os.makedirs(self.directory, exist_ok=True)
      alone = dict(multiprocessing_options=ocp.options.MultiprocessingOptions(
          primary_host=0, active_processes={0}))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep or None, create=not (read_only or self.several), read_only=read_only,
        enable_async_checkpointing=False, cleanup_tmp_directories=not read_only, **alone)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={TRAIN: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler()})

  def steps(self) -> list[int]:
    if self.manager is None:
      return []
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def save(self, step: int, train: Any, meta: dict) -> None:
    """Writes ``step``; on failure its partial folder is removed and older steps are kept."""
    if self.manager is None or step in self.steps():
      return  # another process writes, or already written (a periodic save, then a preemption)
    if self.several:  # the replicated state's host copy (module docstring)
      train = jax.tree.map(np.asarray, train)
    try:
      with _quiet_absl():
        self.manager.save(step, args=ocp.args.Composite(
            **{TRAIN: ocp.args.StandardSave(train), META: ocp.args.JsonSave(meta)}), force=True)
        self.manager.wait_until_finished()
    except Exception as e:  # orbax/tensorstore wrap I/O errors in several types
      self._settle()
      self._remove_partial(step)
      kept = [s for s in self.steps() if s != step]
      full = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or \
          'No space left' in str(e)
      why = 'the disk is full' if full else _first_line(e)
      raise CheckpointError(
          f'could not write the checkpoint for step {step} in {self.directory} ({why}); '
          f'the previous checkpoint ({f"step {kept[-1]}" if kept else "none"}) is kept. '
          f'{"Free disk space" if full else "Fix the cause"} and rerun the same command '
          'to resume.') from e

  def _settle(self) -> None:
    """After a failed save: let orbax's writer threads finish before cleaning up."""
    with _quiet_absl():
      try:
        self.manager.wait_until_finished()
      except Exception:  # pylint: disable=broad-except  (the same failure, again)
        pass
      for t in threading.enumerate():
        if t is not threading.current_thread() and type(t).__module__.startswith('orbax'):
          t.join(timeout=30)

  def _remove_partial(self, step: int) -> None:
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      if name == str(step) or name.startswith(f'{step}.orbax-checkpoint-tmp'):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def _saved_shapes(self, step: int) -> Optional[dict]:
    try:
      with _quiet_unraisable():
        metadata = self.manager.item_metadata(step)
      tree = metadata[TRAIN] if TRAIN in metadata.keys() else None
      tree = getattr(tree, 'tree', tree)
      return shapes_of(tree) if tree is not None else None
    except Exception as e:  # unreadable metadata: a damaged checkpoint
      log.debug('checkpoint %d metadata: %s', step, e)
      return None

  def restore_latest(self, abstract_train: Any) -> Optional[tuple[int, Any, dict]]:
    """(step, train, meta) of the newest readable checkpoint; None if there is none.

    Raises CheckpointError if the newest one was written for other shapes (another
    model), or if checkpoints exist but none can be read. With several processes each
    calls it and gets process 0's result.
    """
    if not self.several:
      return self._restore_latest(abstract_train)
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    local = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=here),
                         abstract_train)
    mine = self._restore_latest(local) if self.manager is not None else None
    return multiprocess.from_process_0(mine, abstract_train)

  def _restore_latest(self, abstract_train: Any) -> Optional[tuple[int, Any, dict]]:
    wanted = shapes_of(abstract_train)
    damaged = []
    for step in reversed(self.steps()):
      saved = self._saved_shapes(step)
      if saved is None:
        damaged.append((step, 'no readable metadata (empty or truncated folder)'))
        log.warning('checkpoint %d in %s is unreadable (no metadata); trying an older one',
                    step, self.directory)
        continue
      diff = _differences(saved, wanted)
      if diff:
        raise CheckpointError(
            f'the checkpoint at step {step} in {self.directory} was written for another '
            f'model ({diff[0]}{f"; {len(diff) - 1} more differences" if len(diff) > 1 else ""});'
            ' nothing was changed. Use another --workdir, or rerun with --fresh to move '
            'this run aside and start over.')
      try:
        with _quiet_unraisable():
          restored = self.manager.restore(step, args=ocp.args.Composite(
              **{TRAIN: ocp.args.StandardRestore(abstract_train), META: ocp.args.JsonRestore()}))
      except Exception as e:  # orbax raises many types for damaged files
        damaged.append((step, _first_line(e)))
        log.warning('checkpoint %d in %s is unreadable (%s); trying an older one',
                    step, self.directory, _first_line(e))
        continue
      self._set_aside([s for s, _ in damaged])
      return step, restored[TRAIN], dict(restored[META] or {})
    if damaged:
      step, why = damaged[0]
      raise CheckpointError(
          f'no checkpoint in {self.directory} can be read (newest, step {step}: {why}); '
          'nothing was changed. Rerun with --fresh to move this run aside and start over, '
          'or use another --workdir.')
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Moves damaged step folders out of the way (a fallback will write them again)."""
    if not steps or jax.process_index() != 0:
      return
    aside = os.path.join(self.workdir, 'corrupt_checkpoints')
    os.makedirs(aside, exist_ok=True)
    for step in steps:
      target = os.path.join(aside, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
      shutil.move(os.path.join(self.directory, str(step)), target)
      log.warning('moved the unreadable checkpoint %d to %s', step, target)
    self.manager.reload()

  def close(self) -> None:
    if self.manager is not None:
      self.manager.close()


def load_arrays(workdir: str, step: Optional[int] = None) -> tuple[int, Any, dict]:
  """(step, train pytree as numpy arrays, meta) of a run's checkpoint (default: latest).

  Reads on this process's first device, whatever the devices that wrote it.
  """
  ckpt = Checkpoints(workdir, read_only=True)
  try:
    steps = ckpt.steps()
    if not steps:
      raise CheckpointError(f'no checkpoint in {ckpt.directory}')
    step = steps[-1] if step is None else step
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with _quiet_unraisable(), _quiet_absl():
      tree = ckpt.manager.item_metadata(step)[TRAIN].tree
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            tree)
      restored = ckpt.manager.restore(step, args=ocp.args.Composite(
          **{TRAIN: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}))
    return step, jax.tree.map(np.asarray, restored[TRAIN]), dict(restored[META] or {})
  finally:
    ckpt.close()
