"""Evaluates a trained run's checkpoint, per class, and exports its parameters.

    python -m vit_jax.tools.evaluate --workdir W [--seed K] [--step last|best|N]
        [--dataset D] [--out DIR] [--export FILE.npz]

Rebuilds the model from ``W/config.json`` and the checkpoint (``--step``: the latest, the
end of the best epoch in the seed's metrics.csv, or a step number; the checkpoint must
still be kept), evaluates it on the run's evaluation split (or ``--dataset``) exactly as
training does, and prints the accuracy; for a run of several seeds (``parallel_seeds``)
``--seed`` picks the model. Writes to ``--out`` (default ``W/evaluation/seed<K>-step<S>``):
``per_class.csv`` (images, correct, accuracy per class), ``confusion.csv`` (rows: true
class, columns: predicted) and ``confusion.png``.

``--export FILE.npz`` writes the model's parameters as float32 NumPy arrays named by
their path in the params tree (``blocks/attn/to_qkv/kernel``; blocks stacked on the first
axis), readable with ``numpy.load`` alone, and ``FILE.json`` beside it: the model config,
class names, the normalisation's mean and std, the run, seed and step.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np

from vit_jax.tools import cli, plots

PROG = 'evaluate'


def _fail(message: str):
  cli.fail(PROG, message)


def choose_step(workdir: str, folder: str, kept: list[int], step: str) -> int:
  """The checkpoint step that ``--step`` names; one line (exit 2) when it is not kept."""
  if not kept:
    _fail(f'no checkpoint in {workdir}/checkpoints: train the run first (python train.py '
          f'--config ... --workdir {workdir})')
  if step == 'last':
    return kept[-1]
  if step == 'best':
    from vit_jax.training import run_files  # lazy: after the checks that need no JAX
    m = run_files.read_metrics(os.path.join(folder, 'metrics.csv'))
    if not len(m['epoch']):
      _fail(f'{folder}/metrics.csv has no epochs: there is no best epoch yet')
    best = int(m['step'][int(np.nanargmax(m['val_acc']))])
    if best not in kept:
      _fail(f'the best epoch ends at step {best}, whose checkpoint was not kept (kept: '
            f'{", ".join(map(str, kept))}); train with --config.keep_checkpoints=0 to keep all')
    return best
  if not step.isdigit() or int(step) not in kept:
    _fail(f'--step={step}: choose last, best or a kept step ({", ".join(map(str, kept))})')
  return int(step)


def predictions(model, params, ds, info, config) -> np.ndarray:
  """Predicted class of every evaluation image (eval batches as in training)."""
  import jax  # lazy: a bad flag fails before JAX loads
  from vit_jax.models import vit as model_lib  # lazy (see above)
  from vit_jax.training import data  # lazy (see above)
  dtype = model_lib.compute_dtype(config.bf16)
  predict = jax.jit(lambda p, x: model.apply(
      {'params': p}, data.normalize(x, info['mean'], info['std'], dtype)).argmax(-1))
  batch = config.eval_batch_size
  return np.concatenate([np.asarray(predict(params, ds.test_images[i:i + batch]))
                         for i in range(0, len(ds.test_labels), batch)])


def write_per_class(out: str, classes, labels, predicted) -> np.ndarray:
  """per_class.csv, confusion.csv and confusion.png; returns the confusion matrix."""
  k = len(classes)
  confusion = np.zeros((k, k), np.int64)
  np.add.at(confusion, (labels, predicted), 1)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'per_class.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['class', 'images', 'correct', 'accuracy'])
    for i, name in enumerate(classes):
      n = int(confusion[i].sum())
      w.writerow([name, n, int(confusion[i, i]), f'{confusion[i, i] / n:.4f}' if n else ''])
  with open(os.path.join(out, 'confusion.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['true \\ predicted', *classes])
    w.writerows([name, *map(int, row)] for name, row in zip(classes, confusion))
  _plot(confusion, classes, os.path.join(out, 'confusion.png'))
  return confusion


def _plot(confusion, classes, path):
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    print('note: matplotlib is not installed; no confusion.png (pip install matplotlib)')
    return
  size = max(4.0, 0.45 * len(classes) + 2)
  fig, ax = plots.new_figure(size, size)
  rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
  ax.imshow(rates, cmap='Blues', vmin=0, vmax=1)
  ticks = np.arange(len(classes))
  ax.set_xticks(ticks, classes, rotation=45, ha='right', fontsize='small')
  ax.set_yticks(ticks, classes, fontsize='small')
  if len(classes) <= 20:
    for (i, j), n in np.ndenumerate(confusion):
      ax.text(j, i, n, ha='center', va='center', fontsize='x-small',
              color='white' if rates[i, j] > 0.5 else 'black')
  ax.set(xlabel='predicted', ylabel='true', title='Confusion (colour: share of the true class)')
  fig.savefig(path)


def export(path: str, params, meta: dict) -> None:
  """FILE.npz of float32 arrays named by their params path, FILE.json beside it."""
  flat = {}
  def walk(tree, prefix):
    for k, v in tree.items():
      walk(v, f'{prefix}{k}/') if isinstance(v, dict) else flat.__setitem__(
          prefix + k, np.asarray(v, np.float32))
  walk(params, '')
  np.savez(path, **flat)
  with open(os.path.splitext(path)[0] + '.json', 'w') as f:
    json.dump(meta, f, indent=2, sort_keys=True)


def main(argv=None):
  p = argparse.ArgumentParser(prog=f'python -m vit_jax.tools.{PROG}',
                              description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--seed', type=int, help="the model's seed (default: the run's first)")
  p.add_argument('--step', default='last', help='last | best | a kept step number')
  p.add_argument('--dataset', help="another data set (default: the run's evaluation split)")
  p.add_argument('--out', help='default: WORKDIR/evaluation/seed<K>-step<S>')
  p.add_argument('--export', metavar='FILE.npz', help='also write the parameters (float32)')
  args = p.parse_args(argv)
  cli.setup_logging()
  w = args.workdir
  if not os.path.exists(os.path.join(w, 'config.json')):
    _fail(f'{w} holds no run (no config.json): pass the --workdir that train.py wrote')
  if args.export and not args.export.endswith('.npz'):
    _fail(f'--export {args.export}: name a .npz file')
  with open(os.path.join(w, 'config.json')) as f:
    saved = json.load(f)
  seeds = [saved['seed'] + k for k in range(saved.get('parallel_seeds', 1))]
  seed = seeds[0] if args.seed is None else args.seed
  if seed not in seeds:
    _fail(f'--seed {seed}: the run in {w} trained seed(s) {", ".join(map(str, seeds))}')
  ckpt_dir = os.path.join(w, 'checkpoints')
  if not any(n.isdigit() for n in (os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else [])):
    choose_step(w, w, [], args.step)  # says there is no checkpoint
  import jax  # lazy: a bad flag fails before JAX loads
  import ml_collections  # lazy (see above)
  from vit_jax.models import vit as model_lib  # lazy (see above)
  from vit_jax.training import checkpoints, config_checks, data, evaluation, parallel  # lazy
  config = ml_collections.ConfigDict(saved)
  folder = w if len(seeds) == 1 else os.path.join(w, f'seed{seed}')
  step = choose_step(w, folder, checkpoints.Checkpoints(w, read_only=True).steps(), args.step)
  if args.dataset:
    config.dataset = args.dataset
  try:
    ds = data.load_for(config)
    config_checks.check_dataset_matches(config, ds)
  except (data.DataError, config_checks.ConfigError) as e:
    _fail(str(e))
  _, train, _ = checkpoints.load_arrays(w, step)
  params = train['state']['params']
  if len(seeds) > 1:
    params = jax.tree.map(lambda a: a[seeds.index(seed)], params)
  model, info = model_lib.build(config), data.dataset_info(ds, config)
  mesh = parallel.make_mesh(jax.devices()[:1])
  loss, acc = evaluation.evaluate(evaluation.make_eval_step(model, info, config, mesh), params,
                                  ds.test_images, ds.test_labels, config.eval_batch_size, mesh)
  out = args.out or os.path.join(w, 'evaluation', f'seed{seed}-step{step}')
  confusion = write_per_class(out, ds.class_names, ds.test_labels,
                              predictions(model, params, ds, info, config))
  print(f'{PROG}: {w}, seed {seed}, step {step} (epoch {step // info["steps_per_epoch"]}): '
        f'accuracy {100 * acc:.2f} % on {len(ds.test_labels)} images of {ds.name}, loss '
        f'{loss:.4f}; per class: {out}')
  if abs(np.trace(confusion) / confusion.sum() - acc) > 0:
    print(f'note: the per-class predictions count {np.trace(confusion)} correct, the '
          f'evaluation {round(acc * len(ds.test_labels))}: a near-tie predicted differently')
  if args.export:
    export(args.export, params, dict(
        model=config.model.to_dict(), variant=config.model.variant, classes=list(ds.class_names),
        mean=list(info['mean']), std=list(info['std']), workdir=os.path.abspath(w), seed=seed,
        step=step, layout='params tree paths joined by "/"; blocks stacked on axis 0; '
                          'Dense kernels [in, out]; images NHWC, normalised (x/255 - mean) / std'))
    print(f'{PROG}: parameters written to {args.export} (+ .json)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
