"""Every bad input through the real CLI: exit 2, one line naming the field and the fix,
no traceback, and nothing written (the workdir is never created).

All cases run up front, two at a time, in a module fixture; each one fails before any
compilation, most of them before the data set is read. The TFDS case runs as on a machine
that has never run anything (HOME and the XDG cache and config folders empty): libraries
that build caches on first use (matplotlib's font cache, imported by TFDS) must not add
a line to stderr either.
"""
import socket
import sys

import pytest

import train_helpers as th

# (id, extra arguments, words the error line must contain, setup, devices)
# In arguments, {data} is a valid tiny image folder and {tmp} the test's folder.
CASES = [
    ('unknown_variant', ['--config.model.variant=vitt'], ['config.model.variant', 'bdia']),
    ('unknown_dataset', ['--config.dataset=imagenet'], ['config.dataset', 'folder:']),
    ('unknown_optimizer', ['--config.optimizer=adam'], ['config.optimizer', 'setadam']),
    ('unknown_field', ['--config.num_epoch=3'], ['--config.num_epoch', 'num_epochs']),
    ('zero_batch', ['--config.batch_size=0'], ['config.batch_size=0', '> 0']),
    ('text_batch', ['--config.batch_size=abc'], ['--config.batch_size=abc', 'an integer']),
    ('zero_epochs', ['--config.num_epochs=0'], ['config.num_epochs=0', '> 0']),
    ('fractional_epochs', ['--config.num_epochs=1.5'], ['--config.num_epochs=1.5', 'an integer']),
    ('zero_lr', ['--config.learning_rate=0'], ['config.learning_rate=0', '> 0']),
    ('text_lr', ['--config.learning_rate=fast'], ['--config.learning_rate=fast', 'a number']),
    ('nan_lr', ['--config.learning_rate=nan'], ['config.learning_rate=nan', 'finite']),
    ('patch_not_dividing', ['--config.model.patch_size=3'],
     ['config.model.patch_size=3', 'model.image_size=8', '1, 2, 4, 8']),
    ('zero_heads', ['--config.model.heads=0'], ['config.model.heads=0']),
    ('quant_bits_low', ['--config.model.variant=bdia', '--config.bdia.quant_bits=2'],
     ['config.bdia.quant_bits=2', '4..16']),
    ('batch_vs_devices', [], ['config.batch_size=8', 'not divisible by the 3 devices'], None, 3),
    ('image_size_vs_data', ['--config.model.image_size=16'],
     ['config.model.image_size=16', 'has 8', '--config.model.image_size=8']),
    ('missing_folder', ['--config.dataset=folder:{tmp}/nowhere'], ['nowhere', 'does not exist']),
    ('empty_folder', ['--config.dataset=folder:{tmp}/empty'], ['empty/train is missing']),
    ('class_without_images', ['--config.dataset=folder:{tmp}/hollow'],
     ['hollow/train/c1', 'has no images']),
    ('unreadable_image', ['--config.dataset=folder:{tmp}/broken'],
     ['cannot read image', 'broken/train/c0/0.png']),
    ('workdir_under_a_file', ['--workdir={tmp}/a_file/run'], ['a_file', 'is a file', '--workdir']),
    ('missing_config_file', ['--config=configs/nope.py'], ['configs/nope.py', 'cannot load']),
    ('tfds_without_network', ['--config.dataset=cifar10', '--config.data_dir={tmp}/empty'],
     ['no network', 'folder:', 'data_dir']),
]


def _network() -> bool:
  try:
    socket.create_connection(('storage.googleapis.com', 443), timeout=3).close()
    return True
  except OSError:
    return False


def _first_start(env: dict, home) -> dict:
  """``env`` with a fresh, empty home: no cache or config a previous run could have made."""
  home.mkdir()
  env = {k: v for k, v in env.items() if k != 'MPLCONFIGDIR'}
  env.update(HOME=str(home), XDG_CACHE_HOME=str(home / '.cache'),
             XDG_CONFIG_HOME=str(home / '.config'))
  return env


def _setup(tmp):
  th.make_image_folder(tmp / 'data', train=4, test=2)
  (tmp / 'empty').mkdir()
  th.make_image_folder(tmp / 'hollow', train=2, test=1)
  for f in (tmp / 'hollow' / 'train' / 'c1').iterdir():
    f.unlink()
  th.make_image_folder(tmp / 'broken', train=2, test=1)
  (tmp / 'broken' / 'train' / 'c0' / '0.png').write_bytes(b'not a png')
  (tmp / 'a_file').write_text('a file, not a folder')


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('cli')
  _setup(tmp)
  cache = th.compile_cache(tmp_path_factory)
  jobs = []
  for case in CASES:
    args = [a.format(tmp=tmp) for a in case[1]]
    if case[0] == 'tfds_without_network' and _network():
      jobs.append(None)
      continue
    base = ['--config.dataset=folder:' + str(tmp / 'data'), *th.TINY]
    cmd = th.train_cmd(tmp / f'run_{case[0]}', *base, *args)
    env = th.cli_env(cache, devices=case[4] if len(case) > 4 else 1)
    if case[0] == 'tfds_without_network':
      env = _first_start(env, tmp / 'home')
    jobs.append((cmd, env))
  done = iter(th.run_all([j for j in jobs if j], timeout=120))
  return tmp, {case[0]: (next(done) if job else None) for case, job in zip(CASES, jobs)}


@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_cleanly(results, case):
  tmp, by_id = results
  name, _, words = case[:3]
  result = by_id[name]
  if result is None:
    pytest.skip('the network is reachable: a TFDS download would start')
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  lines = th.error_lines(result.stderr)
  assert len(lines) == 1 and lines[0].startswith('train.py: error: '), result.stderr
  for word in words:
    assert word.format(tmp=tmp) in lines[0], lines[0]
  assert not (tmp / f'run_{name}').exists(), 'the workdir must not be created'
  assert result.stderr.strip().splitlines() == lines, 'nothing but the error line on stderr'


def test_help_prints_the_usage_and_the_flags(tmp_path):
  result = th.run([sys.executable, 'train.py', '--help'], th.cli_env(tmp_path / 'cache'))
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('Trains a ViT variant: python train.py --config')
  assert '--workdir' in result.stdout and '--config' in result.stdout


def test_earlier_command_lines_and_config_files_still_work(tmp_path):
  """``python -m vit_jax.bench`` (compare, report, verify) run the tools under
  ``vit_jax/tools``, and a config file written for the flat layout still loads."""
  env = th.cli_env(tmp_path / 'cache')
  for tool in ('bench', 'compare', 'report', 'verify'):
    result = th.run([sys.executable, '-m', f'vit_jax.{tool}', '--help'], env)
    assert result.returncode == 0, result.stderr
    assert f'python -m vit_jax.tools.{tool}' in result.stdout, result.stdout  # its help
  old_config = tmp_path / 'my_bdia.py'
  old_config.write_text('from vit_jax.presets import preset\n\n\n'
                        'def get_config():\n  return preset("bdia", "mnist")\n')
  result = th.run([sys.executable, 'train.py', '--config', str(old_config), '--workdir',
                   str(tmp_path / 'run'), '--config.batch_size=0'], env)
  # It loaded: the one error is about the value, not the file.
  assert result.returncode == 2 and 'batch_size' in result.stderr, result.stderr
  assert 'cannot load this config file' not in result.stderr
