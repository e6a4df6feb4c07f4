"""``train_and_evaluate(config, workdir)``: the whole training run, restartable at any point.

Everything random is a function of (seed, step): batches, augmentation, dropout and
BDIA's γ. Checkpoints hold the train state, the epoch's running sums and how many epochs
were evaluated, so a run killed at any moment and started again with the same command
ends bit-identical to one that never stopped (parameters and metrics.csv's losses and
accuracies; times differ). Order of work, so that bad input costs nothing:

  config checks -> workdir checks (read only) -> data -> checkpoint checks -> writes -> compile

With ``config.parallel_seeds`` = N > 1 the run trains the N models with seeds
``seed … seed+N-1`` in one program (``parallel.over_models``); model k's metrics.csv,
summary.json and config.json go to ``workdir/seed<seed+k>/``, the one checkpoint of all
models to ``workdir/checkpoints``. The loop itself is ``train_loop.TrainLoop``.

SIGTERM/SIGINT only set a flag, checked at safe points: during setup (after the data,
after the restore, after compiling) ``Preempted`` is raised with nothing new written;
during training the current chunk of steps finishes, a checkpoint is written, then
``Preempted``. A second signal ends the process at once (exit 75) without saving; the
checkpoints on disk stay consistent, as after a SIGKILL.
"""
import dataclasses
import logging
import os
import time
from typing import Any

import jax
import numpy as np

from vit_jax.models import variants, vit as model_lib
from vit_jax.training import checkpoints, config_checks, data, evaluation, exactness, optim
from vit_jax.training import parallel, run_files, train_step, workdir_lock
from vit_jax.training.run_control import Preempted, Signals, TrainingError  # noqa: F401  (public)
from vit_jax.training.train_loop import Progress, TrainLoop

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
  """What the loop needs of a run: its config, data, devices and where it writes."""
  config: Any
  ds: data.Dataset
  mesh: Any
  seeds: Any                 # np.int32 scalar (one model) or array (several)
  spe: int                   # steps per epoch
  schedule: Any
  ckpt: checkpoints.Checkpoints
  signals: Signals
  primary: bool              # this process writes files
  folders: list              # run_files.ModelFolder per model
  eval_step: Any = None      # the rest is set when training starts
  images: Any = None         # the training set on the device(s)
  labels: Any = None
  seeds_on_device: Any = None

  @property
  def n_train(self) -> int:
    return len(self.ds.train_labels)

  @property
  def train_eval_indices(self) -> np.ndarray:
    """The training images evaluated each epoch: ``config.train_eval_examples`` of them,
    evenly spaced through the training set (which image folders hold sorted by class)."""
    n = min(self.config.get('train_eval_examples', 0), self.n_train)
    return np.unique(np.linspace(0, self.n_train - 1, n).round().astype(int)) if n else \
        np.zeros(0, int)


def train_and_evaluate(config, workdir: str, fresh: bool = False, devices=None):
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint).

  Returns the summary dict, or with ``config.parallel_seeds`` > 1 a list of them, one
  per model. ``devices`` (default: all) form the one-axis data mesh. ``fresh`` moves an
  existing run in ``workdir`` aside first. The run holds ``workdir``'s lock (process 0
  only); ``workdir_lock.WorkdirLocked`` if another run holds it.
  """
  with Signals() as signals, workdir_lock.WorkdirLock(workdir, jax.process_index() == 0) as lock:
    return _prepare(config, workdir, fresh, list(devices or jax.devices()), signals, lock)


def _prepare(config, workdir, fresh, devices, signals, lock):
  """Checks, data, model and restore, in the order that makes bad input cost nothing."""
  config_checks.check_config(config, num_devices=len(devices))
  config_checks.check_workdir(config, workdir, fresh)
  lock.acquire()  # an existing workdir: before anything is read from it or written
  ds = data.load_for(config)
  signals.check('while the data was loading')
  config_checks.check_dataset_matches(config, ds)
  if ds.note:
    log.info('%s', ds.note)

  mesh = parallel.make_mesh(devices)
  info = data.dataset_info(ds, config)
  spe, n_train, seeds = info['steps_per_epoch'], len(ds.train_labels), parallel.model_seeds(config)
  model = model_lib.build(config)
  tx = optim.make_optimizer(config, spe)
  image_shape = ds.train_images.shape[1:]
  rep = parallel.replicated(mesh)
  init = jax.jit(lambda: train_step.create_states(model, tx, image_shape, seeds), out_shardings=rep)
  abstract = {'state': jax.eval_shape(init), 'sums': jax.eval_shape(train_step.zero_sums, seeds)}
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), abstract)

  primary = jax.process_index() == 0
  if fresh and primary:
    run_files.move_aside(workdir)
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
    changed = config_checks.run_changes(meta['config'], config) if 'config' in meta else []
    if changed:  # config.json may be gone; the checkpoint still knows its run
      raise TrainingError(
          f'the checkpoint at step {restored[0]} belongs to a run with another config '
          f'({", ".join(changed[:4])}{" ..." if len(changed) > 4 else ""} differ); use another '
          '--workdir, or rerun with --fresh to move it aside')
    signals.check('before training started')
    run = Run(config, ds, mesh, seeds, spe, optim.learning_rate_schedule(config, spe), ckpt,
              signals, primary, folders=[])
    return _train(run, model, info, init, restored)
  finally:
    ckpt.close()


def _train(run, model, info, init, restored):
  config, workdir, rep = run.config, run.ckpt.workdir, parallel.replicated(run.mesh)
  if restored:
    start, item, meta = restored
    state, sums, progress = item['state'], item['sums'], Progress.from_meta(start, meta)
    log.info('resuming from the checkpoint at step %d (epoch %d) in %s', start,
             start // run.spe + 1, run.ckpt.directory)
  else:
    state, sums, progress = init(), jax.device_put(train_step.zero_sums(run.seeds), rep), Progress()
  start, total = progress.step, config.num_epochs * run.spe
  params_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  params_count //= max(np.size(run.seeds), 1)
  training = not (start >= total and progress.epochs_done >= start // run.spe)
  events = training and config.get('tensorboard', True)
  run.folders = [run_files.ModelFolder(d, run.primary, events)
                 for d in run_files.model_dirs(workdir, run.seeds)]
  if run.primary:
    run_files.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    for folder, cfg in zip(run.folders, _model_configs(config, run.seeds)):
      folder.write_json('config.json', cfg)
      folder.metrics.keep_epochs_up_to(progress.epochs_done)
  if not training:  # nothing to do: no compilation
    log.info('the run has already trained %d epochs (step %d); raise --config.num_epochs to '
             'train longer', progress.epochs_done, start)
    return _summaries(run, progress, params=params_count, compile_time_s=0.0,
                      resumed_from_step=start, last_checkpoint_step=start)

  run.images, run.labels = jax.device_put((run.ds.train_images, run.ds.train_labels), rep)
  run.seeds_on_device = jax.device_put(run.seeds, rep)
  run.eval_step = evaluation.make_eval_step(model, info, config, run.mesh, run.seeds)
  chunk = train_step.make_train_chunk(model, info, config, run.mesh, run.seeds)
  t0 = time.perf_counter()
  perm = train_step.epoch_permutation(run.seeds, start // run.spe, run.n_train)
  live = np.ones(np.shape(run.seeds), bool)
  compiled = chunk.lower(state, sums, run.seeds_on_device, jax.device_put(live, rep),
                         run.images, run.labels, jax.device_put(perm, rep),
                         np.int32(1)).compile()
  compile_s = time.perf_counter() - t0
  run.signals.check('before training started')
  log.info('train step compiled in %.1f s; %d parameters%s, %d steps per epoch', compile_s,
           params_count, f' per model, {np.size(run.seeds)} models' if np.ndim(run.seeds) else '',
           run.spe)
  guard = None
  if config.exactness_check_every_steps and variants.make_variant(config.model.variant).reversible:
    guard = exactness.ExactnessGuard(model, info, config, run.seeds, run.mesh)
  if restored:
    run.signals.last_checkpoint = f'the last checkpoint is step {start} in {run.ckpt.directory}'
  loop = TrainLoop(run, compiled, state, sums, progress, guard)
  loop.train()
  return _summaries(run, progress, params=params_count, compile_time_s=round(compile_s, 2),
                    resumed_from_step=start, last_checkpoint_step=loop.saved_step)


def _model_configs(config, seeds) -> list[dict]:
  """Each model's config.json: the run's config with that model's seed."""
  return [dict(config.to_dict(), seed=int(s)) for s in np.atleast_1d(seeds)]


def _summaries(run, progress, **extra):
  """Writes each model's summary.json; returns it (one model) or the list (several).

  Raises TrainingError, after writing them, when a model stopped on a non-finite loss.
  """
  out = []
  for k, (folder, cfg) in enumerate(zip(run.folders, _model_configs(run.config, run.seeds))):
    stopped = progress.stopped.get(str(k))
    out.append(_summary(run, folder, cfg, stopped, **extra))
  if progress.stopped:
    raise TrainingError(f'{len(progress.stopped)} of {len(out)} models stopped: ' +
                        '; '.join(progress.stopped.values()))
  return out if np.ndim(run.seeds) else out[0]


def _summary(run, folder, cfg, stopped, **extra) -> dict:
  """summary.json: best and final accuracy (best = model selection on the eval set)."""
  config, rows = run.config, folder.metrics.rows()
  best = max(rows, key=lambda r: float(r['val_acc'])) if rows else None
  last = rows[-1] if rows else {}
  summary = dict(variant=config.model.variant, dataset=config.dataset, seed=cfg['seed'],
                 epochs_completed=len(rows), **extra,
                 best_val_acc=float(best['val_acc']) if best else None,
                 best_epoch=int(best['epoch']) if best else None,
                 final_val_acc=float(last['val_acc']) if rows else None,
                 total_train_time_s=round(sum(float(r['epoch_time_s']) for r in rows), 2),
                 peak_memory_mib=float(last['peak_memory_mib']) if rows else None,
                 memory_source=last.get('memory_source'),
                 images_per_s=float(last['images_per_s']) if rows else None,
                 finished=len(rows) >= config.num_epochs and not stopped,
                 data_note=run.ds.note, device=jax.devices()[0].device_kind,
                 num_devices=run.mesh.size)
  if np.ndim(run.seeds):
    summary.update(parallel_seeds=int(np.size(run.seeds)), stopped=stopped)
  if run.primary:
    folder.write_json('summary.json', summary)
  return summary
