"""``train_and_evaluate(config, workdir)``: the whole training run, restartable at any point.

Everything random is a function of (seed, step): batches, augmentation, dropout and
BDIA's γ. Checkpoints hold the train state and the epoch's running sums, so a run killed
at any moment and started again with the same command ends bit-identical to one that
never stopped. See README.md for the files a run writes.
"""
import contextlib
import logging
import os
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from vit_jax import checkpoints, data, metrics_io, model as model_lib, optim, steps, validate

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
  """The run cannot go on; the message says why and what to change."""


class Preempted(Exception):
  """SIGTERM/SIGINT: a checkpoint was written and the run can be resumed."""


@contextlib.contextmanager
def _stop_on_signals():
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""
  flag = {'signal': None}
  def handler(signum, _):
    flag['signal'] = signal.Signals(signum).name
  old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield flag
  finally:
    for s, h in old.items():
      signal.signal(s, h)


def prepare_workdir(config, workdir: str, fresh: bool = False) -> None:
  """Creates ``workdir`` or checks that it belongs to this run; never overwrites others."""
  config_path = os.path.join(workdir, 'config.json')
  if fresh and os.path.exists(workdir):
    aside = f'{workdir.rstrip(os.sep)}.old-{time.strftime("%Y%m%d-%H%M%S")}'
    shutil.move(workdir, aside)
    log.warning('--fresh: moved the previous run to %s', aside)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, '.write_test')
    open(probe, 'w').close()
    os.remove(probe)
  except OSError as e:
    raise TrainingError(f'workdir {workdir} is not writable ({e.strerror}); '
                        'choose another --workdir') from e
  if os.path.exists(config_path):
    old = metrics_io.read_json(config_path)
    changed = [f for f in validate.changed_fields(old, config.to_dict())
               if f not in validate.RESUMABLE_CHANGES]
    if changed:
      raise TrainingError(
          f'workdir {workdir} holds a run with another config ({", ".join(changed)} differ); '
          'use another --workdir, or rerun with --fresh to move the old run aside')
  metrics_io.write_json(config_path, config.to_dict())


def _peak_memory(compiled) -> tuple[float, str]:
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20, 'device_peak'
  m = compiled.memory_analysis()
  total = (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
           - m.alias_size_in_bytes)
  return total / 2**20, 'compiled_analysis'


def _nonfinite_error(sums, steps_per_epoch, saved_step):
  bad = int(sums['first_bad'])
  return TrainingError(
      f'loss or gradients became NaN/Inf at step {bad} (epoch {bad // steps_per_epoch + 1}); '
      f'the last good checkpoint (step {saved_step}) is kept. Lower --config.learning_rate, '
      'set --config.grad_clip_norm=1.0, turn off --config.bf16, or use '
      '--config.on_nonfinite=skip to skip such steps')


def train_and_evaluate(config, workdir: str, fresh: bool = False) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns the summary."""
  validate.check_config(config)
  ds = data.load_dataset(config.dataset, config.data_dir)
  validate.check_dataset_matches(config, ds)
  prepare_workdir(config, workdir, fresh)
  if ds.note:
    log.info('%s', ds.note)

  mesh = steps.make_mesh()
  info = steps.dataset_info(ds, config)
  spe = info['steps_per_epoch']
  model = model_lib.build(config)
  tx = optim.make_optimizer(config, spe)
  schedule = optim.learning_rate_schedule(config, spe)
  image_shape = ds.train_images.shape[1:]
  rep = steps.replicated(mesh)
  init = jax.jit(lambda: steps.create_state(model, tx, image_shape, config.seed), out_shardings=rep)
  item = {'state': jax.eval_shape(init), 'sums': jax.eval_shape(steps.zero_sums)}
  item = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), item)

  ckpt = checkpoints.Checkpoints(workdir, config.keep_checkpoints)
  restored = ckpt.restore_latest(item)
  if restored:
    start, item = restored
    state, sums = item['state'], item['sums']
    log.info('resuming from the checkpoint at step %d (epoch %d)', start, start // spe + 1)
  else:
    start, state, sums = 0, init(), jax.device_put(steps.zero_sums(), rep)
  metrics = metrics_io.MetricsCsv(workdir)
  metrics.keep_epochs_up_to(start // spe)
  params_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))

  images, labels = jax.device_put((ds.train_images, ds.train_labels), rep)
  train_step = steps.make_train_step(model, info, config, mesh)
  eval_step = steps.make_eval_step(model, info, config, mesh)
  t0 = time.perf_counter()
  perm = steps.epoch_permutation(config.seed, start // spe, len(ds.train_labels))
  compiled = train_step.lower(state, images, labels, perm, sums).compile()
  compile_s = time.perf_counter() - t0
  log.info('train step compiled in %.1f s; %d parameters, %d steps per epoch',
              compile_s, params_count, spe)
  guard = None
  if config.exactness_check_every_steps and model_lib.variants.make_variant(
      config.model.variant).reversible:
    from vit_jax import verify  # only needed for reversible runs that ask for it
    guard = verify.ExactnessGuard(model, info, config, mesh)

  tb = metrics_io.TensorBoard(workdir, config.get('tensorboard', True))
  saved_step = start
  def save(step):
    nonlocal saved_step
    if config.on_nonfinite == 'stop' and int(sums['nonfinite']):
      raise _nonfinite_error(sums, spe, saved_step)
    ckpt.save(step, {'state': state, 'sums': sums})
    saved_step = step

  run_start = time.perf_counter()
  step = start
  try:
    with _stop_on_signals() as stop:
      for epoch in range(start // spe, config.num_epochs):
        perm = steps.epoch_permutation(config.seed, epoch, len(ds.train_labels))
        t_epoch = time.perf_counter()
        first = step
        bar = tqdm(total=spe, initial=step - epoch * spe, desc=f'epoch {epoch + 1}/{config.num_epochs}',
                   disable=not config.progress_bar, leave=False)
        while step < (epoch + 1) * spe:
          state, sums = compiled(state, images, labels, perm, sums)
          step += 1
          if stop['signal']:
            save(step)
            raise Preempted(f'{stop["signal"]} received: saved a checkpoint at step {step} '
                            f'(epoch {epoch + 1}) in {ckpt.directory}; rerun the same command '
                            'to resume')
          if guard and step % config.exactness_check_every_steps == 0:
            guard.check(state.params, images, labels, perm, step)
          if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
            save(step)
          if step % max(config.log_every_steps, 1) == 0 or step % spe == 0:
            count = max(int(sums['count']), 1)
            if config.on_nonfinite == 'stop' and int(sums['nonfinite']):
              raise _nonfinite_error(sums, spe, saved_step)
            bar.set_postfix(loss=f"{float(sums['loss']) / count:.4f}",
                            acc=f"{int(sums['correct']) / count:.3f}",
                            img_s=f'{(step - first) * config.batch_size / (time.perf_counter() - t_epoch):.0f}')
            bar.update(step - epoch * spe - bar.n)
        bar.close()
        epoch_time = time.perf_counter() - t_epoch
        if int(sums['nonfinite']) and config.on_nonfinite == 'skip':
          log.warning('epoch %d: skipped %d steps with NaN/Inf loss or gradients',
                      epoch + 1, int(sums['nonfinite']))
        val_loss, val_acc = steps.evaluate(eval_step, state.params, ds.test_images,
                                           ds.test_labels, config.eval_batch_size, mesh)
        memory, source = _peak_memory(compiled)
        count = max(int(sums['count']), 1)
        row = dict(epoch=epoch + 1, step=step, train_loss=float(sums['loss']) / count,
                   train_acc=int(sums['correct']) / count, val_loss=val_loss, val_acc=val_acc,
                   lr=float(schedule(step)), epoch_time_s=round(epoch_time, 3),
                   images_per_s=round((step - first) * config.batch_size / epoch_time, 1),
                   peak_memory_mib=round(memory, 1), memory_source=source)
        if config.on_nonfinite == 'stop' and int(sums['nonfinite']):
          raise _nonfinite_error(sums, spe, saved_step)
        sums = jax.device_put(steps.zero_sums(), rep)
        metrics.append(row)
        tb.scalars(step, row)
        tqdm.write(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} acc "
                   f"{row['train_acc']:.4f} | val loss {val_loss:.4f} acc {val_acc:.4f} | "
                   f"{epoch_time:.1f} s, {row['images_per_s']:.0f} img/s")
        if (epoch + 1) % max(config.checkpoint_every_epochs, 1) == 0 or epoch + 1 == config.num_epochs:
          save(step)
  finally:
    ckpt.close()

  rows = metrics.rows()
  best = max(rows, key=lambda r: float(r['val_acc'])) if rows else None
  summary = dict(variant=config.model.variant, dataset=config.dataset, seed=config.seed,
                 epochs_completed=len(rows), params=params_count,
                 best_val_acc=float(best['val_acc']) if best else None,
                 best_epoch=int(best['epoch']) if best else None,
                 final_val_acc=float(rows[-1]['val_acc']) if rows else None,
                 total_train_time_s=round(sum(float(r['epoch_time_s']) for r in rows), 2),
                 compile_time_s=round(compile_s, 2),
                 peak_memory_mib=float(rows[-1]['peak_memory_mib']) if rows else None,
                 memory_source=rows[-1]['memory_source'] if rows else None,
                 images_per_s=float(rows[-1]['images_per_s']) if rows else None,
                 finished=len(rows) >= config.num_epochs, data_note=ds.note,
                 device=jax.devices()[0].device_kind, num_devices=jax.device_count())
  metrics_io.write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary
