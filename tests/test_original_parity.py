"""The same functions as the PyTorch original: its own models' outputs, loaded through the
state_dict mapping, must come out of vit-jax's models.

``tests/data/original_parity.npz`` was written by ``scripts/make_original_fixture.py``
(its header: the original's commit, torch 2.13.0, the shapes, BDIA's γ). Every case maps
the original's state_dict into a vit-jax params tree (``original_state_dict``), runs the
same images, and compares eval logits, training logits, the loss and every parameter's
gradient, mapped back to the original's names. No torch is needed here.

Tolerances: both sides compute in float32 with different summation orders, so values
differ by float rounding, a few ulps per operation, grown through depth 3 and through
LayerNorms of low-variance patches (the images are low-contrast so that LayerNorm's
epsilon matters). Measured when the fixture was written: logits within 2.5e-6 relative,
the loss within 1e-7, every gradient tensor within 1.4e-5 of its norm; the tests allow
1e-5 and 1e-4. A change of the function moves them far more: swapping two SPT shifts,
dropping LSA's diagonal mask or LayerNorm's epsilon 1e-5 -> 1e-6 each fail 5 of these
tests. BDIA's side bit moves a value by only half a grid step, which logits barely show:
the 2^-9 test checks the grid codes of the last stream instead (a zero or inverted side
bit puts them off the grid).
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_helpers as th
from vit_jax.models import original_state_dict as osd
from vit_jax.models import vit as model_lib
from vit_jax.tools import import_original
from vit_jax.training import checkpoints, config_defaults, train_lib, train_step

FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'original_parity.npz')
SHAPE = dict(patch_size=4, num_classes=10, dim=32, depth=3, heads=2, dim_head=16, mlp_dim=64,
             dropout=0.0, emb_dropout=0.0)


@pytest.fixture(scope='module')
def fixture():
  with np.load(FIXTURE) as f:
    return dict(f)


def case(fixture, name, sd_from=None):
  """The arrays of one case; ``sd``/``grad`` as {original name: array}."""
  pick = lambda prefix, c=name: {k[len(f'{c}/{prefix}/'):]: v for k, v in fixture.items()
                                 if k.startswith(f'{c}/{prefix}/')}
  out = {k[len(name) + 1:]: v for k, v in fixture.items()
         if k.startswith(name + '/') and k.count('/') == 1}
  return dict(out, sd=pick('sd', sd_from or name), grad=pick('grad'))


def outputs(variant, c, bits=9):
  """vit-jax's eval logits, training logits, loss and gradients for case ``c``."""
  model = model_lib.ViT(variant=variant, quant_bits=bits, **SHAPE)
  x, y = jnp.asarray(c['x']), jnp.asarray(c['y'])
  like = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x[:1]))['params']
  params = osd.to_params(c['sd'], variant, like)
  gamma = c.get('gamma')

  @jax.jit
  def run(params):
    def loss_fn(p):
      logits, seen = model.apply({'params': p}, x, train=True, gamma=gamma,
                                 rngs={'dropout': jax.random.PRNGKey(1)},
                                 mutable=['intermediates'])
      head_input = seen['intermediates']['head_input'][0]
      return train_step.cross_entropy(logits, y, 10).mean(), (logits, head_input)
    (loss, (logits, head_input)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return model.apply({'params': params}, x, train=False), logits, loss, grads, head_input
  return jax.tree.map(np.asarray, run(params))


def rel(a, b) -> float:
  return float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-30))


def assert_same_function(variant, c, bits=9):
  eval_logits, logits, loss, grads, _ = outputs(variant, c, bits)
  assert rel(eval_logits, c['eval_logits']) < 1e-5
  assert rel(logits, c['train_logits']) < 1e-5
  assert rel(loss, c['loss']) < 1e-5
  grads = osd.to_state_dict(grads, variant)
  assert set(grads) == set(c['grad'])
  worst = max((rel(grads[n], c['grad'][n]), n) for n in grads)
  assert worst[0] < 1e-4, worst


@pytest.mark.parametrize('variant, name', [('vit', 'vit_cifar10'), ('remat', 'vit_cifar10'),
                                           ('vit', 'vit_mnist')])
def test_vit_computes_the_originals_vit_small(fixture, variant, name):
  assert_same_function(variant, case(fixture, name))


def test_bdia_computes_the_originals_bdia_on_a_fine_grid(fixture):
  """2^-16 grid, the original's γ: logits, loss and every gradient (through our exact
  reversible backward pass against the original's own)."""
  assert_same_function('bdia', case(fixture, 'bdia_l16'), bits=16)


def test_bdia_on_the_originals_grid_gives_its_grid_codes(fixture):
  """2^-9 grid: the last stream's CLS token (the head's input) in training, as grid
  codes. Every value must lie on the grid (a wrong side bit puts it half a step off), and
  at most 1 % of the codes may differ, by one step, where the two float summation orders
  round a value near a rounding boundary differently (none differed when the fixture
  was written). Logits within four grid steps."""
  c = case(fixture, 'bdia_l9', sd_from='bdia_l16')
  eval_logits, logits, _, _, head_input = outputs('bdia', c, bits=9)
  scaled = head_input * 2.0 ** 9
  codes = np.round(scaled)
  assert np.array_equal(scaled, codes), 'the last stream is off the 2^-9 grid'
  flipped = codes != c['train_codes']
  assert flipped.mean() <= 0.01 and np.abs(codes - c['train_codes']).max() <= 1
  step = 2.0 ** -9
  assert np.abs(eval_logits - c['eval_logits']).max() < 4 * step
  assert np.abs(logits - c['train_logits']).max() < 4 * step


def test_the_mapping_uses_every_tensor_once_both_ways(fixture):
  for variant, name in (('vit', 'vit_cifar10'), ('bdia', 'bdia_l16')):
    c = case(fixture, name)
    model = model_lib.ViT(variant=variant, **SHAPE)
    like = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    params = osd.to_params({f'module.{k}': v for k, v in c['sd'].items()}, variant,
                           like['params'])
    back = osd.to_state_dict(params, variant)
    assert set(back) == set(c['sd']) and all(np.array_equal(back[k], c['sd'][k]) for k in back)
    extra = dict(c['sd'], **{'head.extra': np.zeros(3, np.float32)})
    with pytest.raises(osd.MappingError, match='1 tensors unused: head.extra'):
      osd.to_params(extra, variant, like['params'])
    missing = {k: v for k, v in c['sd'].items() if 'mlp_head.1.bias' not in k}
    with pytest.raises(osd.MappingError, match='lacks 1 tensors: mlp_head.1.bias'):
      osd.to_params(missing, variant, like['params'])
  with pytest.raises(osd.MappingError, match='no counterpart in the original'):
    osd.entries('revvit')


def test_a_model_trained_with_the_original_imports_evaluates_and_fine_tunes(tmp_path, fixture):
  """import_original on an .npz of the original's state_dict (DataParallel names): the
  step-0 checkpoint holds the original's function and train.py's trainer resumes from it;
  a torch file without torch installed is one line from the command, nothing written."""
  c = case(fixture, 'vit_cifar10')
  weights = tmp_path / 'vit_small.npz'
  np.savez(weights, **{f'module.{k}': v for k, v in c['sd'].items()})
  images = th.make_image_folder(tmp_path / 'data', classes=10, train=2, test=1, size=32)
  config = config_defaults.preset('vit', 'cifar10')
  config_defaults.apply_overrides(config, [
      f'--config.dataset=folder:{images}', '--config.batch_size=4', '--config.num_epochs=1',
      '--config.eval_batch_size=4', '--config.progress_bar=False', '--config.tensorboard=False',
      *(f'--config.model.{k}={v}' for k, v in SHAPE.items())])
  run = str(tmp_path / 'run')
  state_dict = import_original.read_state_dict(str(weights))
  model, params, _, _ = import_original.import_run(config, state_dict, run)
  assert rel(model.apply({'params': params}, c['x'], train=False), c['eval_logits']) < 1e-5
  step, train, _ = checkpoints.load_arrays(run)
  assert step == 0 and th.same_arrays(jax.tree.leaves(train['state']['params']),
                                      jax.tree.leaves(jax.tree.map(np.asarray, params)))
  summary = train_lib.train_and_evaluate(config, run)
  assert summary['resumed_from_step'] == 0 and summary['epochs_completed'] == 1

  (tmp_path / 'net-ckpt.t7').write_bytes(b'not read without torch')
  no_torch = th.run([sys.executable, '-m', 'vit_jax.tools.import_original',
                     str(tmp_path / 'net-ckpt.t7'), '--workdir', str(tmp_path / 'w2'),
                     '--config', 'configs/vit_cifar10.py'], th.cli_env(tmp_path / 'cache'))
  assert no_torch.returncode == 2 and not (tmp_path / 'w2').exists()
  assert no_torch.stderr.strip().splitlines() == [
      f'import_original: error: reading {tmp_path / "net-ckpt.t7"} needs torch: pip install -e '
      '".[torch]", or save the state_dict as .npz (numpy.savez(file, **{k: v.numpy() ...}))']
