"""The CPU training step against the PyTorch original's, timed in one process tree.

    python scripts/vs_original.py --original /path/to/ResearchProj [--variants vit,bdia]
        [--steps 3] [--rounds 3] [--threads 2] [--venv /tmp/vs-original-venv]

The original's code comes from a checkout of CarlYoungq/ResearchProj (its ``models/``);
torch lives in a scratch venv that this script creates on first use (``pip install
torch==2.13.0 einops scipy numpy``), never in the project's environment. Four workers
start side by side, one per framework and variant, each builds its model once (the CIFAR-10 preset:
dim 512, depth 6, 8 heads of 64, MLP 512, dropout 0.1, batch 128, float32, SET-Adam) and
then waits (one program per process: vit-jax's vit step took 7.9 s instead of 6.7 s in a
process that also held bdia's program); the parent asks them in turn for ``--steps`` timed steps per variant, round
after round, so the two never run at once and drifts of the machine's load hit both
(``OMP_WAIT_POLICY=PASSIVE``: PyTorch's idle OpenMP threads would otherwise spin while
the others run).
Prints ms per step per round, the medians, and vit-jax's speed over the original's.

The original's step: ``model.train()``, forward, cross-entropy, backward, ``SETAdam.step``
(its ``vit_small`` and ``vit_small_inv_BDIA``, the latter made device-neutral in memory:
its ``.to('cuda')`` becomes ``.to(x.device)``), on a fixed random batch. vit-jax's: the
training program ``train.py`` runs (``vit_jax.training.program``), which also crops,
flips and normalises the batch on the device; the original augments in its data loader,
outside the timed step.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PRESET = dict(image_size=32, patch_size=4, num_classes=10, dim=512, depth=6, heads=8,
              dim_head=64, mlp_dim=512, dropout=0.1, emb_dropout=0.1)
ORIGINAL_MODELS = {'vit': 'vit_small', 'bdia': 'vit_small_inv_BDIA'}


def torch_worker(args):
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, HERE)
  from make_original_fixture import load_original  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(args.threads)
  setadam = load_original(args.original, 'SETAdam').SETAdam
  torch.manual_seed(0)
  x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
  steps = {}
  for v in args.variants.split(','):
    model = load_original(args.original, ORIGINAL_MODELS[v]).ViT(**PRESET)
    opt = setadam(model.parameters(), lr=1e-4)
    def step(model=model, opt=opt):
      model.train()
      opt.zero_grad()
      F.cross_entropy(model(x), y).backward()
      opt.step()
    step()  # warm-up: allocations, first-call costs
    steps[v] = step
  serve(steps, f'torch {torch.__version__}, {torch.get_num_threads()} threads')


def jax_worker(args):
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.dirname(HERE))
  from vit_jax.training import program  # pylint: disable=import-outside-toplevel
  steps = {}
  for v in args.variants.split(','):
    compiled, _, make_inputs = program.compile_train_step(program.make_config(v, 6, 128, []))
    carry = list(make_inputs())
    def step(compiled=compiled, carry=carry):
      carry[0], carry[1] = compiled(*carry, np.int32(1))
      jax.block_until_ready(carry[1])
    step()
    steps[v] = step
  serve(steps, f'jax {jax.__version__}')


def serve(steps, version):
  """Answers 'VARIANT N' lines on stdin with the mean ms of N steps, until EOF."""
  print(f'ready {version}', flush=True)
  for line in sys.stdin:
    variant, n = line.split()
    t0 = time.perf_counter()
    for _ in range(int(n)):
      steps[variant]()
    print(f'{1e3 * (time.perf_counter() - t0) / int(n):.1f}', flush=True)


def ensure_venv(venv):
  python = os.path.join(venv, 'bin', 'python')
  if not os.path.exists(python):
    print(f'creating {venv} with torch 2.13.0 (once)', flush=True)
    subprocess.run([sys.executable, '-m', 'venv', venv], check=True)
    subprocess.run([python, '-m', 'pip', 'install', '-q', 'torch==2.13.0', 'einops', 'scipy',
                    'numpy'], check=True)
  return python


def cpu_model():
  try:
    with open('/proc/cpuinfo') as f:
      return next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    return 'unknown CPU'


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--original', required=True, help='a checkout of CarlYoungq/ResearchProj')
  p.add_argument('--variants', default='vit,bdia')
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--venv', default='/tmp/vs-original-venv')
  p.add_argument('--worker', choices=('torch', 'jax'), help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    return (torch_worker if args.worker == 'torch' else jax_worker)(args)
  me = os.path.abspath(__file__)
  # An idle worker must not take CPU from the others: PyTorch's OpenMP threads would spin.
  env = dict(os.environ, OMP_WAIT_POLICY='PASSIVE')
  pythons = {'torch': ensure_venv(args.venv), 'jax': sys.executable}
  variants = args.variants.split(',')
  workers = {(name, v): subprocess.Popen(
      [python, me, '--worker', name, '--original', args.original, '--variants', v,
       '--threads', str(args.threads)], text=True, env=env, stdin=subprocess.PIPE,
      stdout=subprocess.PIPE) for v in variants for name, python in pythons.items()}
  versions = {name: w.stdout.readline().strip().removeprefix('ready ')
              for (name, _), w in workers.items()}
  times = {key: [] for key in workers}
  for r in range(args.rounds):
    for v in variants:
      for name in pythons:
        w = workers[name, v]
        w.stdin.write(f'{v} {args.steps}\n')
        w.stdin.flush()
        times[name, v].append(float(w.stdout.readline()))
      print(f'round {r + 1}, {v}: original {times["torch", v][-1]:,.0f} ms, vit-jax '
            f'{times["jax", v][-1]:,.0f} ms a step', flush=True)
  for w in workers.values():
    w.stdin.close()
    w.wait()
  print(f'\n{cpu_model()}, {os.cpu_count()} cores; {versions["torch"]}; {versions["jax"]}; '
        f'{args.rounds} rounds of {args.steps} steps, medians:\n')
  print('| variant | original, PyTorch (ms a step) | vit-jax (ms a step) | vit-jax speed ÷ '
        'original\'s |\n|---|---|---|---|')
  for v in args.variants.split(','):
    a, b = statistics.median(times['torch', v]), statistics.median(times['jax', v])
    print(f'| {v} | {a:,.0f} | {b:,.0f} | {a / b:.2f}× |')


if __name__ == '__main__':
  main()
