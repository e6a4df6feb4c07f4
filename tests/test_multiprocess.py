"""Several processes (``--config.distributed=True``), the way several hosts train.

Two ``python train.py`` processes on this machine, one CPU device each, joined by
``jax.distributed`` through a coordinator on 127.0.0.1 (gloo collectives on CPU), train
the same global batch as one process with two CPU devices (test_multidevice's setup:
9 training images, batch 8, so one step per epoch and metrics.csv holds the loss of
every step; SGD, no dropout; a constant rate, so that the number of epochs does not
change the program). A Python audit hook in each process records every file it creates,
opens for writing, renames or removes under the workdir: only process 0 may write.

One pair of processes serves three tests (each process start costs seconds): it trains
on past the 3 epochs of the one-process run, and once its fourth epoch is in metrics.csv
process 1 is killed; process 0 must then stop at once, with one line and exit 75,
instead of waiting in its next collective. A second, lighter pair checks the resume
path: process 0 alone reads a checkpoint and sends it to process 1, bit for bit.
"""
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import train_helpers as th

RUN = [*th.TINY, '--config.model.dropout=0', '--config.model.emb_dropout=0',
       '--config.optimizer=sgd', '--config.learning_rate=0.05', '--config.schedule=constant',
       '--config.warmup_epochs=0', '--config.num_epochs=3']

# train.py with an audit hook: appends each path written under --workdir to $AUDIT_LOG.
AUDIT = """
import os, runpy, sys
workdir = os.path.realpath(sys.argv[sys.argv.index('--workdir') + 1])
log = os.environ['AUDIT_LOG']
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
CHANGES = ('os.mkdir', 'os.rename', 'os.remove', 'os.rmdir', 'os.truncate', 'os.symlink',
           'os.link', 'os.chmod', 'os.utime', 'shutil.rmtree', 'shutil.move')
def hook(event, args):
  if event == 'open':
    path, mode, flags = args
    writing = any(c in mode for c in 'wax+') if isinstance(mode, str) else bool(flags & WRITE)
  elif event in CHANGES:
    path, writing = args[0], True
  else:
    return
  if writing and isinstance(path, (str, bytes, os.PathLike)):
    path = os.path.realpath(os.fsdecode(path))
    if path == workdir or path.startswith(workdir + os.sep):
      with open(log, 'a') as f:
        f.write(f'{event} {path}\\n')
sys.addaudithook(hook)
sys.path.insert(0, '.')
sys.argv = ['train.py'] + sys.argv[1:]
runpy.run_path('train.py', run_name='__main__')
"""


# Checkpoints across two processes: process 0 saves, both restore (arguments: k, address, dir).
CHECKPOINT = """
import sys
import jax
import numpy as np
from vit_jax.training import checkpoints, multiprocess
k, address, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
multiprocess.initialize(address, 2, k)
rep = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ('data',)),
                                 jax.sharding.PartitionSpec())
tree = {'a': np.array([-0.0, np.nan, 1.5], np.float32), 'b': np.arange(6, dtype=np.int32),
        's': np.float32(3.0)}
ckpt = checkpoints.Checkpoints(workdir)
put = lambda v: jax.make_array_from_callback(v.shape, rep, lambda i: v[i])  # NaN: no device_put
ckpt.save(7, jax.tree.map(put, tree), {'epochs_done': 2})
abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), tree)
step, got, meta = ckpt.restore_latest(abstract)
ckpt.close()
assert (step, meta) == (7, {'epochs_done': 2}), (step, meta)
for name, value in tree.items():
  assert got[name].sharding == rep and np.asarray(got[name]).tobytes() == value.tobytes(), name
print('restored', k)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_pair(tmp, workdir, env, *extra):
  """Processes 0 and 1 of one run; each logs its writes to tmp/writes<k>-<workdir name>."""
  address = f'127.0.0.1:{_free_port()}'
  procs = []
  for k in (0, 1):
    log = tmp / f'writes{k}-{workdir.name}'
    log.write_text('')
    cmd = th.train_cmd(workdir, f'--config.dataset=folder:{tmp / "data"}', *RUN, *extra,
                       '--config.distributed=True', f'--coordinator_address={address}',
                       '--num_processes=2', f'--process_id={k}',
                       python=[sys.executable, '-c', AUDIT])
    procs.append(th.start(cmd, {**env, 'AUDIT_LOG': str(log)}))
  return procs


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('multiprocess')
  th.make_image_folder(tmp / 'data', train=3, test=2)
  cache = th.compile_cache(tmp_path_factory)
  work = tmp / 'two_processes'
  proc0, proc1 = _start_pair(tmp, work, th.cli_env(cache, devices=1),
                             '--config.num_epochs=100000', '--config.keep_checkpoints=0')
  single = th.start(th.train_cmd(tmp / 'one_process', f'--config.dataset=folder:{tmp / "data"}',
                                 *RUN), th.cli_env(cache, devices=2))
  metrics, t0 = work / 'metrics.csv', time.time()
  try:
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 1 + 4:
      assert proc0.poll() is None and proc1.poll() is None, th.finish(proc0).stderr
      assert time.time() - t0 < 240, 'the two processes did not train'
      time.sleep(0.01)
    proc1.send_signal(signal.SIGKILL)
    try:
      killed = th.finish(proc0, timeout=30)
    except subprocess.TimeoutExpired:
      killed = None  # the test says so
  finally:
    for proc in (proc0, proc1):
      if proc.poll() is None:
        proc.kill()
      proc.communicate()
  single = th.finish(single)
  assert single.returncode == 0, single.stderr
  return tmp, killed, proc0.pid


def test_two_processes_agree_with_one_process_of_two_devices(runs):
  tmp = runs[0]
  two, one = tmp / 'two_processes', tmp / 'one_process'
  rows2, rows1 = th.metric_rows(two)[:3], th.metric_rows(one)  # one row per step
  assert [r[:2] for r in rows2] == [r[:2] for r in rows1] == [('1', '1'), ('2', '2'), ('3', '3')]
  # train_loss, train_acc, val_loss, val_acc, lr of each step
  np.testing.assert_allclose(np.array([r[2:] for r in rows2], float),
                             np.array([r[2:] for r in rows1], float), rtol=1e-6)
  (step2, params2), (step1, params1) = th.final_leaves(two, 3), th.final_leaves(one)
  assert step2 == step1 == 3
  for a, b in zip(params2, params1):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_only_process_zero_writes_the_workdir(runs):
  tmp, _, pid0 = runs
  work = tmp / 'two_processes'
  assert (tmp / 'writes1-two_processes').read_text() == ''  # process 1: not one write
  written = (tmp / 'writes0-two_processes').read_text()
  assert 'metrics.csv' in written and 'checkpoints' in written and '.lock' in written
  assert (work / '.lock').read_text().split()[0] == str(pid0)
  assert not [p for p in work.rglob('*') if 'process_1' in p.name]  # orbax: no part of 1's
  epochs = [int(r[0]) for r in th.metric_rows(work)]
  assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 4  # each epoch once


def test_killing_one_process_stops_the_other_with_one_line(runs):
  result = runs[1]
  assert result is not None, 'process 0 still ran 30 s after process 1 was killed'
  assert result.returncode == 75, result.stderr
  assert 'Traceback' not in result.stderr
  (line,) = th.error_lines(result.stderr)
  assert line.startswith('train.py: stopped: process 0 of 2: another process of this run '
                         'stopped or cannot be reached ('), line
  assert 'rerun the command on every host to resume from the last checkpoint' in line
  others = [x for x in result.stderr.splitlines() if x != line]
  assert all(x.startswith('train step compiled in') for x in others), result.stderr


def test_checkpoint_reaches_every_process_bit_for_bit(tmp_path, tmp_path_factory):
  env = th.cli_env(th.compile_cache(tmp_path_factory), devices=1)
  address = f'127.0.0.1:{_free_port()}'
  results = th.run_all([([sys.executable, '-c', CHECKPOINT, str(k), address, str(tmp_path)], env)
                        for k in (0, 1)], timeout=120)
  for k, result in enumerate(results):
    assert result.returncode == 0 and f'restored {k}' in result.stdout, result.stderr
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['7']
  assert not [p for p in tmp_path.rglob('*') if 'process_1' in p.name]
