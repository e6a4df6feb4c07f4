"""Shared pieces of the training tests (test_train, test_cli, test_resume, test_multidevice).

Runs of ``python train.py`` are what cost time on CPU (JAX import, XLA compile), so the
subprocesses share a persistent compilation cache (one per pytest session) and compile
at XLA backend optimisation level 0, about 3x faster to compile for these tiny models.
Runs that must be compared bit for bit use the same flags.
"""
import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from vit_jax.training import checkpoints, config_defaults, run_files  # noqa: F401  (for tests)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / 'shared' / 'data'

# A tiny ViT on 8x8 images (5 tokens of width 16): compiles in seconds. TINY_WIDTH for the
# tools that set the depth themselves (bench), TINY_MODEL for a model, TINY for a training run.
TINY_WIDTH = ['--config.model.image_size=8', '--config.model.patch_size=4',
              '--config.model.dim=16', '--config.model.heads=2', '--config.model.dim_head=8',
              '--config.model.mlp_dim=32']
TINY_MODEL = TINY_WIDTH + ['--config.model.depth=2']
TINY = TINY_MODEL + ['--config.model.num_classes=3', '--config.batch_size=8',
                     '--config.eval_batch_size=8', '--config.progress_bar=False',
                     '--config.tensorboard=False', '--config.learning_rate=0.001']


def tiny_config(variant: str, *overrides: str):
  """The CIFAR-10 preset of ``variant`` with TINY_MODEL and ``overrides`` applied."""
  c = config_defaults.preset(variant, 'cifar10')
  config_defaults.apply_overrides(c, [*TINY_MODEL, *overrides])
  return c


def make_image_folder(root: Path, classes: int = 3, train: int = 16, test: int = 4,
                      size: int = 8) -> Path:
  """root/{train,test}/c<k>/<i>.png: noisy RGB images, class k brighter in channel k."""
  rng = np.random.default_rng(0)
  for split, n in (('train', train), ('test', test)):
    for k in range(classes):
      folder = root / split / f'c{k}'
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(n):
        image = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
        image[..., k % 3] += 160
        Image.fromarray(image).save(folder / f'{i}.png')
  return root


def compile_cache(tmp_path_factory) -> Path:
  """The session's persistent compilation cache, shared by the pytest-xdist workers, their
  in-process tests and the subprocesses: a program that several test files compile (the
  tiny training programs above all) is compiled once."""
  base = tmp_path_factory.getbasetemp()
  return (base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base) / 'jax_cache'


def cli_env(cache_dir, devices: int = 1, level: int = 0) -> dict:
  """The environment of a test subprocess: CPU devices, the shared cache, XLA's backend
  optimisation ``level`` (0: fast compiles; 3, XLA's default: fast execution)."""
  env = dict(os.environ)
  env.update(JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0', TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS=f'--xla_backend_optimization_level={level} '
                       f'--xla_force_host_platform_device_count={devices}')
  return env


def train_cmd(workdir, *overrides, config='configs/vit_cifar10.py', python=None) -> list:
  return [*(python or [sys.executable, 'train.py']), '--config', config,
          '--workdir', str(workdir), *overrides]


def start(cmd, env) -> subprocess.Popen:
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
  out, err = proc.communicate(timeout=timeout)
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(cmd, env, timeout: float = 240) -> subprocess.CompletedProcess:
  return finish(start(cmd, env), timeout)


def run_all(jobs, timeout: float = 240) -> list:
  """Runs (command, env) pairs two at a time (the CPU has two cores); results in order."""
  results, running = [], []
  for cmd, env in jobs:
    running.append(start(cmd, env))
    if len(running) == 2:
      results.append(finish(running.pop(0), timeout))
  return results + [finish(p, timeout) for p in running]


def final_leaves(workdir, step=None) -> tuple[int, list]:
  step, train, _ = checkpoints.load_arrays(str(workdir), step)
  return step, jax.tree.leaves(train)


def same_arrays(a: list, b: list) -> bool:
  return len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape and
                                  x.tobytes() == y.tobytes() for x, y in zip(a, b))


DETERMINISTIC = ('epoch', 'step', 'train_loss', 'train_acc', 'val_loss', 'val_acc', 'lr')


def metric_rows(workdir, columns=DETERMINISTIC) -> list[tuple]:
  with open(Path(workdir) / 'metrics.csv', newline='') as f:
    return [tuple(r[c] for c in columns) for r in csv.DictReader(f)]


def tree_digest(path) -> dict:
  """{relative file path: sha256} of everything under ``path`` but the workdir lock file.

  ``.lock`` names the last process that held the workdir (``vit_jax.training.workdir_lock``);
  every run that gets the lock rewrites it, even one that then refuses its input.
  """
  path = Path(path)
  return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(path.rglob('*')) if p.is_file() and p.name != '.lock'}


def error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith('train.py: ')]
