"""``train_and_evaluate(config, workdir)``: the whole training run, restartable at any point.

Everything random is a function of (seed, step): batches, augmentation, dropout and
BDIA's γ. Checkpoints hold the train state, the epoch's running sums and how many epochs
were evaluated, so a run killed at any moment and started again with the same command
ends bit-identical to one that never stopped (parameters and metrics.csv's losses and
accuracies; times differ). Order of work, so that bad input costs nothing:

  config checks -> workdir checks (read only) -> data -> checkpoint checks -> writes -> compile

SIGTERM/SIGINT only set a flag, checked at safe points: during setup (after the data,
after the restore, after compiling) ``Preempted`` is raised with nothing new written;
during training the current step finishes, a checkpoint is written, then ``Preempted``.
A second signal ends the process at once (exit 75) without saving; the checkpoints on
disk stay consistent, as after a SIGKILL.
"""
import collections
import logging
import os
import signal
import sys
import threading
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from vit_jax import checkpoints, cli, data, metrics_io, model as model_lib, optim, steps, validate
from vit_jax import workdir_lock

# Steps the host may queue ahead of the device: enough to keep an accelerator busy, few
# enough that a SIGTERM (checked between dispatches) is honoured within a step or two.
MAX_STEPS_IN_FLIGHT = 2
log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
  """The run cannot go on; the message says why and what to change."""


class Preempted(Exception):
  """SIGTERM/SIGINT: the message says what was saved and how to resume."""


class _Signals:
  """SIGTERM/SIGINT set a flag (never an exception inside library code); twice: exit now."""

  def __init__(self):
    self.received = None
    self.last_checkpoint = 'no checkpoint was written'

  def _handler(self, signum, _):
    name = signal.Signals(signum).name
    if self.received is None:
      self.received = name
      log.warning('%s received: stopping at the next safe point (send it again to stop at '
                  'once, without saving)', name)
      return
    sys.stderr.write(f'{os.path.basename(sys.argv[0]) or "python"}: stopped: {self.received} '
                     f'then {name} received: stopped at once without saving; '
                     f'{self.last_checkpoint}. Rerun the same command to resume\n')
    sys.stderr.flush()
    os._exit(cli.EXIT_PREEMPTED)  # pylint: disable=protected-access

  def check(self, what: str) -> None:
    """During setup: stop here if a signal came."""
    if self.received:
      raise Preempted(f'{self.received} received {what}; no checkpoint was written. Rerun '
                      'the same command to resume')

  def __enter__(self):
    self.old = {}
    if threading.current_thread() is threading.main_thread():
      self.old = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *exc):
    for s, h in self.old.items():
      signal.signal(s, h)


def _peak_memory(compiled) -> tuple[float, str]:
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20, 'device_peak'
  m = compiled.memory_analysis()
  total = (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
           - m.alias_size_in_bytes)
  return total / 2**20, 'compiled_analysis'


def _nonfinite_error(sums, steps_per_epoch, saved_step, config):
  bad = int(sums['first_bad'])  # 0-based index of the step: it is step bad + 1
  return TrainingError(
      f'loss or gradients became NaN/Inf at step {bad + 1} (epoch {bad // steps_per_epoch + 1},'
      f' step {bad % steps_per_epoch + 1} of {steps_per_epoch}); the last good checkpoint '
      f'({f"step {saved_step}" if saved_step else "none yet"}) is kept as it was. Lower '
      f'--config.learning_rate (now {config.learning_rate:g})'
      f'{"" if config.grad_clip_norm else ", set --config.grad_clip_norm=1.0"}'
      f'{", use --config.bf16=False" if config.bf16 else ""}, or skip such steps with '
      '--config.on_nonfinite=skip')


def train_and_evaluate(config, workdir: str, fresh: bool = False, devices=None) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns the summary.

  ``devices`` (default: all) form the one-axis data mesh. ``fresh`` moves an existing
  run in ``workdir`` aside first. The run holds ``workdir``'s lock (process 0 only);
  ``workdir_lock.WorkdirLocked`` if another run holds it.
  """
  with _Signals() as signals, workdir_lock.WorkdirLock(workdir, jax.process_index() == 0) as lock:
    return _run(config, workdir, fresh, list(devices or jax.devices()), signals, lock)


def _run(config, workdir, fresh, devices, signals, lock):
  validate.check_config(config, num_devices=len(devices))
  validate.check_workdir(config, workdir, fresh)
  lock.acquire()  # an existing workdir: before anything is read from it or written
  ds = data.subset(data.load_dataset(config.dataset, config.data_dir),
                   config.train_examples, config.eval_examples)
  signals.check('while the data was loading')
  validate.check_dataset_matches(config, ds)
  if ds.note:
    log.info('%s', ds.note)

  mesh = steps.make_mesh(devices)
  info = steps.dataset_info(ds, config)
  spe, n_train = info['steps_per_epoch'], len(ds.train_labels)
  model = model_lib.build(config)
  tx = optim.make_optimizer(config, spe)
  schedule = optim.learning_rate_schedule(config, spe)
  image_shape = ds.train_images.shape[1:]
  rep = steps.replicated(mesh)
  init = jax.jit(lambda: steps.create_state(model, tx, image_shape, config.seed), out_shardings=rep)
  abstract = {'state': jax.eval_shape(init), 'sums': jax.eval_shape(steps.zero_sums)}
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), abstract)

  primary = jax.process_index() == 0
  if fresh and primary:
    metrics_io.move_aside(workdir)
  if primary:  # the other processes write nothing (checkpoints.py: process 0 alone)
    os.makedirs(workdir, exist_ok=True)
  lock.acquire()  # a workdir just created, or the new one after --fresh
  ckpt = checkpoints.Checkpoints(workdir, config.keep_checkpoints)
  try:
    restored = ckpt.restore_latest(abstract)
    meta = restored[2] if restored else {}
    if restored and (meta.get('train_images'), meta.get('steps_per_epoch')) != (n_train, spe):
      raise TrainingError(
          f'the checkpoint at step {restored[0]} was made with {meta.get("train_images")} '
          f'training images ({meta.get("steps_per_epoch")} steps per epoch), the data set now '
          f'has {n_train} ({spe}); restore the data set, or rerun with --fresh')
    changed = validate.run_changes(meta['config'], config) if 'config' in meta else []
    if changed:  # config.json may be gone; the checkpoint still knows its run
      raise TrainingError(
          f'the checkpoint at step {restored[0]} belongs to a run with another config '
          f'({", ".join(changed[:4])}{" ..." if len(changed) > 4 else ""} differ); use another '
          '--workdir, or rerun with --fresh to move it aside')
    signals.check('before training started')
    return _train(config, workdir, ds, mesh, model, info, schedule, init, restored, ckpt,
                  signals, primary)
  finally:
    ckpt.close()


def _train(config, workdir, ds, mesh, model, info, schedule, init, restored, ckpt, signals,
           primary):
  spe, n_train, batch = info['steps_per_epoch'], len(ds.train_labels), config.batch_size
  rep = steps.replicated(mesh)
  if restored:
    start, item, meta = restored
    state, sums = item['state'], item['sums']
    epochs_done, carried_s = int(meta['epochs_done']), float(meta['epoch_elapsed_s'])
    log.info('resuming from the checkpoint at step %d (epoch %d) in %s', start,
             start // spe + 1, ckpt.directory)
  else:
    start, state, sums = 0, init(), jax.device_put(steps.zero_sums(), rep)
    epochs_done, carried_s = 0, 0.0
  metrics = metrics_io.MetricsCsv(workdir)
  if primary:
    metrics_io.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    metrics.keep_epochs_up_to(epochs_done)
  params_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  total = config.num_epochs * spe
  if start >= total and epochs_done >= start // spe:  # nothing to do: no compilation
    log.info('the run has already trained %d epochs (step %d); raise --config.num_epochs to '
             'train longer', epochs_done, start)
    return _summary(config, workdir, ds, metrics, mesh, primary, params=params_count,
                    compile_time_s=0.0, resumed_from_step=start, last_checkpoint_step=start)

  images, labels = jax.device_put((ds.train_images, ds.train_labels), rep)
  permutation = lambda e: jax.device_put(steps.epoch_permutation(config.seed, e, n_train), rep)
  train_step = steps.make_train_step(model, info, config, mesh)
  eval_step = steps.make_eval_step(model, info, config, mesh)
  t0 = time.perf_counter()
  perm = permutation(start // spe)
  compiled = train_step.lower(state, images, labels, perm, sums).compile()
  compile_s = time.perf_counter() - t0
  signals.check('before training started')
  log.info('train step compiled in %.1f s; %d parameters, %d steps per epoch',
           compile_s, params_count, spe)
  guard = None
  if config.exactness_check_every_steps and model_lib.variants.make_variant(
      config.model.variant).reversible:
    from vit_jax import verify  # only needed for reversible runs that ask for it
    guard = verify.ExactnessGuard(model, info, config, mesh)
  tb = metrics_io.TensorBoard(workdir, config.get('tensorboard', True) and primary)

  saved_step = start if restored else 0
  if restored:
    signals.last_checkpoint = f'the last checkpoint is step {start} in {ckpt.directory}'
  clock = {'epoch_start': time.perf_counter(), 'carried': carried_s}
  epoch_elapsed = lambda: clock['carried'] + time.perf_counter() - clock['epoch_start']
  stop_on_nonfinite = config.on_nonfinite == 'stop'

  def save(step, epochs_done):
    nonlocal saved_step
    if stop_on_nonfinite and int(sums['nonfinite']):
      raise _nonfinite_error(sums, spe, saved_step, config)
    ckpt.save(step, {'state': state, 'sums': sums},
              dict(epochs_done=epochs_done, epoch_elapsed_s=epoch_elapsed(),
                   train_images=n_train, steps_per_epoch=spe, config=config.to_dict()))
    saved_step = step
    signals.last_checkpoint = f'the last checkpoint is step {step} in {ckpt.directory}'

  def finish_epoch(epoch, step, epoch_time):
    """Evaluates, appends the metrics row, resets the sums (epoch is 0-based)."""
    nonlocal sums
    if stop_on_nonfinite and int(sums['nonfinite']):
      raise _nonfinite_error(sums, spe, saved_step, config)
    if int(sums['nonfinite']):
      log.warning('epoch %d: skipped %d steps with NaN/Inf loss or gradients (first: step %d)',
                  epoch + 1, int(sums['nonfinite']), int(sums['first_bad']) + 1)
    val_loss, val_acc = steps.evaluate(eval_step, state.params, ds.test_images,
                                       ds.test_labels, config.eval_batch_size, mesh)
    memory, source = _peak_memory(compiled)
    count = int(sums['count'])  # 0 if every step was skipped
    row = dict(epoch=epoch + 1, step=step,
               train_loss=float(sums['loss']) / count if count else float('nan'),
               train_acc=int(sums['correct']) / count if count else float('nan'),
               val_loss=val_loss, val_acc=val_acc,
               lr=float(schedule(step - 1)), epoch_time_s=round(epoch_time, 3),
               images_per_s=round(spe * batch / max(epoch_time, 1e-9), 1),
               peak_memory_mib=round(memory, 1), memory_source=source)
    sums = jax.device_put(steps.zero_sums(), rep)
    if primary:
      metrics.append(row)
      tb.scalars(step, row)
    tqdm.write(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} acc "
               f"{row['train_acc']:.4f} | val loss {val_loss:.4f} acc {val_acc:.4f} | "
               f"{epoch_time:.1f} s, {row['images_per_s']:.0f} img/s")
    clock.update(epoch_start=time.perf_counter(), carried=0.0)

  def should_save(step):
    every_steps, every_epochs = config.checkpoint_every_steps, config.checkpoint_every_epochs
    return (step == total or bool(every_steps and step % every_steps == 0) or
            bool(step % spe == 0 and every_epochs and (step // spe) % every_epochs == 0))

  step = start
  if epochs_done < start // spe:  # saved at an epoch's last step, before its evaluation
    finish_epoch(start // spe - 1, start, epoch_elapsed())
    epochs_done = start // spe
  bar, first, in_flight = None, step, collections.deque()
  while step < total:
    epoch = step // spe
    if bar is None:
      if step % spe == 0:
        perm = permutation(epoch)
      bar = tqdm(total=spe, initial=step % spe, desc=f'epoch {epoch + 1}/{config.num_epochs}',
                 disable=not config.progress_bar, leave=False)
    state, sums = compiled(state, images, labels, perm, sums)
    in_flight.append(sums['count'] + 0)  # a handle that outlives the donation of ``sums``
    if len(in_flight) > MAX_STEPS_IN_FLIGHT:
      in_flight.popleft().block_until_ready()
    step += 1
    if guard and step % config.exactness_check_every_steps == 0:
      guard.check(state.params, images, labels, perm, step)
    epoch_end = step % spe == 0
    if signals.received:
      bar.close()
      save(step, epochs_done)  # an epoch ended here is evaluated on resume
      raise Preempted(f'{signals.received} received: saved a checkpoint at step {step} '
                      f'(epoch {epoch + 1}, step {step - epoch * spe} of {spe}) in '
                      f'{ckpt.directory}; rerun the same command to resume')
    if step % max(config.log_every_steps, 1) == 0 or epoch_end:
      if stop_on_nonfinite and int(sums['nonfinite']):
        raise _nonfinite_error(sums, spe, saved_step, config)
      count = max(int(sums['count']), 1)
      rate = (step - first) * batch / max(time.perf_counter() - clock['epoch_start'], 1e-9)
      bar.set_postfix(loss=f"{float(sums['loss']) / count:.4f}",
                      acc=f"{int(sums['correct']) / count:.3f}", img_s=f'{rate:.0f}')
      bar.update(step - epoch * spe - bar.n)
    if epoch_end:
      bar.close()
      bar, first = None, step
      finish_epoch(epoch, step, epoch_elapsed())
      epochs_done = epoch + 1
    if should_save(step):
      save(step, epochs_done)

  return _summary(config, workdir, ds, metrics, mesh, primary, params=params_count,
                  compile_time_s=round(compile_s, 2), resumed_from_step=start,
                  last_checkpoint_step=saved_step)


def _summary(config, workdir, ds, metrics, mesh, primary, **extra) -> dict:
  """summary.json: best and final accuracy (best = model selection on the eval set)."""
  rows = metrics.rows()
  best = max(rows, key=lambda r: float(r['val_acc'])) if rows else None
  last = rows[-1] if rows else {}
  summary = dict(variant=config.model.variant, dataset=config.dataset, seed=config.seed,
                 epochs_completed=len(rows), **extra,
                 best_val_acc=float(best['val_acc']) if best else None,
                 best_epoch=int(best['epoch']) if best else None,
                 final_val_acc=float(last['val_acc']) if rows else None,
                 total_train_time_s=round(sum(float(r['epoch_time_s']) for r in rows), 2),
                 peak_memory_mib=float(last['peak_memory_mib']) if rows else None,
                 memory_source=last.get('memory_source'),
                 images_per_s=float(last['images_per_s']) if rows else None,
                 finished=len(rows) >= config.num_epochs, data_note=ds.note,
                 device=jax.devices()[0].device_kind, num_devices=mesh.size)
  if primary:
    metrics_io.write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary
