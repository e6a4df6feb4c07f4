"""The training loop: chunks of steps on the device, one host sync a chunk.

A chunk is one call of the compiled ``train_step.make_train_chunk`` program: a device loop of
up to a whole epoch's steps for every model of the run, with the data set already on the
device. Chunks end where the host has work to do: at an epoch's end (evaluation, a row
of metrics.csv), at a checkpoint, at an exactness check. Their length is
``config.steps_per_dispatch``, or by default as many steps as take about
``DISPATCH_SECONDS`` (measured as the run goes), so that a SIGTERM, checked between
chunks, is honoured within seconds while a fast accelerator still gets long chunks.
Every step runs in the same compiled loop body whatever the chunk's length, so where
chunks end never changes a result: a resumed run ends bit-identical to an uninterrupted one.

Several models (seed-parallel training) share each chunk; each has its own metrics
folder, and one model's non-finite loss stops that model only (``on_nonfinite='stop'``).
"""
import dataclasses
import logging
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from vit_jax.training import evaluation, parallel, program, train_step
from vit_jax.training.run_control import nonfinite_error, Preempted, TrainingError

DISPATCH_SECONDS = 2.0  # target length of one chunk when config.steps_per_dispatch is 0
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Progress:
  """Where a run stands; checkpoints carry it in their meta dict."""
  step: int = 0
  epochs_done: int = 0
  epoch_elapsed_s: float = 0.0
  stopped: dict = dataclasses.field(default_factory=dict)  # model index (str) -> reason

  @classmethod
  def from_meta(cls, step: int, meta: dict) -> 'Progress':
    return cls(step, int(meta['epochs_done']), float(meta['epoch_elapsed_s']),
               dict(meta.get('stopped', {})))


def _model(tree, k: int, several: bool):
  """Model ``k``'s slice of a host pytree (the tree itself for a single model)."""
  return jax.tree.map(lambda a: a[k], tree) if several else tree


class TrainLoop:
  """Trains the run's models from ``progress`` to ``config.num_epochs`` epochs."""

  def __init__(self, run, compiled, state, sums, progress: Progress, guard=None):
    self.run, self.c, self.compiled = run, run.config, compiled
    self.state, self.sums, self.progress, self.guard = state, sums, progress, guard
    self.several = np.ndim(run.seeds) > 0
    self.seed_list = [int(s) for s in np.atleast_1d(run.seeds)]
    self.saved_step = progress.step
    self.chunk = self.c.steps_per_dispatch or 1
    self.clock = time.perf_counter()
    self.rep = parallel.replicated(run.mesh)

  # ------------------------------------------------------------------ bookkeeping
  def live(self) -> np.ndarray:
    live = np.array([str(k) not in self.progress.stopped for k in range(len(self.seed_list))])
    return live if self.several else live[0]

  def epoch_elapsed(self) -> float:
    return self.progress.epoch_elapsed_s + time.perf_counter() - self.clock

  def save(self, step: int) -> None:
    r, p = self.run, self.progress
    r.ckpt.save(step, {'state': self.state, 'sums': self.sums},
                dict(epochs_done=p.epochs_done, epoch_elapsed_s=self.epoch_elapsed(),
                     train_images=r.n_train, steps_per_epoch=r.spe, config=self.c.to_dict(),
                     stopped=p.stopped))
    self.saved_step = step
    r.signals.last_checkpoint = f'the last checkpoint is step {step} in {r.ckpt.directory}'

  def _check_nonfinite(self, host_sums) -> None:
    """stop mode: one model raises; of several, each model with a bad step stops alone."""
    if self.c.on_nonfinite != 'stop':
      return
    for k, seed in enumerate(self.seed_list):
      mine = _model(host_sums, k, self.several)
      if str(k) in self.progress.stopped or not int(mine['nonfinite']):
        continue
      why = nonfinite_error(int(mine['first_bad']), self.run.spe, self.c, self.saved_step,
                            seed if self.several else None)
      if not self.several:
        raise TrainingError(why)
      self.progress.stopped[str(k)] = why
      log.warning('%s', why)

  def _next_stop(self, step: int) -> int:
    """The first step after ``step`` at which the host has work: a chunk ends there."""
    c, spe = self.c, self.run.spe
    stops = [(step // spe + 1) * spe, c.num_epochs * spe]
    for every in (c.checkpoint_every_steps, c.exactness_check_every_steps if self.guard else 0):
      if every:
        stops.append((step // every + 1) * every)
    return min(stops)

  def _resize(self, n: int, seconds: float) -> None:
    if not self.c.steps_per_dispatch:  # grow at most 4x a chunk, so a slow step is seen early
      self.chunk = int(max(1, min(4 * n, DISPATCH_SECONDS * n / max(seconds, 1e-9))))

  # ------------------------------------------------------------------ epochs
  def finish_epoch(self, epoch: int, step: int) -> None:
    """Evaluates every live model, appends its metrics row, resets the sums."""
    r, c = self.run, self.c
    host = jax.device_get(self.sums)
    epoch_time, accs = self.epoch_elapsed(), []  # training only: evaluation is not counted
    evaluate = lambda x, y: evaluation.evaluate(r.eval_step, self.state.params, x, y,
                                                c.eval_batch_size, r.mesh)
    val_loss, val_acc = evaluate(r.ds.test_images, r.ds.test_labels)
    idx = r.train_eval_indices
    train_loss, train_acc = (evaluate(r.ds.train_images[idx], r.ds.train_labels[idx])
                             if len(idx) else (None, None))
    memory, source = program.peak_memory(self.compiled)
    for k, folder in enumerate(r.folders):
      if str(k) in self.progress.stopped:
        continue
      s = _model(host, k, self.several)
      if int(s['nonfinite']):
        log.warning('%sepoch %d: skipped %d steps with NaN/Inf loss or gradients (first: '
                    'step %d)', f'seed {self.seed_list[k]}: ' if self.several else '',
                    epoch + 1, int(s['nonfinite']), int(s['first_bad']) + 1)
      count = int(s['count'])  # 0 if every step was skipped
      row = dict(epoch=epoch + 1, step=step,
                 train_loss=float(s['loss']) / count if count else float('nan'),
                 train_acc=int(s['correct']) / count if count else float('nan'),
                 val_loss=float(np.ravel(val_loss)[k]), val_acc=float(np.ravel(val_acc)[k]),
                 train_eval_loss=None if train_loss is None else float(np.ravel(train_loss)[k]),
                 train_eval_acc=None if train_acc is None else float(np.ravel(train_acc)[k]),
                 lr=float(r.schedule(step - 1)), epoch_time_s=round(epoch_time, 3),
                 images_per_s=round(r.spe * c.batch_size / max(epoch_time, 1e-9), 1),
                 peak_memory_mib=round(memory, 1), memory_source=source)
      accs.append(row['val_acc'])
      if r.primary:
        folder.metrics.append(row)
        folder.tb.scalars(step, row)
    self.sums = jax.device_put(train_step.zero_sums(r.seeds), self.rep)
    rate = r.spe * c.batch_size * len(accs) / max(epoch_time, 1e-9)
    if self.several:
      tqdm.write(f"epoch {epoch + 1}: val acc {' '.join(f'{a:.4f}' for a in accs)} | "
                 f"{epoch_time:.1f} s, {rate:.0f} img/s ({len(accs)} models)")
    else:
      tqdm.write(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} acc "
                 f"{row['train_acc']:.4f} | val loss {row['val_loss']:.4f} acc {accs[0]:.4f} | "
                 f"{epoch_time:.1f} s, {rate:.0f} img/s")
    self.clock, self.progress.epoch_elapsed_s = time.perf_counter(), 0.0
    self.progress.epochs_done = epoch + 1

  # ------------------------------------------------------------------ the loop
  def train(self) -> None:
    r, c, p = self.run, self.c, self.progress
    spe, total = r.spe, c.num_epochs * r.spe
    if p.epochs_done < p.step // spe:  # saved at an epoch's last step, before its evaluation
      self.finish_epoch(p.step // spe - 1, p.step)
    bar, perm = None, None
    while p.step < total and len(p.stopped) < len(self.seed_list):
      epoch = p.step // spe
      if bar is None:
        perm = jax.device_put(train_step.epoch_permutation(r.seeds, epoch, r.n_train), self.rep)
        bar = tqdm(total=spe, initial=p.step % spe, desc=f'epoch {epoch + 1}/{c.num_epochs}',
                   disable=not c.progress_bar, leave=False)
      n = min(self.chunk, self._next_stop(p.step) - p.step)
      t0 = time.perf_counter()
      self.state, self.sums = self.compiled(self.state, self.sums, r.seeds_on_device,
                                            jax.device_put(self.live(), self.rep), r.images,
                                            r.labels, perm, np.int32(n))
      host = jax.device_get(self.sums)  # the chunk's one sync
      self._resize(n, time.perf_counter() - t0)
      p.step += n
      self._check_nonfinite(host)
      if self.guard and p.step % c.exactness_check_every_steps == 0:
        self.guard.check(self.state.params, r.seeds_on_device, r.images, r.labels, perm, p.step)
      if r.signals.received:
        bar.close()
        self.save(p.step)  # an epoch ended here is evaluated on resume
        raise Preempted(f'{r.signals.received} received: saved a checkpoint at step {p.step} '
                        f'(epoch {epoch + 1}, step {p.step - epoch * spe} of {spe}) in '
                        f'{r.ckpt.directory}; rerun the same command to resume')
      count = np.maximum(np.asarray(host['count']), 1)
      bar.set_postfix(loss=f"{np.mean(host['loss'] / count):.4f}",
                      acc=f"{np.mean(host['correct'] / count):.3f}")
      bar.update(p.step - epoch * spe - bar.n)
      if p.step % spe == 0:
        bar.close()
        bar = None
        self.finish_epoch(epoch, p.step)
      if self._should_save(p.step):
        self.save(p.step)

  def _should_save(self, step: int) -> bool:
    c, spe = self.c, self.run.spe
    every_steps, every_epochs = c.checkpoint_every_steps, c.checkpoint_every_epochs
    return (step == c.num_epochs * spe or bool(every_steps and step % every_steps == 0) or
            bool(step % spe == 0 and every_epochs and (step // spe) % every_epochs == 0))
