"""Named small-data studies: all five variants, three seeds, one command, resumable.

    python -m vit_jax.tools.study small-cifar10 [--workdir runs/study/small-cifar10]
        [--data ../shared/data/cifar10] [--variants ...] [--config.x=y ...]
    python -m vit_jax.tools.study small-cifar10 --report-only --out results/small-cifar10

A study is a fixed comparison (``STUDIES``: data subset rule, model, recipe, seeds) in
the regime a 2-core CPU can train to convergence and to overfitting, where "does variant
X generalise differently from vit?" has an answer. It runs ``vit_jax.tools.compare``
(every variant's seeds in one program, each an ordinary train.py run), so rerunning the
same command resumes where it stopped, bit-identically, and skips what is finished.
compare's generic report goes to ``WORKDIR/report``. When every run has finished, each
variant's training step is timed once more, one after another with nothing else training
(``WORKDIR/step_times.json``; again with ``--time``). Then ``study_report`` writes the
study's table with 95 % intervals and the curves.

``--config.x=y`` changes the study (a smaller budget, say); such a run is recorded in
``WORKDIR/study.json`` with each invocation's commit, CPU and versions, and the report
names the changes. A workdir refuses another study or another set of changes.
"""
import argparse
import dataclasses
import datetime
import os
import platform
import subprocess
import sys

from vit_jax.models import variants
from vit_jax.tools import compare, study_report
from vit_jax.training import run_files

SEEDS = 3


@dataclasses.dataclass(frozen=True)
class Study:
  """One named study: what every run of it trains, as compare's config overrides."""
  dataset: str      # 'folder' or 'mnist_idx' (the path comes from --data)
  default_data: str  # relative to the working directory: the project's offline copy
  overrides: dict   # config fields on top of compare's preset for the data set
  rule: str         # the subset and evaluation rule, in words (quoted by the report)
  why: str          # why this model and recipe


_SMALL_VIT = {'model.dim': 128, 'model.depth': 4, 'model.heads': 4, 'model.dim_head': 32,
              'model.mlp_dim': 256}
_ADAMW = {'optimizer': 'adamw', 'learning_rate': 1e-3, 'weight_decay': 0.05,
          'warmup_epochs': 5.0, 'schedule': 'cosine', 'batch_size': 100}

STUDIES = {
    'small-cifar10': Study(
        dataset='folder', default_data='../shared/data/cifar10',
        overrides=dict(_SMALL_VIT, **_ADAMW, num_epochs=50, train_per_class=100,
                       eval_per_class=100, train_eval_examples=1000),
        rule=('training: the first 100 images of each class of train/ by sorted file name '
              '(1,000); validation: the first 100 of each class of test/ (1,000); train '
              'accuracy: all 1,000 training images, unaugmented, evaluated as validation is'),
        why=('a 0.57 M-parameter ViT (dim 128, depth 4, 4 heads of 32, MLP 256, SPT + LSA, '
             'dropout 0.1) with the small-data ViT recipe of Lee et al. 2021 (AdamW, lr 1e-3, '
             'weight decay 0.05, 5 warm-up epochs, cosine), random crops and flips as the '
             'original; 50 epochs of 10 steps take it past its best validation accuracy '
             'into overfitting, and all 15 models fit a 2-core CPU\'s afternoon')),
    'small-mnist': Study(
        dataset='mnist_idx', default_data='../shared/data/mnist',
        overrides=dict(_ADAMW, num_epochs=15, random_flip='no', random_crop_padding=2,
                       train_eval_examples=2000, **{
                           'model.dim': 64, 'model.depth': 4, 'model.heads': 4,
                           'model.dim_head': 16, 'model.mlp_dim': 128, 'model.patch_size': 7}),
        rule=('the t10k file split: the first 8,000 images train, the last 2,000 validate; '
              'train accuracy: 2,000 training images evenly spaced through the 8,000, '
              'unaugmented'),
        why=('a 0.15 M-parameter ViT (dim 64, depth 4, 4 heads of 16, MLP 128, 7x7 patches: 16 '
             'tokens) with the same AdamW recipe, random crops after 2 pixels of padding and '
             'no flips (a mirrored digit is another symbol): validation accuracy plateaus '
             'within 15 epochs')),
}


def study_overrides(study: Study, extra: list[str]) -> list[str]:
  """compare's --config.x=y arguments for ``study``, then the user's ``extra``."""
  return [f'--config.{k}={v}' for k, v in study.overrides.items()] + list(extra)


def _commit() -> str:
  """The checkout's commit (with '+changes' when the tree differs from it), or 'unknown'."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    git = lambda *a: subprocess.run(['git', '-C', here, *a], capture_output=True, text=True,
                                    timeout=10, check=True).stdout.strip()
    dirty = git('status', '--porcelain', '--untracked-files=no')
    return git('rev-parse', '--short', 'HEAD') + ('+changes' if dirty else '')
  except (OSError, subprocess.SubprocessError):
    return 'unknown'


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def record_invocation(workdir: str, name: str, changes: list[str], prog: str) -> dict:
  """Appends this invocation (commit, CPU, versions) to ``WORKDIR/study.json``.

  Refuses (SystemExit, exit 2) a workdir that holds another study or other changes.
  """
  path = os.path.join(workdir, 'study.json')
  manifest = run_files.read_json(path) if os.path.exists(path) else \
      {'study': name, 'changes': changes, 'invocations': []}
  if (manifest.get('study'), manifest.get('changes')) != (name, changes):
    print(f'{prog}: error: {workdir} holds study {manifest.get("study")!r} with changes '
          f'{manifest.get("changes") or "none"}; this is {name!r} with {changes or "none"}: '
          'use another --workdir', file=sys.stderr)
    sys.exit(2)
  import jax  # lazy: a bad flag or workdir fails before JAX loads
  manifest['invocations'].append(dict(
      started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      commit=_commit(), cpu=cpu_model(), cores=os.cpu_count(),
      python=platform.python_version(), jax=jax.__version__,
      device=jax.devices()[0].device_kind))
  os.makedirs(workdir, exist_ok=True)
  run_files.write_json(path, manifest)
  return manifest


def time_steps(workdir: str, study: Study, dataset: str, names: list[str], changes: list[str],
               steps: int = 5) -> dict:
  """One model's training step of each variant, timed one after another in this process
  (``bench.measure_config``), written to ``WORKDIR/step_times.json``: a same-sitting
  comparison of speed, where the runs' own epoch times depend on what else the machine
  did while each trained."""
  from vit_jax.tools import bench  # lazy: imports JAX
  rows = []
  for name in names:
    c = compare.run_config(name, dataset, 0, study_overrides(study, changes))
    c.parallel_seeds = 1
    row = bench.measure_config(c, steps)
    rows.append({k: row.get(k) for k in ('variant', 'step_time_ms', 'compile_s', 'status')})
    print(f'{name}: {row.get("step_time_ms")} ms a step', flush=True)
  out = dict(measured=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
             commit=_commit(), cpu=cpu_model(), steps=steps, rows=rows)
  run_files.write_json(os.path.join(workdir, 'step_times.json'), out)
  return out


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  changes = [a for a in argv if a.startswith('--config.')]
  prog = 'python -m vit_jax.tools.study'
  p = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n')[0])
  p.add_argument('study', choices=sorted(STUDIES))
  p.add_argument('--workdir', help='default: runs/study/<study>')
  p.add_argument('--data', help="the data set's folder (default: the study's, "
                 + ', '.join(f'{k}: {s.default_data}' for k, s in STUDIES.items()) + ')')
  p.add_argument('--variants', default=','.join(variants.VARIANTS),
                 help='a part of the study (default: all five)')
  p.add_argument('--report-only', action='store_true', help='write the report, train nothing')
  p.add_argument('--time', action='store_true', help='time every variant\'s step again '
                 '(done once by itself when the last run has finished)')
  p.add_argument('--out', help='where the report goes (default: WORKDIR/study_report)')
  args = p.parse_args([a for a in argv if not a.startswith('--config.')])
  study = STUDIES[args.study]
  workdir = args.workdir or os.path.join('runs', 'study', args.study)
  out = args.out or os.path.join(workdir, 'study_report')
  status = 0
  if not args.report_only:
    data = os.path.expanduser(args.data or study.default_data)
    if not os.path.isdir(data):
      p.exit(2, f'{prog}: error: data folder {data} does not exist: pass --data DIR with '
                f'the {study.dataset} data ({study.rule.split(";")[0]})\n')
    record_invocation(workdir, args.study, changes, prog)
    try:
      compare.main(['--dataset', f'{study.dataset}:{data}', '--variants', args.variants,
                    '--seeds', str(SEEDS), '--workdir', workdir]
                   + study_overrides(study, changes))
    except SystemExit as e:  # compare's report is written; ours too, for what has finished
      status = e.code
      if status not in (None, 0, 2):
        raise
    if args.time or (not status and not os.path.exists(os.path.join(workdir,
                                                                     'step_times.json'))):
      time_steps(workdir, study, f'{study.dataset}:{data}', args.variants.split(','), changes)
  study_report.write_study_report(workdir, out, args.study, study)
  print(f'study report: {os.path.join(out, "study.md")}')
  return status or 0


if __name__ == '__main__':
  sys.exit(main())
