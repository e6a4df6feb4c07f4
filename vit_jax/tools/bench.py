"""Speed and memory of the variants, side by side: the numbers this project exists for.

    python -m vit_jax.tools.bench --variants vit,bdia --depths 6,24 --batch-sizes 128 --steps 10 \
        --csv out.csv [--markdown out.md] [--isolate] [--config.model.dim=...]
    python -m vit_jax.tools.bench --max-depth [--memory-limit-mib N] --variants ... --csv out.csv

Each configuration compiles the real training program (``program.compile_train_step``:
a chunk of steps of ``train_step.make_train_step``: augmentation,
forward, backward, SET-Adam update) on a synthetic uint8 data set kept on the device, and
reports compile time, the median step time over ``--steps`` timed steps after warm-up,
images/s, model FLOPs utilisation where the device's peak is known (model FLOPs: the
same count for every variant, ``train_flops_per_image``), and training memory:
- ``compiled_analysis``: XLA's buffer assignment for the step (temp + arguments + outputs
  - aliased), deterministic and available on every backend; ``temp_mib`` is its temp part
  alone (activations kept for the backward pass, gradients, workspace: no parameters,
  optimizer state or data);
- ``device_peak`` (with ``--isolate`` on a GPU): the device's peak bytes in use, each
  configuration in a fresh process (the peak cannot be reset within one), preallocation off.
Configurations that do not fit are marked OOM instead of stopping the run.
``--max-depth`` instead finds, per variant and batch size, the deepest model whose step
fits in the device's memory (compile only; see ``vit_jax.tools.max_depth``).
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time

COLUMNS = ('variant', 'depth', 'batch_size', 'parallel_seeds', 'compile_s', 'step_time_ms',
           'step_time_per_model_ms', 'images_per_s', 'mfu', 'memory_mib', 'memory_ratio_vs_vit', 'memory_source', 'compiled_memory_mib',
           'temp_mib', 'state_mib',
           'device', 'dtype', 'status')
# Dense peak FLOP/s per device kind and compute dtype (float32 matmuls run as TF32 by default).
PEAK_FLOPS = {'H100': {'bfloat16': 989e12, 'float32': 494e12},
              'H200': {'bfloat16': 989e12, 'float32': 494e12},
              'A100': {'bfloat16': 312e12, 'float32': 156e12}}


def train_flops_per_image(c) -> float:
  """Model FLOPs of one training image: 3× the forward pass's matmuls (forward + backward).

  The same for every variant (recomputation in the backward pass is not model work), so
  MFU compares variants fairly. Per token and block: qkv, output projection, the two MLP
  layers and the two attention products; plus the patch embedding and the head.
  """
  m = c.model
  inner, patches = m.heads * m.dim_head, (m.image_size // m.patch_size) ** 2
  tokens = patches + 1
  block = 2 * (3 * m.dim * inner + inner * m.dim + 2 * m.dim * m.mlp_dim + 2 * tokens * inner)
  embed = 2 * patches * (m.patch_size ** 2 * 5 * m.channels) * m.dim
  return 3.0 * (m.depth * tokens * block + embed + 2 * m.dim * m.num_classes)


def measure(variant: str, depth: int, batch: int, n_steps: int, overrides: list[str],
            warmup: int = 2, device_peak: bool = False, models: int = 1) -> dict:
  """Compiles and times one configuration of the CIFAR-10 preset in this process.

  ``models`` seed-parallel models train in one program (``measure_config``)."""
  from vit_jax.training import program  # lazy, as below
  return measure_config(program.make_config(variant, depth, batch, overrides, models),
                        n_steps, warmup, device_peak)


def measure_config(c, n_steps: int, warmup: int = 2, device_peak: bool = False) -> dict:
  """Compiles and times the training program of config ``c`` in this process.

  ``c.parallel_seeds`` models train in one program. ``warmup`` untimed steps run as
  one chunk, then ``n_steps`` timed steps as another, as training dispatches them: the
  step time is that chunk's time over ``n_steps``; images/s and MFU count every model.
  ``device_peak``: report the device's peak bytes in use (a fresh process per
  configuration only: the peak cannot be reset, so a second configuration would inherit
  the first one's).
  """
  import jax  # lazy here and below: a bad flag is reported before JAX loads
  import numpy as np
  from vit_jax.training import program
  models, batch = c.parallel_seeds, c.batch_size
  row = dict(variant=c.model.variant, depth=c.model.depth, batch_size=batch,
             parallel_seeds=models, device=jax.devices()[0].device_kind,
             dtype='bfloat16' if c.bf16 else 'float32', status='ok')
  try:
    t0 = time.perf_counter()
    compiled, abstract_state, make_inputs = program.compile_train_step(c)
    row['compile_s'] = round(time.perf_counter() - t0, 2)
    row['state_mib'] = round(sum(np.prod(x.shape) * x.dtype.itemsize
                                 for x in jax.tree.leaves(abstract_state)) / 2**20, 1)
    row['compiled_memory_mib'] = round(program.compiled_memory_mib(compiled), 1)
    # temp: activations kept for the backward pass, gradients, workspace
    row['temp_mib'] = round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 1)
    row['memory_mib'], row['memory_source'] = row['compiled_memory_mib'], 'compiled_analysis'
    if n_steps == 0:  # --steps 0: compile only (memory and compile time)
      return row
    state, sums, *inputs = make_inputs()
    for n, timed in ((warmup, False), (n_steps, True)):
      if n:
        t0 = time.perf_counter()
        state, sums = compiled(state, sums, *inputs, np.int32(n))
        jax.block_until_ready(sums)
        step_s = (time.perf_counter() - t0) / n
    row['step_time_ms'] = round(step_s * 1e3, 2)
    row['step_time_per_model_ms'] = round(step_s * 1e3 / models, 2)
    row['images_per_s'] = round(models * batch / step_s, 1)
    peak = next((v for k, v in PEAK_FLOPS.items() if k in row['device']), {}).get(row['dtype'])
    row['mfu'] = round(models * batch * train_flops_per_image(c) / step_s / peak, 4) if peak else ''
    if device_peak:
      memory, row['memory_source'] = program.peak_memory(compiled)
      row['memory_mib'] = round(memory, 1)
  except Exception as e:  # XlaRuntimeError RESOURCE_EXHAUSTED and friends
    if 'RESOURCE_EXHAUSTED' in str(e) or 'out of memory' in str(e).lower():
      row['status'] = 'OOM'
    else:
      raise
  return row


def _measure_isolated(variant, depth, batch, n_steps, overrides, warmup=2, models=1) -> dict:
  """``measure`` in a fresh process, so the device peak belongs to this configuration."""
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE='false')
  cmd = [sys.executable, '-m', 'vit_jax.tools.bench', '--one', json.dumps(
      [variant, depth, batch, n_steps, overrides, warmup, False, models])]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True)
  lines = [l for l in out.stdout.splitlines() if l.startswith('{')]
  if out.returncode or not lines:
    status = 'OOM' if 'RESOURCE_EXHAUSTED' in out.stderr else f'error: {out.stderr.strip().splitlines()[-1:]}'
    return dict(variant=variant, depth=depth, batch_size=batch, parallel_seeds=models,
                status=status)
  return json.loads(lines[-1])


def add_ratios(rows: list[dict]) -> list[dict]:
  """memory_ratio_vs_vit: memory over vit's at the same depth, batch size and models."""
  key = lambda r: (r['depth'], r['batch_size'], r.get('parallel_seeds', 1))
  vit = {key(r): r.get('memory_mib') for r in rows if r['variant'] == 'vit'}
  for r in rows:
    base = vit.get(key(r))
    r['memory_ratio_vs_vit'] = round(r['memory_mib'] / base, 3) if base and r.get('memory_mib') else ''
  return rows


MAX_DEPTH_COLUMNS = ('variant', 'batch_size', 'max_depth', 'memory_mib_at_max',
                     'memory_mib_at_max_plus_1', 'limit_mib', 'limit_source', 'compiles',
                     'search_s', 'device')


def find_max_depths(names, batches, overrides, limit_mib=None) -> list[dict]:
  """One MAX_DEPTH_COLUMNS row per variant and batch size (``vit_jax.tools.max_depth``)."""
  import jax  # lazy, as in measure: a bad flag is reported before JAX loads
  from vit_jax.tools import max_depth
  limit, source = max_depth.memory_limit_mib(limit_mib)
  rows = []
  for batch in batches:
    for name in names:
      t0 = time.perf_counter()
      memory_at = lambda d, name=name, batch=batch: max_depth.compiled_memory_mib(
          name, d, batch, overrides)
      depth, seen = max_depth.max_depth(memory_at, limit)
      at = lambda d: round(seen[d], 2) if d in seen else ''
      rows.append(dict(variant=name, batch_size=batch, max_depth=depth,
                       memory_mib_at_max=at(depth), memory_mib_at_max_plus_1=at(depth + 1),
                       limit_mib=round(limit, 1), limit_source=source, compiles=len(seen),
                       search_s=round(time.perf_counter() - t0, 1),
                       device=jax.devices()[0].device_kind))
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  return rows


def markdown(rows: list[dict], columns=None) -> str:
  cols = [c for c in columns or COLUMNS if c not in ('device', 'dtype')]
  lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
  lines += ['| ' + ' | '.join(str(r.get(c, '')) for c in cols) + ' |' for r in rows]
  return '\n'.join(lines) + '\n'


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a for a in argv if a.startswith('--config.')]
  p = argparse.ArgumentParser(prog='python -m vit_jax.tools.bench', description=__doc__.split('\n')[0])
  p.add_argument('--variants', default='vit,remat,revvit,bdia,momentum')
  p.add_argument('--depths', default='6,12,24,48')
  p.add_argument('--batch-sizes', default='128', help='per model')
  p.add_argument('--parallel-seeds', default='1',
                 help='models trained in one program, e.g. 1,3,8 (images/s counts them all)')
  p.add_argument('--steps', type=int, default=10, help='timed steps; 0 = compile only')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps before the timed ones')
  p.add_argument('--csv', default='')
  p.add_argument('--markdown', default='')
  p.add_argument('--isolate', action='store_true', help='one process per configuration')
  p.add_argument('--max-depth', action='store_true',
                  help='find the deepest model that fits in memory per variant (compile only)')
  p.add_argument('--memory-limit-mib', type=float, default=None,
                 help="with --max-depth: the limit (default: the device's, or the host's RAM)")
  p.add_argument('--one', help=argparse.SUPPRESS)
  args = p.parse_args([a for a in argv if not a.startswith('--config.')])
  for key, flag in (('model.depth', '--depths'), ('batch_size', '--batch-sizes'),
                    ('parallel_seeds', '--parallel-seeds')):
    if any(o.split('=')[0] == f'--config.{key}' for o in overrides):
      p.error(f'--config.{key} would contradict {flag}; set it with {flag}')
  if args.one:
    spec = json.loads(args.one)
    spec[6] = True  # device_peak
    print(json.dumps(measure(*spec)), flush=True)
    return
  from vit_jax.models import variants  # lazy: after the flags, so a bad one fails first
  names = args.variants.split(',')
  for name in names:
    if name not in variants.VARIANTS:
      p.error(f"--variants: {name!r} is unknown; choose from {', '.join(variants.VARIANTS)}")
  try:
    depths = [int(d) for d in args.depths.split(',')]
    batches = [int(b) for b in args.batch_sizes.split(',')]
    models = [int(k) for k in args.parallel_seeds.split(',')]
  except ValueError:
    p.error('--depths, --batch-sizes and --parallel-seeds take comma-separated integers, '
            'e.g. 6,24')
  if min(depths + batches + models) < 1:
    p.error('--depths, --batch-sizes and --parallel-seeds must be >= 1')
  if args.warmup < 0 or args.steps < 0:
    p.error('--steps and --warmup must be >= 0')
  if args.memory_limit_mib is not None and args.memory_limit_mib <= 0:
    p.error('--memory-limit-mib must be > 0')
  if args.max_depth:
    rows, columns = find_max_depths(names, batches, overrides, args.memory_limit_mib), \
        MAX_DEPTH_COLUMNS
  else:
    run = _measure_isolated if args.isolate else measure
    rows, columns = [], COLUMNS
    for batch in batches:
      for depth in depths:
        for k in models:
          for name in names:
            rows.append(run(name, depth, batch, args.steps, overrides, args.warmup, models=k))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    add_ratios(rows)
  table = markdown(rows, columns)
  print(table)
  if args.csv:
    with open(args.csv, 'w', newline='') as f:
      w = csv.DictWriter(f, columns, extrasaction='ignore')
      w.writeheader()
      w.writerows(rows)
  if args.markdown:
    with open(args.markdown, 'w') as f:
      f.write(table)


if __name__ == '__main__':
  main()
