"""Tests for vit_jax/model.py and layers.py: sizes, shapes, SPT, LSA, the block, init, BDIA eval.

Cheap by construction: parameter counts and output shapes use ``jax.eval_shape`` (nothing
is allocated or compiled); the rest runs tiny layers eagerly.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import BATCH, IMAGE, TINY, tiny_model, tiny_params
from vit_jax.models import fixed_order, layers, quant, reversible, variants, vit as model


def _num_params(m, image_size, channels):
  shapes = jax.eval_shape(lambda: m.init({'params': jax.random.PRNGKey(0)},
                                         jnp.zeros((1, image_size, image_size, channels))))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))


# ------------------------------------------------------------------ sizes and shapes
CIFAR = dict(num_classes=10, patch_size=4, dim=512, depth=6, heads=8, dim_head=64, mlp_dim=512)
MNIST = dict(CIFAR, depth=4, mlp_dim=256)


@pytest.mark.parametrize('variant', ['vit', 'remat', 'bdia', 'momentum'])
def test_parameter_counts_of_the_presets(variant):
  assert _num_params(model.ViT(**CIFAR, variant=variant), 32, 3) == 9_622_512
  assert _num_params(model.ViT(**MNIST, variant=variant), 28, 1) == 5_330_094


def test_revvit_head_reads_both_streams():
  # RevViT's head sees concat(X1, X2), width 2·dim: the head LayerNorm gains 2·512
  # parameters and the classifier 10·512 more weights (as in minREV's Linear(2·dim, classes)).
  extra = _num_params(model.ViT(**CIFAR, variant='revvit'), 32, 3) - 9_622_512
  assert extra == 2 * 512 + 10 * 512
  shapes = jax.eval_shape(lambda: model.ViT(**CIFAR, variant='revvit').init(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))['params']
  assert shapes['LayerNorm_0']['scale'].shape == (1024,)
  assert shapes['Dense_0']['kernel'].shape == (1024, 10)


@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('variant', variants.VARIANTS)
def test_output_shapes(variant, train):
  m = tiny_model(variant, depth=3)
  images = jax.ShapeDtypeStruct((BATCH, IMAGE, IMAGE, 3), jnp.float32)
  params = jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x), images)['params']
  assert jax.tree.leaves(params['blocks'])[0].shape[0] == 3
  out = jax.eval_shape(lambda p, x: m.apply({'params': p}, x, train=train,
                                            rngs={'dropout': jax.random.PRNGKey(1)}),
                       params, images)
  assert out.shape == (BATCH, TINY['num_classes']) and out.dtype == jnp.float32
  if train and variant in ('revvit', 'bdia', 'momentum'):
    probe = model.probe_like(m, BATCH, IMAGE)
    assert len(probe) == 2 and probe[0].shape == (3, BATCH, 5, TINY['dim'])
    logits, block_inputs = jax.eval_shape(
        lambda p, x, pr: m.apply({'params': p}, x, train=True, probe=pr,
                                 rngs={'dropout': jax.random.PRNGKey(1)}), params, images, probe)
    assert logits.shape == out.shape
    assert [t.shape for t in block_inputs] == [pr.shape for pr in probe]


def test_unknown_variant_is_a_clear_error():
  with pytest.raises(ValueError, match='unknown'):
    variants.make_variant('resnet')


# ------------------------------------------------------------------ LSA
def test_lsa_never_attends_to_self(monkeypatch):
  heads, dim_head, n, dim = 2, 8, 5, 16
  lsa = layers.LocalitySelfAttention(heads, dim_head, dropout=0.0)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, n, dim)), jnp.float32)
  variables = lsa.init(jax.random.PRNGKey(0), x, True)
  captured = []
  softmax = fixed_order.softmax
  monkeypatch.setattr(fixed_order, 'softmax', lambda *a: captured.append(softmax(*a)) or captured[-1])

  @jax.jit  # one compile instead of an eager compile per op
  def attention_weights(variables, x):
    lsa.apply(variables, x, True)
    return captured[-1]  # the softmax output, traced inside this program

  weights = np.asarray(attention_weights(variables, x))
  assert len(captured) == 1
  assert weights.shape == (3, heads, n, n)
  np.testing.assert_array_equal(np.diagonal(weights, axis1=-2, axis2=-1), 0.0)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
  # The off-diagonal weights are softmax(q·k·exp(t)) over the other tokens, t the learned
  # log-temperature (initialised to log(dim_head^-0.5)).
  p = variables['params']
  qkv = (np.asarray(x, np.float64) @ np.asarray(p['to_qkv']['kernel'], np.float64))
  q, k, _ = np.split(qkv.reshape(3, n, 3 * heads, dim_head), 3, axis=-2)
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) * np.exp(float(p['temperature']))
  logits[..., np.arange(n), np.arange(n)] = -np.inf
  want = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(weights, want / want.sum(-1, keepdims=True), atol=2e-6)


# ------------------------------------------------------------------ SPT
def test_shift_image_moves_content_one_pixel_with_zero_fill():
  img = np.arange(1, 33, dtype=np.float32).reshape(1, 4, 4, 2)  # distinct, non-zero
  def expect(dy, dx):
    out = np.zeros_like(img)
    for y in range(4):
      for x in range(4):
        if 0 <= y - dy < 4 and 0 <= x - dx < 4:
          out[:, y, x] = img[:, y - dy, x - dx]
    return out
  for dy, dx in [(0, 1), (0, -1), (1, 0), (-1, 0), (0, 0)]:
    np.testing.assert_array_equal(layers.shift_image(jnp.asarray(img), dy, dx), expect(dy, dx),
                                  err_msg=f'shift {(dy, dx)}')
  right = np.asarray(layers.shift_image(jnp.asarray(img), 0, 1))
  assert right[0, 2, 1, 0] == img[0, 2, 0, 0] and np.all(right[:, :, 0] == 0)


def test_shifted_patches_layout():
  b, h, c, p = 2, 4, 2, 2
  img = np.arange(1, b * h * h * c + 1, dtype=np.float32).reshape(b, h, h, c)
  got = np.asarray(layers.shifted_patches(jnp.asarray(img), p))
  assert got.shape == (b, (h // p) ** 2, p * p * 5 * c)
  padded = np.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # Channel blocks: identity, right, left, down, up; "right" at (y, x) reads (y, x - 1).
  def pixel(i, y, x, block, ch):
    dy, dx = [(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0)][block]
    return padded[i, y - dy + 1, x - dx + 1, ch]
  want = np.zeros_like(got)
  for i in range(b):
    for pr in range(h // p):            # patches in row-major order
      for pc in range(h // p):
        vec = [pixel(i, pr * p + r, pc * p + col, s, ch)  # within a patch: (row, col, channel)
               for r in range(p) for col in range(p) for s in range(5) for ch in range(c)]
        want[i, pr * (h // p) + pc] = vec
  np.testing.assert_array_equal(got, want)
  # Spot check by hand: patch 1 (top right), pixel (0, 0) = image (0, 2); its "right"
  # channel block holds image (0, 1), its "down" block zero padding (row -1).
  first = got[0, 1, :5 * c].reshape(5, c)
  np.testing.assert_array_equal(first[0], img[0, 0, 2])
  np.testing.assert_array_equal(first[1], img[0, 0, 1])
  np.testing.assert_array_equal(first[3], 0)


# ------------------------------------------------------------------ the block
@pytest.fixture(scope='module')
def block_run():
  """One program: a block's outputs and branches, float32 and bf16 compute, same params."""
  blk = layers.Block(heads=2, dim_head=8, mlp_dim=32, dropout=0.1)
  blk16 = blk.clone(dtype=jnp.bfloat16)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 16)), jnp.float32)

  @jax.jit
  def run(x):
    v = blk.init(jax.random.key(0, impl='rbg'), x)
    return dict(
        v=v, x=x, h=blk.apply(v, x), f=blk.apply(v, x, method=layers.Block.attention_branch),
        h_train=blk.apply(v, x, False, rngs={'dropout': jax.random.key(3, impl='rbg')}),
        h16=blk16.apply(v, x))

  out = run(x)
  out['g'] = jax.jit(lambda v, y: blk.apply(v, y, method=layers.Block.mlp_branch))(
      out['v'], out['x'] + out['f'])
  return out


def test_block_is_its_residual_branch(block_run):
  h, f, g = block_run['h'], block_run['f'], block_run['g']
  np.testing.assert_allclose(h, f + g, rtol=1e-6, atol=1e-6)
  assert float(jnp.max(jnp.abs(f))) > 1e-3 and float(jnp.max(jnp.abs(g))) > 1e-3
  # Deterministic by default; dropout changes the output when switched on.
  assert not np.allclose(block_run['h_train'], h)


def test_block_bf16_computes_in_bf16_returns_float32(block_run):
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(block_run['v']))
  h16 = block_run['h16']
  assert h16.dtype == jnp.float32
  err = float(jnp.max(jnp.abs(h16 - block_run['h'])))
  assert 0 < err < 0.1  # bf16 rounding, not a different function


# ------------------------------------------------------------------ initialisation
def test_torch_linear_init_is_uniform_over_fan_in():
  fan_in = 256
  dense = layers.torch_linear(256, fan_in)
  p = dense.init(jax.random.PRNGKey(0), jnp.zeros((1, fan_in)))['params']
  bound = fan_in ** -0.5
  for name in ('kernel', 'bias'):
    w = np.asarray(p[name])
    assert np.all(np.abs(w) <= bound) and np.abs(w).max() > 0.99 * bound, name
  w = np.asarray(p['kernel'])
  assert abs(w.std() / (3 * fan_in) ** -0.5 - 1) < 0.02  # 65,536 draws: SE of std ~0.3%
  assert abs(w.mean()) < 0.02 * bound


def test_model_init_matches_pytorch():
  m = tiny_model('vit', depth=3)
  params = tiny_params(m)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_paths = [(jax.tree_util.keystr(k), v) for k, v in flat]
  kernels = [(k, v) for k, v in flat_paths if k.endswith("['kernel']")]
  paths = dict(flat_paths)
  dense_biases = [k for k in paths if k.endswith("['bias']") and k[:-8] + "['kernel']" in paths]
  assert len(dense_biases) == 5  # SPT, to_out, 2 MLP, head: to_qkv has no bias
  assert len(kernels) == 6   # SPT, qkv, out, 2 MLP (stacked over blocks), head
  for path, w in kernels:
    bound = w.shape[-2] ** -0.5  # [.., fan_in, fan_out]
    assert np.abs(np.asarray(w)).max() <= bound, path
    assert np.asarray(w).std() > 0.5 * bound / np.sqrt(3), path
    bias = paths.get(path[:-10] + "['bias']")
    if bias is not None:  # PyTorch draws the bias from the same U(±1/sqrt(fan_in))
      assert np.abs(np.asarray(bias)).max() <= bound and np.asarray(bias).std() > 0, path
  blocks = params['blocks']
  np.testing.assert_array_equal(blocks['attn']['temperature'],
                                np.full(3, np.log(TINY['dim_head'] ** -0.5), np.float32))
  np.testing.assert_array_equal(blocks['attn_norm']['scale'], 1.0)
  np.testing.assert_array_equal(blocks['attn_norm']['bias'], 0.0)
  # Blocks are independent draws, not copies.
  qkv = np.asarray(blocks['attn']['to_qkv']['kernel'])
  assert not np.array_equal(qkv[0], qkv[1])
  # CLS token and position embedding ~ N(0, 1): 96 draws, far outside U(±1/sqrt(fan_in)).
  z = np.concatenate([np.ravel(params['cls_token']), np.ravel(params['pos_embedding'])])
  assert z.size == TINY['dim'] * 6
  assert abs(z.mean()) < 0.4 and 0.75 < z.std() < 1.25 and np.abs(z).max() > 1.5


# ------------------------------------------------------------------ BDIA at evaluation
def test_bdia_eval_is_quantized_plain_stack(monkeypatch, tiny_batch):
  """At eval (γ = 0) BDIA is x_{k+1} = Q[x_k + h_k(x_k)] from x_0 = Q(embedding)."""
  images, _ = tiny_batch
  m = tiny_model('bdia', depth=4)
  params = tiny_params(m)
  seen = {}
  real_stack = reversible.autodiff_stack

  def spy(variant, branch_fn, p, streams, aux, keys):
    out = real_stack(variant, branch_fn, p, streams, aux, keys)
    seen.update(streams=streams, aux=aux, out=out)
    return out

  monkeypatch.setattr(reversible, 'autodiff_stack', spy)

  @jax.jit  # one program: the model's scan and the hand-written loop side by side
  def run(params, images):
    vit = m.clone(variant='vit').apply({'params': params}, images)
    logits = m.apply({'params': params}, images)
    x0 = seen['streams'][1]
    x, block = x0, m.block()
    for k in range(m.depth):
      p_k = jax.tree.map(lambda a: a[k], params['blocks'])
      x = quant.quantize(x + block.apply({'params': p_k}, x), 9)
    return dict(logits=logits, vit=vit, streams=seen['streams'], aux=seen['aux'],
                out=seen['out'][1], loop=x)

  r = jax.tree.map(np.asarray, run(params, images))
  np.testing.assert_array_equal(r['aux'], 0.0)  # γ = 0 for every block and sample
  x0, x0_too = r['streams']
  np.testing.assert_array_equal(x0, x0_too)
  np.testing.assert_array_equal(x0 * 2 ** 9, np.round(x0 * 2 ** 9))  # x_0 = Q(embedding)
  # A loop and a scan are different code, so XLA may round a last float bit differently and
  # flip a rare grid cell (see notes/reversible.md); the quantized recursion must agree.
  step = 2.0 ** -9
  diff = np.abs(r['out'] - r['loop'])
  print(f'\nbdia eval, scan vs loop: max diff {diff.max() / step:g} grid steps, '
        f'{np.mean(diff == 0):.2%} equal')
  assert diff.max() <= 2 * step and np.mean(diff == 0) > 0.99, (diff.max(), np.mean(diff == 0))
  np.testing.assert_array_equal(r['out'] * 2 ** 9, np.round(r['out'] * 2 ** 9))
  # The plain ViT with the same parameters differs only by the quantization.
  assert 0 < np.abs(r['vit'] - r['logits']).max() < 0.05


@pytest.mark.parametrize('rate', [0.1, 0.5])
def test_dropout_rate_scale_and_determinism(rate):
  x = jnp.ones((64, 33, 130))  # last axis not a multiple of 4: the byte draws are sliced
  drop = layers.Dropout(rate)
  run = lambda seed: drop.apply({}, x, False, rngs={'dropout': jax.random.key(seed)})
  y = np.asarray(run(0))
  threshold = round(rate * 256)
  realised = threshold / 256
  assert abs((y == 0).mean() - realised) < 0.01
  np.testing.assert_allclose(y[y != 0], 1 / (1 - realised), rtol=1e-6)
  np.testing.assert_array_equal(y, np.asarray(run(0)))   # same key, same mask
  assert (y != np.asarray(run(1))).any()
  np.testing.assert_array_equal(drop.apply({}, x, True), x)  # deterministic: identity
