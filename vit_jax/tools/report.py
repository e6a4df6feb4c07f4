"""Results table and plots over training runs: ``report RUN_DIR... --out DIR``.

A RUN_DIR is a workdir holding ``metrics.csv`` (and usually ``config.json``, ``summary.json``)
or a folder searched recursively for them. Runs whose configs differ only by ``seed`` and
bookkeeping fields (``IGNORED_KEYS``) form a group, labelled by its variant plus the fields
that tell it apart from other groups of that variant (``bdia depth=12``): one row of
``results.md`` / ``results.csv`` (mean ± std over seeds), one curve or bar in the plots.
Per-epoch numbers (best/final val acc, epochs, time per epoch, images/s) always come from
``metrics.csv``, so unfinished runs are handled alike and the table matches the plots;
``summary.json`` adds parameters, compile time and peak memory. Time to accuracy is the
training time until the validation accuracy first reaches a target (``--target-acc``, by
default the highest whole percent every run of the data set reaches).
"""
import argparse
import csv
import fnmatch
import json
import os
from typing import Any, Sequence

import numpy as np

from vit_jax.models import variants
from vit_jax.tools import plots as plots_lib
from vit_jax.training.run_files import default_targets, find_run_dirs, load_run, time_to_accuracy

# Config fields that do not change what is trained (dotted key or last component, fnmatch).
IGNORED_KEYS = ('seed', 'workdir', 'data_dir', 'progress_bar', 'log_every_steps',
                'checkpoint_*', 'keep_checkpoints', 'exactness_check_every_steps',
                'distributed', 'parallel_seeds', 'steps_per_dispatch', 'vmap_seeds')
CSV_FIELDS = ('label', 'variant', 'dataset', 'n_seeds', 'seeds', 'n_finished', 'epochs_min',
              'epochs_max', 'planned_epochs', 'best_val_acc_pct_mean', 'best_val_acc_pct_std',
              'best_epoch_mean', 'final_val_acc_pct_mean', 'final_val_acc_pct_std',
              'target_acc_pct', 'time_to_target_s_mean', 'time_to_target_s_std',
              'n_reached_target', 'epoch_time_s', 'images_per_s', 'peak_memory_mib',
              'memory_source', 'params', 'compile_time_s', 'run_dirs')


_NOTE_ACC = (
    '"best" is the best epoch\'s validation accuracy (the epoch is selected on the evaluation '
    'set, as the original project did, so it is optimistic); "final" is the last epoch\'s. '
    'Both are mean ± sample std (ddof=1) over seeds, "—" with one seed. "finished" counts runs '
    'whose summary.json says "finished": true; others are reported up to their last epoch.')
_NOTE_TIME = (
    '¹ Mean over epochs excluding the first one (it includes XLA compilation) when a run has '
    '≥2 epochs, then mean over seeds. Peak memory: maximum over seeds; its source says how it '
    'was obtained (device_peak: allocator peak; compiled_analysis: XLA\'s compile-time estimate), '
    'and numbers from different sources are not directly comparable.')


def _fail(msg: str):
  raise SystemExit(f'report: error: {msg}')


def _flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  """Nested config dict -> {'model.depth': 6, ...}."""
  out = {}
  for k, v in d.items():
    out.update(_flatten(v, f'{prefix}{k}.') if isinstance(v, dict) else {prefix + k: v})
  return out


def _fmt_value(v: Any) -> str:
  return f'{v:g}' if isinstance(v, float) else str(v)


def group_runs(runs: Sequence[dict], ignore: Sequence[str] = ()) -> list[dict]:
  """Groups of runs whose configs agree outside the ignored keys, labelled and sorted."""
  patterns = tuple(IGNORED_KEYS) + tuple(ignore)
  groups = {}
  for run in runs:
    if run['config'] is None:
      flat, key = None, json.dumps(['no-config', run['variant'], run['dataset']])
    else:
      flat = {k: v for k, v in _flatten(run['config']).items()
              if not any(fnmatch.fnmatchcase(k.rsplit('.', 1)[-1], p) or fnmatch.fnmatchcase(k, p)
                         for p in patterns)}
      key = json.dumps(flat, sort_keys=True, default=str)
    groups.setdefault(key, {'flat': flat, 'variant': run['variant'], 'dataset': run['dataset'],
                            'runs': []})['runs'].append(run)
  groups = list(groups.values())
  for g in groups:  # by seed, wherever a run's folder is (seed-parallel runs nest theirs)
    g['runs'].sort(key=lambda r: (r['seed'] is None, r['seed'] or 0, r['dir']))
  top = {k for g in groups if g['flat'] for k in g['flat'] if '.' not in k}
  short = lambda k: k[6:] if k.startswith('model.') and k[6:] not in top else k  # model.depth
  for variant in {g['variant'] for g in groups}:
    same = [g for g in groups if g['variant'] == variant]
    with_cfg = [g for g in same if g['flat'] is not None]
    keys = sorted({k for g in with_cfg for k in g['flat']})
    differing = [k for k in keys if len({_fmt_value(g['flat'].get(k, '<unset>'))
                                         for g in with_cfg}) > 1]
    for g in same:
      values = [g['flat'].get(k, '<unset>') for k in differing] if g['flat'] else [g['dataset']]
      g['sort'] = tuple((0, v, '') if isinstance(v, (int, float)) else (1, 0, str(v))
                        for v in values)  # numbers in numeric order: depth=6 before depth=12
      g['label'] = ' '.join([variant] + [f'{short(k)}={_fmt_value(v)}' for k, v in
                                         zip(differing, values)]) if g['flat'] else \
          f'{variant} {g["dataset"]} (no config.json)'
  order = {v: i for i, v in enumerate(variants.VARIANTS)}
  groups.sort(key=lambda g: (order.get(g['variant'], len(order)), g['variant'],
                             g['flat'] is None, g['sort']))
  return groups


def _mean_std(values: Sequence[float | None], scale: float = 1.0):
  vals = [v * scale for v in values if v is not None]
  if not vals:
    return None, None
  return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) >= 2 else None)


def summarize_group(group: dict, target: float | None = None) -> dict:
  """The group's table row: per-run numbers aggregated over seeds (accuracies in %).

  ``target``: the validation accuracy (fraction) for the time-to-accuracy columns.
  """
  runs = group['runs']
  col = lambda k: [r[k] for r in runs]
  times = [None if target is None else time_to_accuracy(r['metrics'], target) for r in runs]
  time_m, time_s = _mean_std(times)
  best_m, best_s = _mean_std(col('best_val_acc'), 100.0)
  final_m, final_s = _mean_std(col('final_val_acc'), 100.0)
  mems = [r['peak_memory_mib'] for r in runs if r['peak_memory_mib'] is not None]
  sources = sorted({r['memory_source'] for r in runs if r['peak_memory_mib'] is not None} - {''})
  params = sorted({r['params'] for r in runs if r['params'] is not None})
  planned = sorted({r['planned_epochs'] for r in runs if r['planned_epochs'] is not None})
  pct = lambda v: None if v is None else 100.0 * v
  return dict(
      label=group['label'], variant=group['variant'], dataset=group['dataset'],
      n_seeds=len(runs), seeds=col('seed'), n_finished=sum(col('finished')),
      epochs_min=min(col('epochs')), epochs_max=max(col('epochs')),
      planned_epochs=planned[0] if len(planned) == 1 else None,
      best_val_acc_pct_mean=best_m, best_val_acc_pct_std=best_s,
      best_epoch_mean=_mean_std(col('best_epoch'))[0],
      final_val_acc_pct_mean=final_m, final_val_acc_pct_std=final_s,
      target_acc_pct=pct(target), time_to_target_s_mean=time_m, time_to_target_s_std=time_s,
      n_reached_target=sum(t is not None for t in times),
      epoch_time_s=_mean_std(col('epoch_time_s'))[0],
      images_per_s=_mean_std(col('images_per_s'))[0],
      peak_memory_mib=max(mems) if mems else None, memory_source='+'.join(sources),
      params=params[0] if len(params) == 1 else None,
      compile_time_s=_mean_std(col('compile_time_s'))[0],
      run_dirs=col('dir'), config=group['flat'],
      runs=[dict({k: r[k] for k in ('dir', 'seed', 'epochs', 'planned_epochs', 'finished')},
                 best_val_acc_pct=pct(r['best_val_acc']), final_val_acc_pct=pct(r['final_val_acc']),
                 time_to_target_s=t)
            for r, t in zip(runs, times)])


def _fmt(v, spec: str) -> str:
  return '—' if v is None else format(v, spec)


def _pm(row, key) -> str:
  mean, std = row[key + '_mean'], row[key + '_std']
  return '—' if mean is None else f'{mean:.2f} ± {_fmt(std, ".2f")}'


def _time_to_target(row) -> str:
  mean, std, k, n = (row['time_to_target_s_mean'], row['time_to_target_s_std'],
                     row['n_reached_target'], row['n_seeds'])
  if mean is None:
    return '—' if row['target_acc_pct'] is None else f'not reached (0/{n})'
  return f'{mean:,.0f} ± {_fmt(std, ",.0f")}' + ('' if k == n else f' ({k}/{n} reached)')


def _note_target(rows: Sequence[dict]) -> str:
  targets = ', '.join(f'{t:g} % ({d})' for d, t in
                      dict.fromkeys((r['dataset'], r['target_acc_pct']) for r in rows
                                    if r['target_acc_pct'] is not None))
  return ('² Training time (sum of epoch times: XLA compilation included, evaluation excluded) '
          'until the first epoch whose validation accuracy reaches the target, mean ± std over '
          f'the seeds that reached it. Target: {targets or "none"}.')


def write_markdown(rows: Sequence[dict], path: str):
  """results.md: one table row per group, footnotes, and the run directories used."""
  lines = ['# Results', '',
           '| run | dataset | seeds | finished | epochs | best val acc (%) | best epoch '
           '| final val acc (%) | time to target (s)² | time/epoch (s)¹ | images/s¹ '
           '| peak memory (MiB) | memory source | params |',
           '|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|']
  for r in rows:
    epochs = str(r['epochs_min']) + ('' if r['epochs_min'] == r['epochs_max'] else
                                     f'–{r["epochs_max"]}')
    lines.append('| ' + ' | '.join([
        r['label'].replace('|', r'\|'), r['dataset'], str(r['n_seeds']),
        f'{r["n_finished"]}/{r["n_seeds"]}', epochs,
        _pm(r, 'best_val_acc_pct'), _fmt(r['best_epoch_mean'], '.1f'), _pm(r, 'final_val_acc_pct'),
        _time_to_target(r), _fmt(r['epoch_time_s'], '.2f'), _fmt(r['images_per_s'], ',.0f'),
        _fmt(r['peak_memory_mib'], ',.1f'), r['memory_source'] or '—', _fmt(r['params'], ',')])
                 + ' |')
  lines += ['', _NOTE_ACC, '', _NOTE_TIME, '', _note_target(rows), '', '## Run directories', '']
  for r in rows:
    for run in r['runs']:
      planned = f'/{run["planned_epochs"]}' if run['planned_epochs'] else ''
      lines.append(f'- `{run["dir"]}`: {r["label"]}, seed {run["seed"]}, {run["epochs"]}{planned} '
                   f'epochs, best {_fmt(run["best_val_acc_pct"], ".2f")}%, final '
                   f'{_fmt(run["final_val_acc_pct"], ".2f")}%'
                   + ('' if run['time_to_target_s'] is None else
                      f', reached {r["target_acc_pct"]:g}% after {run["time_to_target_s"]:,.1f} s')
                   + ('' if run['finished'] else ', **unfinished**'))
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def write_csv(rows: Sequence[dict], path: str):
  """results.csv: the table's numbers (accuracies in %, blanks for missing values)."""
  def cell(v):
    if isinstance(v, (list, tuple)):
      return ';'.join(map(str, v))
    return '' if v is None else format(v, '.6g') if isinstance(v, float) else v
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(CSV_FIELDS)
    for r in rows:
      w.writerow([cell(r[k]) for k in CSV_FIELDS])


def target_acc_error(target_acc: float | None) -> str | None:
  """What is wrong with a --target-acc value (percent), or None when it is usable."""
  if target_acc is not None and not 0.0 < target_acc <= 100.0:
    return f'--target-acc must be a percentage in (0, 100], got {target_acc:g}'
  return None


def build_report(run_dirs: Sequence[str], out_dir: str, ignore: Sequence[str] = (),
                 plots: bool = True, target_acc: float | None = None) -> list[dict]:
  """Finds runs under ``run_dirs``, writes results.md/.csv (and PNG plots) to ``out_dir``.

  Returns the group rows in table order: dicts with the keys of ``CSV_FIELDS`` plus
  ``config`` (the group's flattened config without ignored keys; None without config.json)
  and ``runs`` (per run: dir, seed, epochs, planned_epochs, finished, best/final_val_acc_pct).
  ``target_acc``: the time-to-accuracy target in percent, the same for every data set;
  None: per data set, the highest whole percent that every run reaches.
  Raises SystemExit with a one-line message on bad input.
  """
  if target_acc_error(target_acc):
    _fail(target_acc_error(target_acc))
  runs = [r for r in map(load_run, find_run_dirs(run_dirs)) if r is not None]
  if not runs:
    _fail('no run with at least one recorded epoch found under: ' + ', '.join(run_dirs))
  for r in (r for r in runs if not r['finished']):
    print(f'note: {r["dir"]} is unfinished ({r["epochs"]}/{r["planned_epochs"] or "?"} epochs)')
  groups = group_runs(runs, ignore)
  targets = (default_targets(runs) if target_acc is None else
             {r['dataset']: target_acc / 100.0 for r in runs})
  rows = [summarize_group(g, targets.get(g['dataset'])) for g in groups]
  os.makedirs(out_dir, exist_ok=True)
  write_markdown(rows, os.path.join(out_dir, 'results.md'))
  write_csv(rows, os.path.join(out_dir, 'results.csv'))
  if plots:
    curves = {g['label']: [r['metrics'] for r in g['runs']] for g in groups}
    plots_lib.write_plots(rows, curves, out_dir)
  return rows


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vit_jax.tools.report',
                                   description='Results table (results.md/.csv) and plots.')
  parser.add_argument('run_dirs', nargs='+', metavar='RUN_DIR',
                      help='training workdirs, or folders searched recursively for them')
  parser.add_argument('--out', required=True, metavar='DIR', help='output folder')
  parser.add_argument('--ignore', action='append', default=[], metavar='KEY',
                      help='extra config key (dotted, fnmatch pattern) to ignore when grouping')
  parser.add_argument('--no-plots', action='store_true', help='write only results.md/.csv')
  parser.add_argument('--target-acc', type=float, metavar='PCT',
                      help='validation accuracy (%%) for the time-to-accuracy column; default: '
                      'the highest whole percent every run of the data set reaches')
  args = parser.parse_args(argv)
  rows = build_report(args.run_dirs, args.out, ignore=args.ignore, plots=not args.no_plots,
                      target_acc=args.target_acc)
  n_runs = sum(r['n_seeds'] for r in rows)
  print(f'{len(rows)} group(s) from {n_runs} run(s): {os.path.join(args.out, "results.md")}')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
