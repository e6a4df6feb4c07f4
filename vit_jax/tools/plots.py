"""Comparison plots for ``vit_jax.tools.report``: PNGs drawn with matplotlib's Agg canvas.

matplotlib is optional and imported lazily; without it the plots are skipped with a note.
Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas, not pyplot, so no
global backend or figure state is touched. Each variant keeps one colour in every plot
(``VARIANT_COLORS``); groups sharing a variant differ by line style and marker.
"""
import os
import zlib
from typing import Mapping, Sequence

import numpy as np

VARIANT_COLORS = {'vit': '#1f77b4', 'remat': '#ff7f0e', 'revvit': '#2ca02c',
                  'bdia': '#d62728', 'momentum': '#9467bd'}
_EXTRA_COLORS = ('#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf')
_LINESTYLES = ('-', '--', ':', '-.')
_MARKERS = ('o', 's', '^', 'D', 'v', 'P')


def variant_color(variant: str) -> str:
  """The variant's fixed colour; unknown variants get a stable colour from their name."""
  if variant in VARIANT_COLORS:
    return VARIANT_COLORS[variant]
  return _EXTRA_COLORS[zlib.crc32(variant.encode()) % len(_EXTRA_COLORS)]


def _styles(rows: Sequence[dict]) -> dict[str, tuple[str, str, str]]:
  """label -> (colour, line style, marker); the k-th group of a variant gets the k-th style."""
  count, out = {}, {}
  for r in rows:
    k = count[r['variant']] = count.get(r['variant'], -1) + 1
    out[r['label']] = (variant_color(r['variant']), _LINESTYLES[k % len(_LINESTYLES)],
                       _MARKERS[k % len(_MARKERS)])
  return out


def _legend_label(row: dict) -> str:
  unfinished = row['n_seeds'] - row['n_finished']
  extra = f', {unfinished} unfinished' if unfinished else ''
  return f'{row["label"]} (n={row["n_seeds"]}{extra})'


def new_figure(width: float = 7.5, height: float = 4.5):
  """A Figure on its own Agg canvas and its one Axes: no pyplot, no global state."""
  # pylint: disable=import-outside-toplevel
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=120, layout='constrained')
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot()


def mean_band(runs: Sequence[tuple[np.ndarray, np.ndarray]]):
  """(epochs, mean, min, max) over runs at each epoch, using the runs that reached it."""
  epochs = np.unique(np.concatenate([e for e, _ in runs]))
  table = np.full((len(runs), len(epochs)), np.nan)
  for i, (e, v) in enumerate(runs):
    table[i, np.searchsorted(epochs, e)] = v
  keep = np.isfinite(table).any(axis=0)
  table, epochs = table[:, keep], epochs[keep]
  return epochs, np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0)


def _time_unit(curves) -> tuple[str, float]:
  """The unit (s, min or h) that keeps the longest run's training time readable."""
  longest = max((np.nansum(m['epoch_time_s']) for runs in curves.values() for m in runs
                 if 'epoch_time_s' in m), default=0.0)
  return ('h', 3600.0) if longest > 10 * 3600 else ('min', 60.0) if longest > 600 else ('s', 1.0)


def plot_curves(rows, curves, metric: str, path: str, title: str, ylabel: str,
                scale: float = 1.0, against_time: bool = False) -> str | None:
  """Mean over seeds per group with a shaded min–max band; None when no group has data.

  ``against_time``: x is the training time at the end of each epoch (cumulative
  ``epoch_time_s``, mean over seeds) instead of the epoch, and the time-to-accuracy
  target is drawn as a dotted line.
  """
  styles, drawn = _styles(rows), 0
  unit, per_unit = _time_unit(curves) if against_time else ('', 1.0)
  fig, ax = new_figure()
  for row in rows:
    runs = [m for m in curves.get(row['label'], [])
            if metric in m and np.isfinite(m[metric]).any()
            and (not against_time or np.isfinite(m['epoch_time_s']).all())]
    if not runs:
      continue
    epochs, mean, lo, hi = mean_band([(m['epoch'], m[metric]) for m in runs])
    x = epochs
    if against_time:
      x = mean_band([(m['epoch'], np.cumsum(m['epoch_time_s'])) for m in runs])[1] / per_unit
    color, ls, marker = styles[row['label']]
    ax.plot(x, mean * scale, color=color, linestyle=ls, linewidth=1.6,
            marker=marker if len(epochs) <= 25 else None, markersize=3.5,
            label=_legend_label(row))
    if len(runs) >= 2:
      ax.fill_between(x, lo * scale, hi * scale, color=color, alpha=0.18, linewidth=0)
    drawn += 1
  if not drawn:
    print(f'note: skipping {os.path.basename(path)}: no {metric} values')
    return None
  targets = {r['target_acc_pct'] for r in rows if r.get('target_acc_pct') is not None}
  if against_time and len(targets) == 1:
    target = targets.pop()
    ax.axhline(target, color='grey', linestyle=':', linewidth=1)
    ax.annotate(f'target {target:g} %', (0, target), xycoords=('axes fraction', 'data'),
                xytext=(4, 3), textcoords='offset points', fontsize='small', color='grey')
  ax.set(title=title, xlabel=f'training time ({unit})' if against_time else 'epoch',
         ylabel=ylabel)
  if not against_time:
    ax.xaxis.get_major_locator().set_params(integer=True)
  ax.grid(alpha=0.3)
  ax.legend(fontsize='small', title='mean over seeds, band = min–max', title_fontsize='small')
  fig.savefig(path)
  return path


def _memory_rows(rows, name: str) -> list[dict]:
  have = [r for r in rows if r['peak_memory_mib'] is not None]
  if not have:
    print(f'note: skipping {name}: no peak memory numbers')
  return have


def _sources_note(rows) -> str:
  """Where the memory numbers come from, for a title; warns when sources are mixed."""
  sources = sorted({s for r in rows for s in r['memory_source'].split('+') if s})
  if len(sources) > 1:
    return f'\nmixed memory sources ({", ".join(sources)}): not directly comparable'
  return f' ({sources[0]})' if sources else ''


def plot_memory(rows, path: str) -> str | None:
  """Bar chart of each group's peak memory (MiB, max over seeds), bars labelled by value."""
  from matplotlib.patches import Patch  # pylint: disable=import-outside-toplevel
  rows = _memory_rows(rows, os.path.basename(path))
  if not rows:
    return None
  fig, ax = new_figure(max(6.0, 1.0 * len(rows) + 3.0), 4.8)
  x = np.arange(len(rows))
  values = [r['peak_memory_mib'] for r in rows]
  bars = ax.bar(x, values, color=[variant_color(r['variant']) for r in rows],
                edgecolor='black', linewidth=0.5)
  mixed = len({r['memory_source'] for r in rows}) > 1  # then name each bar's source
  ax.bar_label(bars, labels=[f'{r["peak_memory_mib"]:,.0f}' + (f'\n{r["memory_source"]}' if mixed
                                                                else '') for r in rows],
               padding=2, fontsize='small')
  ax.set_xticks(x, [r['label'] for r in rows], rotation=20, ha='right')
  ax.set_ylim(0, max(values) * 1.2)
  ax.set(title='Peak memory per group, max over seeds' + _sources_note(rows),
         ylabel='peak memory (MiB)', xlabel='group')
  ax.grid(axis='y', alpha=0.3)
  variants = list(dict.fromkeys(r['variant'] for r in rows))
  ax.legend(handles=[Patch(color=variant_color(v), label=v) for v in variants],
            fontsize='small', title='variant', title_fontsize='small')
  fig.savefig(path)
  return path


def plot_acc_vs_memory(rows, path: str) -> str | None:
  """Scatter of best validation accuracy (%, ± std over seeds) against peak memory (MiB)."""
  rows = [r for r in _memory_rows(rows, os.path.basename(path))
          if r['best_val_acc_pct_mean'] is not None]
  if not rows:
    return None
  styles = _styles(rows)
  fig, ax = new_figure()
  for r in rows:
    color, _, marker = styles[r['label']]
    ax.errorbar(r['peak_memory_mib'], r['best_val_acc_pct_mean'], yerr=r['best_val_acc_pct_std'],
                fmt=marker, color=color, markersize=7, capsize=3, label=_legend_label(r))
    ax.annotate(r['label'], (r['peak_memory_mib'], r['best_val_acc_pct_mean']),
                xytext=(6, 5), textcoords='offset points', fontsize='small')
  ax.margins(0.15)
  ax.set(title='Best validation accuracy vs peak memory' + _sources_note(rows),
         xlabel='peak memory (MiB)', ylabel='best validation accuracy (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize='small', title='error bar = std over seeds', title_fontsize='small')
  fig.savefig(path)
  return path


def write_plots(rows: Sequence[dict], curves: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
                out_dir: str) -> list[str]:
  """Writes val_acc.png, val_acc_vs_time.png, train_loss.png, memory.png and
  acc_vs_memory.png; returns their paths.

  ``rows`` are ``vit_jax.tools.report`` group rows; ``curves`` maps a row's label to its runs'
  metrics.csv columns (arrays keyed 'epoch', 'val_acc', 'train_loss', ...). A plot whose
  data are missing is skipped with a printed note, as are all plots without matplotlib.
  """
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    print('note: matplotlib is not installed; skipping plots (pip install matplotlib)')
    return []
  out = [
      plot_curves(rows, curves, 'val_acc', os.path.join(out_dir, 'val_acc.png'),
                  'Validation accuracy', 'validation accuracy (%)', scale=100.0),
      plot_curves(rows, curves, 'val_acc', os.path.join(out_dir, 'val_acc_vs_time.png'),
                  'Validation accuracy against training time', 'validation accuracy (%)',
                  scale=100.0, against_time=True),
      plot_curves(rows, curves, 'train_loss', os.path.join(out_dir, 'train_loss.png'),
                  'Training loss', 'training loss (cross-entropy, nats)'),
      plot_memory(rows, os.path.join(out_dir, 'memory.png')),
      plot_acc_vs_memory(rows, os.path.join(out_dir, 'acc_vs_memory.png')),
  ]
  return [p for p in out if p is not None]
