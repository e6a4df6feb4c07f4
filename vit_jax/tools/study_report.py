"""The study's report: does each variant differ from vit? With 95 % intervals over seeds.

Per variant, from the same runs: mean ± std over seeds of the best and the final
validation accuracy, the final train accuracy (``train_eval_acc``: training images
evaluated unaugmented, as validation is), the train − val gap at the final epoch, the
training time per epoch and the training memory; per variant and accuracy, its difference
to vit with a Welch t interval (``stats.welch_difference``). Curves: validation accuracy
and the train − val gap per epoch, mean over seeds with a min–max band.
Writes ``study.md``, ``study.csv``, ``val_acc.png`` and ``gap.png``.
"""
import csv
import os

import numpy as np

from vit_jax.models import variants
from vit_jax.tools import plots, stats
from vit_jax.training import run_files

BASELINE = 'vit'
# (column, what it is, from a run's metrics): accuracies in %, per run
ACCURACIES = (
    ('best_val', 'best val acc (%)', lambda m: 100 * np.nanmax(m['val_acc'])),
    ('final_val', 'final val acc (%)', lambda m: 100 * m['val_acc'][-1]),
    ('final_train', 'final train acc (%)', lambda m: 100 * m['train_eval_acc'][-1]),
    ('gap', 'train − val gap (points)', lambda m: 100 * (m['train_eval_acc'][-1]
                                                        - m['val_acc'][-1])),
)


def load_runs(workdir: str) -> dict[str, list[dict]]:
  """variant -> its runs (``run_files.load_run``), in seed order; reports are not runs."""
  dirs = [d for d in run_files.find_run_dirs([workdir])
          if not os.path.relpath(d, workdir).split(os.sep)[0].endswith('report')]
  by_variant = {}
  for run in filter(None, map(run_files.load_run, dirs)):
    by_variant.setdefault(run['variant'], []).append(run)
  order = {v: i for i, v in enumerate(variants.VARIANTS)}
  return {v: sorted(by_variant[v], key=lambda r: r['seed'])
          for v in sorted(by_variant, key=lambda v: order.get(v, len(order)))}


def epoch_time(run: dict) -> float:
  """One model's training time per epoch: the median over epochs after the first (which
  compiles) of its program's epoch time, over the models the program trains (on a CPU
  they run one after another). A median, since other work on a shared machine slows a
  few epochs."""
  times = run['metrics']['epoch_time_s']
  times = times[1:] if len(times) > 1 else times
  return float(np.nanmedian(times)) / (run['config'] or {}).get('parallel_seeds', 1)


def summarize(runs_by_variant: dict[str, list[dict]],
              step_times: dict | None = None) -> list[dict]:
  """One row per variant: per-seed values, mean ± std, and the difference to vit.

  ``step_times``: ``study.time_steps``'s record; each variant's step time measured in one
  sitting, as ms per step and as seconds per epoch (its runs' steps per epoch)."""
  rows = []
  for variant, runs in runs_by_variant.items():
    row = dict(variant=variant, seeds=[r['seed'] for r in runs],
               epochs=sorted({r['epochs'] for r in runs}),
               finished=sum(r['finished'] for r in runs))
    for key, _, of in ACCURACIES:
      row[key] = [float(of(r['metrics'])) for r in runs]
      row[key + '_mean'], row[key + '_std'] = stats.mean_std(row[key])
    row['epoch_time_s'], row['epoch_time_s_std'] = stats.mean_std(
        [epoch_time(r) for r in runs])
    step_ms = {t['variant']: t['step_time_ms'] for t in (step_times or {}).get('rows', [])}
    row['sitting_step_ms'] = step_ms.get(variant) or float('nan')
    row['sitting_epoch_s'] = row['sitting_step_ms'] / 1e3 * runs[0]['metrics']['step'][0] \
        if 'step' in runs[0]['metrics'] else float('nan')
    row['memory_mib'] = max((r['peak_memory_mib'] for r in runs
                             if r['peak_memory_mib'] is not None), default=float('nan'))
    rows.append(row)
  base = next((r for r in rows if r['variant'] == BASELINE), None)
  done = lambda r: r['finished'] == len(r['seeds'])  # a difference of final numbers only
  for row in rows:
    for key, _, _ in ACCURACIES:
      row[key + '_vs_vit'] = (stats.welch_difference(base[key], row[key])
                              if base and row is not base and done(base) and done(row)
                              else None)
    for key in ('epoch_time_s', 'sitting_epoch_s', 'memory_mib'):
      row[key + '_ratio'] = row[key] / base[key] if base else float('nan')
  return rows


def _pm(mean, std) -> str:
  return '—' if not np.isfinite(mean) else f'{mean:.2f} ± {std:.2f}' if np.isfinite(std) \
      else f'{mean:.2f}'


def _num(value, spec='.2f') -> str:
  return format(value, spec) if np.isfinite(value) else '—'


def _markdown(rows, name, study, manifest, step_times) -> str:
  n = max((len(r['seeds']) for r in rows), default=0)
  head = ('| variant | seeds | epochs | ' + ' | '.join(t for _, t, _ in ACCURACIES)
          + ' | time/epoch (s) | ×vit | time/epoch, one sitting (s) | ×vit | memory (MiB) '
          '| ×vit |')
  lines = [f'# Study {name}', '', f'Subsets: {study.rule}.', '', f'Model and recipe: {study.why}.',
           '', head, '|' + '---|' * (head.count('|') - 1)]
  for r in rows:
    lines.append('| ' + ' | '.join(
        [r['variant'], f'{len(r["seeds"])} ({r["finished"]} finished)',
         '/'.join(map(str, r['epochs']))]
        + [_pm(r[k + '_mean'], r[k + '_std']) for k, _, _ in ACCURACIES]
        + [_num(r['epoch_time_s']), _num(r['epoch_time_s_ratio']),
           _num(r['sitting_epoch_s']), _num(r['sitting_epoch_s_ratio']),
           _num(r['memory_mib'], ',.1f'), _num(r['memory_mib_ratio'])]) + ' |')
  lines += ['', '## Difference to vit (mean of the variant − mean of vit, 95 % Welch t '
            'interval over seeds)', '',
            '| variant | ' + ' | '.join(t for _, t, _ in ACCURACIES) + ' |',
            '|---|' + '---|' * len(ACCURACIES)]
  for r in rows:
    if r['variant'] != BASELINE:
      lines.append(f'| {r["variant"]} | ' + ' | '.join(
          r[k + '_vs_vit'].describe('') if r[k + '_vs_vit'] else '— (runs unfinished)'
          for k, _, _ in ACCURACIES) + ' |')
  lines += ['', f'Mean ± sample std (ddof 1) over {n} seeds. "best" is the best epoch\'s '
            'validation accuracy (model selection on the validation set: optimistic); "final" '
            'and the gap are at the last epoch. Train accuracy: the training images evaluated '
            'without augmentation, dropout or BDIA\'s γ, as validation is. Time per epoch: '
            'training steps only, one model\'s share of its program\'s epoch (on a CPU the '
            'seeds run one after another), median over epochs after the first (which '
            'compiles), then mean over seeds (one program: one time); it depends on what '
            'else the machine did '
            'meanwhile. One sitting: one model\'s training step of each variant timed one '
            'after another with nothing else training (step_times.json), times the '
            'steps of an epoch: the fair speed comparison. Memory: XLA\'s compiled training '
            'program for all seeds of the variant. An interval that covers 0 reads "'
            + stats.NO_DIFFERENCE.format(n=n) + '".', '', '## Invocations', '']
  for inv in manifest.get('invocations', []):
    lines.append(f'- {inv["started"]}: commit {inv["commit"]}, {inv["cpu"]} ({inv["cores"]} '
                 f'cores), Python {inv["python"]}, jax {inv["jax"]}, {inv["device"]}')
  if step_times:
    lines.append(f'- one-sitting step times: {step_times["measured"]}, commit '
                 f'{step_times["commit"]}, {step_times["cpu"]}, {step_times["steps"]} steps each')
  if manifest.get('changes'):
    lines.append(f'- changed from the study\'s definition: {" ".join(manifest["changes"])}')
  return '\n'.join(lines) + '\n'


def _csv(rows, path):
  fields = ['variant', 'n_seeds', 'finished']
  for k, _, _ in ACCURACIES:
    fields += [k + '_mean', k + '_std', k + '_per_seed', k + '_vs_vit', k + '_vs_vit_low',
               k + '_vs_vit_high']
  fields += ['epoch_time_s', 'epoch_time_s_ratio', 'sitting_epoch_s', 'sitting_epoch_s_ratio',
             'memory_mib', 'memory_mib_ratio']
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fields)
    w.writeheader()
    for r in rows:
      out = dict(variant=r['variant'], n_seeds=len(r['seeds']), finished=r['finished'])
      for k, _, _ in ACCURACIES:
        d = r[k + '_vs_vit']
        out.update({k + '_mean': r[k + '_mean'], k + '_std': r[k + '_std'],
                    k + '_per_seed': ';'.join(f'{v:.2f}' for v in r[k]),
                    k + '_vs_vit': d.diff if d else '', k + '_vs_vit_low': d.low if d else '',
                    k + '_vs_vit_high': d.high if d else ''})
      out.update({k: r[k] for k in fields[-6:]})
      w.writerow({k: f'{v:.4g}' if isinstance(v, float) else v for k, v in out.items()})


def _plots(runs_by_variant, rows, out):
  """val_acc.png and gap.png: each variant's mean over seeds with a min–max band."""
  plot_rows = [dict(label=r['variant'], variant=r['variant'], n_seeds=len(r['seeds']),
                    n_finished=r['finished']) for r in rows]
  curves = {v: [dict(m, gap=m['train_eval_acc'] - m['val_acc'])
                for m in (run['metrics'] for run in runs)]
            for v, runs in runs_by_variant.items()}
  plots.plot_curves(plot_rows, curves, 'val_acc', os.path.join(out, 'val_acc.png'),
                    'Validation accuracy per epoch', 'validation accuracy (%)', scale=100.0)
  plots.plot_curves(plot_rows, curves, 'gap', os.path.join(out, 'gap.png'),
                    'Train − validation accuracy per epoch (train images unaugmented)',
                    'train − val accuracy (points)', scale=100.0)


def write_study_report(workdir: str, out: str, name: str, study) -> list[dict]:
  """Writes the study's report from the runs under ``workdir``; returns its rows."""
  runs = load_runs(workdir)
  read = lambda name: (run_files.read_json(os.path.join(workdir, name))
                       if os.path.exists(os.path.join(workdir, name)) else {})
  manifest, step_times = read('study.json'), read('step_times.json')
  rows = summarize(runs, step_times)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'study.md'), 'w') as f:
    f.write(_markdown(rows, name, study, manifest, step_times))
  _csv(rows, os.path.join(out, 'study.csv'))
  _plots(runs, rows, out)
  return rows
