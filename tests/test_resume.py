"""Restartable training through the real CLI (subprocesses of ``python train.py``).

One uninterrupted reference run (3 epochs of 6 steps, a checkpoint every 2 steps) is
compared bit for bit with runs that were killed (SIGKILL), preempted (SIGTERM), resumed
from a corrupted latest checkpoint, or started over with --fresh. Faults injected: a
SIGKILL and a SIGTERM at a checkpoint, a SIGTERM while JAX is being imported, a second
run on a live workdir, truncated files and an empty step folder, a
learning rate of 1e30 (NaN), a config or checkpoint of another model, and a full disk
(orbax's JSON writer raising ENOSPC, patched in the subprocess).
"""
import os
import shutil
import signal
import time

import numpy as np
import pytest

import train_helpers as th

# A constant rate after one warmup epoch: the program does not depend on num_epochs, so
# the extension run (num_epochs=4) reuses the compiled step from the cache.
RUN = [*th.TINY, '--config.num_epochs=3', '--config.checkpoint_every_steps=2',
       '--config.schedule=constant', '--config.warmup_epochs=1.0']
NAN = ['--config.optimizer=sgd', '--config.learning_rate=1e30', '--config.warmup_epochs=0',
       '--config.checkpoint_every_steps=1']

DISK_FULL = """
import errno, runpy, sys
import orbax.checkpoint as ocp
async def _full(self, x, directory):  # every checkpoint's JSON item: the disk is full
  raise OSError(errno.ENOSPC, 'No space left on device', str(directory / 'metadata'))
ocp.JsonCheckpointHandler._save_fn = _full
sys.path.insert(0, '.')
sys.argv = ['train.py'] + sys.argv[1:]
runpy.run_path('train.py', run_name='__main__')
"""


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  return th.cli_env(th.compile_cache(tmp_path_factory))


@pytest.fixture(scope='module')
def tmp(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('resume')
  th.make_image_folder(tmp / 'data')
  return tmp


def cmd(tmp, workdir, *extra, **kw):
  """BDIA (dropout and γ drawn per step, exact reversible backprop) with SET-Adam."""
  return th.train_cmd(workdir, f'--config.dataset=folder:{tmp / "data"}', *RUN, *extra,
                      config='configs/bdia_cifar10.py', **kw)


@pytest.fixture(scope='module')
def cold(tmp, env):
  """The two runs that compile a new program, side by side: the reference and the NaN run.

  While the reference holds its workdir, the same command is started again, plainly and
  with --fresh: both must be refused (they take a second each, the reference compiles).
  """
  ref, nan = th.start(cmd(tmp, tmp / 'ref'), env), th.start(cmd(tmp, tmp / 'nan', *NAN), env)
  lock = tmp / 'ref' / '.lock'
  _wait_for(lambda: lock.exists() and lock.read_text(), ref)
  again = th.run_all([(cmd(tmp, tmp / 'ref'), env), (cmd(tmp, tmp / 'ref', '--fresh'), env)])
  overlapped = ref.poll() is None
  return {'ref': tmp / 'ref', 'nan': th.finish(nan), 'again': again, 'overlapped': overlapped,
          'ref_pid': ref.pid, 'ref_result': th.finish(ref)}


@pytest.fixture(scope='module')
def reference(cold):
  assert cold['ref_result'].returncode == 0, cold['ref_result'].stderr
  return cold['ref']


def _wait_for(path_test, proc, timeout=120):
  t0 = time.time()
  while not path_test():
    assert proc.poll() is None, proc.communicate()[1]
    assert time.time() - t0 < timeout, 'what the test waits for did not happen'
    time.sleep(0.005)


def _assert_same_as(reference, workdir):
  step, ref = th.final_leaves(reference)
  assert th.final_leaves(workdir)[0] == step
  assert th.same_arrays(ref, th.final_leaves(workdir)[1]), 'parameters differ'
  assert th.metric_rows(workdir) == th.metric_rows(reference)


def test_uninterrupted_run_writes_everything(reference):
  assert sorted(os.listdir(reference / 'checkpoints')) == ['14', '16', '18']
  summary = th.run_files.read_json(reference / 'summary.json')
  assert summary['finished'] and summary['epochs_completed'] == 3
  assert summary['compile_time_s'] > 0 and summary['last_checkpoint_step'] == 18
  assert [r[:2] for r in th.metric_rows(reference)] == [('1', '6'), ('2', '12'), ('3', '18')]
  assert th.run_files.read_json(reference / 'config.json')['num_epochs'] == 3


def test_second_run_on_a_live_workdir_is_refused(tmp, cold):
  for result in cold['again']:  # the same command, then with --fresh
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == th.error_lines(result.stderr)
    (line,) = th.error_lines(result.stderr)
    assert line.startswith(f'train.py: error: workdir {tmp / "ref"} is in use by another run '
                           f'(pid {cold["ref_pid"]} on '), line
  assert cold['overlapped'], 'the reference ended before the second runs were refused'
  # Only the reference wrote: each epoch once, nothing moved aside by --fresh.
  assert cold['ref_result'].returncode == 0, cold['ref_result'].stderr
  assert [r[:2] for r in th.metric_rows(cold['ref'])] == [('1', '6'), ('2', '12'), ('3', '18')]
  assert not [p for p in tmp.iterdir() if p.name.startswith('ref.old-')]


def test_sigkill_mid_save_then_resume_is_bit_identical(tmp, env, reference):
  work = tmp / 'killed'
  proc = th.start(cmd(tmp, work), env)
  ckpts = work / 'checkpoints'
  # Kill as soon as the step-10 checkpoint starts being written (or is written).
  _wait_for(lambda: ckpts.is_dir() and any(n.startswith('10') for n in os.listdir(ckpts)), proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  assert not (ckpts / '18').exists()
  resumed = th.run(cmd(tmp, work), env)
  assert resumed.returncode == 0, resumed.stderr
  assert 'resuming from the checkpoint at step' in resumed.stderr
  _assert_same_as(reference, work)
  assert not [n for n in os.listdir(ckpts) if 'tmp' in n]


@pytest.fixture(scope='module')
def preempted(tmp, env):
  work = tmp / 'preempted'
  proc = th.start(cmd(tmp, work), env)
  _wait_for(lambda: (work / 'checkpoints' / '4').is_dir(), proc)
  proc.send_signal(signal.SIGTERM)
  return work, th.finish(proc)


def test_sigterm_saves_a_restorable_checkpoint(preempted):
  work, result = preempted
  assert result.returncode == 75, result.stderr
  assert 'Traceback' not in result.stderr
  (line,) = th.error_lines(result.stderr)
  step, train, meta = th.checkpoints.load_arrays(str(work))
  assert 4 < step < 18
  assert line.startswith(f'train.py: stopped: SIGTERM received: saved a checkpoint at step {step}')
  assert str(work / 'checkpoints') in line and 'rerun the same command to resume' in line
  assert int(train['state']['step']) == step and meta['steps_per_epoch'] == 6


def _mapped(proc, library='/jaxlib/') -> bool:
  """Whether ``proc`` has loaded ``library`` (Linux): a start-up stage one can observe."""
  try:
    with open(f'/proc/{proc.pid}/maps') as f:
      return library in f.read()
  except OSError:
    return False


@pytest.mark.skipif(not os.path.exists('/proc/self/maps'), reason='needs /proc (Linux)')
def test_sigterm_while_starting_stops_cleanly_then_resumes(tmp, env, reference, preempted):
  work = tmp / 'early'
  shutil.copytree(preempted[0], work)
  before = th.tree_digest(work)
  proc = th.start(cmd(tmp, work), env)
  _wait_for(lambda: _mapped(proc), proc)  # JAX is being imported: seconds before training
  proc.send_signal(signal.SIGTERM)
  result = th.finish(proc)
  assert result.returncode == 75, result.stderr
  assert result.stderr.strip().splitlines() == th.error_lines(result.stderr)
  (line,) = th.error_lines(result.stderr)
  assert line.startswith('train.py: stopped: SIGTERM received while starting'), line
  assert th.tree_digest(work) == before
  resumed = th.run(cmd(tmp, work), env)
  assert resumed.returncode == 0, resumed.stderr
  _assert_same_as(reference, work)


def test_corrupt_latest_checkpoint_falls_back(tmp, env, reference, preempted):
  work = tmp / 'corrupt'
  shutil.copytree(preempted[0], work)
  latest = max(int(n) for n in os.listdir(work / 'checkpoints'))
  # Truncated array data, readable metadata: the restore itself fails.
  data = list((work / 'checkpoints' / str(latest)).glob('train/ocdbt.process_*/d/*'))
  assert data, 'orbax changed its layout: corrupt another file'
  for f in data:
    f.write_bytes(f.read_bytes()[:5])
  (work / 'checkpoints' / '99').mkdir()  # an empty step folder: orbax counts it
  result = th.run(cmd(tmp, work), env)
  assert result.returncode == 0, result.stderr
  assert 'warning: checkpoint 99 in' in result.stderr and '(no metadata)' in result.stderr
  assert f'warning: checkpoint {latest} in ' in result.stderr
  previous = max(s for s in (2, 4, 6, 8, 10, 12, 14, 16) if s < latest)
  assert f'resuming from the checkpoint at step {previous} ' in result.stderr
  assert sorted(n.split('-')[0] for n in os.listdir(work / 'corrupt_checkpoints')) == \
      sorted([str(latest), '99'])
  _assert_same_as(reference, work)


def test_incompatible_checkpoint_is_refused_and_kept_then_fresh(tmp, env, reference):
  work = tmp / 'other'
  shutil.copytree(reference, work)
  before = th.tree_digest(work)
  other_model = cmd(tmp, work, '--config.model.dim=32')
  refused = th.run(other_model, env)  # config.json says: another model
  assert refused.returncode == 2 and 'Traceback' not in refused.stderr
  (line,) = th.error_lines(refused.stderr)
  assert 'another config (model.dim differ)' in line and '--fresh' in line
  assert th.tree_digest(work) == before
  os.remove(work / 'config.json')  # now only the checkpoint's shapes can tell
  before = th.tree_digest(work)
  refused = th.run(other_model, env)
  assert refused.returncode == 2 and 'Traceback' not in refused.stderr
  (line,) = th.error_lines(refused.stderr)
  assert 'written for another model (state/params/' in line
  assert '(16, 3) float32 there but (32, 3) float32 here' in line
  assert th.tree_digest(work) == before
  fresh = th.run(cmd(tmp, work, '--fresh'), env)  # the reference's config, from scratch
  assert fresh.returncode == 0, fresh.stderr
  (aside,) = [p for p in tmp.iterdir() if p.name.startswith('other.old-')]
  assert th.tree_digest(aside) == before
  _assert_same_as(reference, work)


def test_nan_stops_with_step_and_keeps_last_good_checkpoint(cold):
  result, work = cold['nan'], cold['nan'].args[cold['nan'].args.index('--workdir') + 1]
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  (line,) = th.error_lines(result.stderr)
  assert 'NaN/Inf at step 2 (epoch 1, step 2 of 6)' in line
  assert 'last good checkpoint (step 1) is kept' in line
  assert '--config.learning_rate' in line and '--config.on_nonfinite=skip' in line
  assert os.listdir(os.path.join(work, 'checkpoints')) == ['1']
  step, leaves = th.final_leaves(work)
  assert step == 1 and all(np.isfinite(x).all() for x in leaves)
  assert th.metric_rows(work) == []


def test_nan_steps_can_be_skipped(tmp, env, cold):
  work = tmp / 'nan'  # continues the stopped run: on_nonfinite may change on resume
  result = th.run(cmd(tmp, work, *NAN, '--config.on_nonfinite=skip',
                     '--config.checkpoint_every_steps=0'), env)
  assert result.returncode == 0, result.stderr
  assert 'warning: epoch 1: skipped 5 steps with NaN/Inf' in result.stderr
  assert len(th.metric_rows(work)) == 3
  assert all(np.isfinite(x).all() for x in th.final_leaves(work)[1])


def test_disk_full_keeps_previous_checkpoint_then_extends(tmp, env, reference):
  work = tmp / 'full'
  shutil.copytree(reference, work)
  before = th.tree_digest(work / 'checkpoints')
  longer = ['--config.num_epochs=4']
  python = [os.sys.executable, '-c', DISK_FULL]
  result = th.run(cmd(tmp, work, *longer, python=python), env)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  assert 'resuming from the checkpoint at step 18 (epoch 4)' in result.stderr
  (line,) = th.error_lines(result.stderr)
  assert 'checkpoint for step 20' in line and 'the disk is full' in line
  assert 'previous checkpoint (step 18) is kept' in line
  assert th.tree_digest(work / 'checkpoints') == before  # no partial folder left
  extended = th.run(cmd(tmp, work, *longer), env)
  assert extended.returncode == 0, extended.stderr
  rows = th.metric_rows(work)
  assert rows[:3] == th.metric_rows(reference) and [r[:2] for r in rows[3:]] == [('4', '24')]
  assert th.run_files.read_json(work / 'summary.json')['epochs_completed'] == 4
