"""The parity fixture: the PyTorch original's own models at a small shape, for the suite.

Run by hand, never by the suite (it needs torch and a checkout of the original):

    git --git-dir=ORIGINAL.git archive 6afc639 models | tar -x -C /tmp/original
    python3 -m venv /tmp/torch-venv
    /tmp/torch-venv/bin/pip install torch==2.13.0 einops scipy numpy
    /tmp/torch-venv/bin/python scripts/make_original_fixture.py --original /tmp/original \
        --out tests/data/original_parity.npz [--reverse-ratios]

Written from the original at commit 6afc639948e61427fe17cfd60f0244d01f20a787
(CarlYoungq/ResearchProj) with torch 2.13.0 (CPU build), float32, 2 threads.

Models: ``vit_small.ViT`` and ``vit_small_inv_BDIA.ViT`` with dim 32, depth 3, 2 heads of
16, MLP 64, dropout 0, on 4 images of the CIFAR-10 shape (32x32x3) and, for vit, of the
MNIST shape (28x28x1); ``torch.manual_seed(0)`` before each model. The only change to the
original's code is device-neutrality: BDIA's ``.to('cuda')`` becomes ``.to(x.device)``,
in memory. Saved per case (``CASE/...``): the state_dict (``sd/<name>``), the images as
NHWC (``x``), labels (``y``), eval logits, and in training mode (dropout 0) the logits,
the mean cross-entropy and every parameter's gradient (``grad/<name>``); for BDIA also
the head's input in training as grid codes (``train_codes``). BDIA's γ is
what the original draws after ``np.random.seed(0)`` (saved as ``gamma`` [depth, B], block
0's unused); BDIA runs on a 2^-16 grid (``bdia_l16``) and on the original's 2^-9 grid
(``bdia_l9``, same weights and γ, logits and loss only; its ``sd`` is ``bdia_l16``'s).

``--reverse-ratios`` also prints, at the CIFAR-10 preset (dim 512, depth 6, 8 heads of
64, MLP 512, batch 8, dropout 0, seed 0), the ratio of ``vit_small_reverse``'s gradient
norm to ``vit_small``'s with the same weights, per parameter group: its hand-written
backward pass adds the identity path twice.
"""
import argparse
import importlib.util
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

SHAPE = dict(patch_size=4, num_classes=10, dim=32, depth=3, heads=2, dim_head=16,
             mlp_dim=64, dropout=0.0, emb_dropout=0.0)
BATCH = 4


def load_original(root: str, name: str):
  """``models/<name>.py`` of the checkout at ``root`` as a module, made device-neutral."""
  path = os.path.join(root, 'models', f'{name}.py')
  source = open(path).read().replace(".to('cuda')", '.to(x.device)')
  spec = importlib.util.spec_from_loader(f'original_{name}', loader=None)
  module = importlib.util.module_from_spec(spec)
  exec(compile(source, path, 'exec'), module.__dict__)  # pylint: disable=exec-used
  return module


def batch(image_size, channels, seed):
  """Low-contrast images (a per-image level plus noise of std 0.05): patch variances of
  about 2.5e-3, where LayerNorm's epsilon (1e-5) moves SPT's output by about 0.2 %."""
  g = torch.Generator().manual_seed(seed)
  level = torch.randn(BATCH, 1, 1, 1, generator=g)
  x = level + 0.05 * torch.randn(BATCH, channels, image_size, image_size, generator=g)
  y = torch.randint(0, SHAPE['num_classes'], (BATCH,), generator=g)
  return x, y


def run_case(model, x, y) -> dict:
  """Eval logits; training logits, loss and gradients (one backward pass); for BDIA the
  training forward's last stream as grid codes (``train_codes``, int32)."""
  out = {'x': x.permute(0, 2, 3, 1).numpy(), 'y': y.numpy().astype(np.int32)}
  model.eval()
  with torch.no_grad():
    out['eval_logits'] = model(x).numpy()
  model.train()
  model.zero_grad()
  np.random.seed(0)  # BDIA draws its per-block seeds with numpy
  if hasattr(model, 'quant_l'):  # the head's input: the CLS token of the last stream
    hook = model.mlp_head.register_forward_pre_hook(lambda m, a: out.__setitem__(
        'train_codes', torch.round(a[0].detach() * 2.0 ** model.quant_l).int().numpy()))
  logits = model(x)
  if hasattr(model, 'quant_l'):
    hook.remove()
  loss = F.cross_entropy(logits, y)
  loss.backward()
  out.update(train_logits=logits.detach().numpy(), loss=np.float32(loss.item()))
  for name, p in model.named_parameters():
    out[f'grad/{name}'] = p.grad.numpy().copy()
  return out


def bdia_gamma(module, model, x, depth):
  """The γ [depth, B] the BDIA model draws in training after np.random.seed(0)."""
  drawn, randint = [], torch.randint
  def spy(*a, **k):
    r = randint(*a, **k)
    drawn.append(r.clone())
    return r
  module.torch.randint = spy
  try:
    model.train()
    np.random.seed(0)
    with torch.no_grad():
      model(x)
  finally:
    module.torch.randint = randint
  gamma = np.zeros((depth, BATCH), np.float32)
  for k, bits in enumerate(drawn, start=1):  # one draw per block after the first
    gamma[k] = bits.numpy() - 0.5
  assert len(drawn) == depth - 1
  return gamma


def reverse_ratios(root):
  """Gradient-norm ratio vit_small_reverse / vit_small per parameter group, same weights."""
  vit, rev = load_original(root, 'vit_small'), load_original(root, 'vit_small_reverse')
  preset = dict(image_size=32, patch_size=4, num_classes=10, dim=512, depth=6, heads=8,
                dim_head=64, mlp_dim=512, dropout=0.0, emb_dropout=0.0)
  torch.manual_seed(0)
  a = vit.ViT(**preset)
  b = rev.ViT(**preset)
  b.load_state_dict({k.replace('transformer.layers.', 'layers.').replace(
      '.0.norm', '.block.0.norm').replace('.0.fn', '.block.0.fn').replace(
      '.1.norm', '.block.1.norm').replace('.1.fn', '.block.1.fn')
      if k.startswith('transformer.') else k: v for k, v in a.state_dict().items()})
  x, y = batch(32, 3, 1)
  grads = []
  for m in (a, b):
    m.train()
    m.zero_grad()
    F.cross_entropy(m(x), y).backward()
    grads.append({n.replace('transformer.layers.', 'layers.').replace('.block.', '.'): p.grad
                  for n, p in m.named_parameters()})
  with torch.no_grad():
    same = torch.allclose(a.eval()(x), b.eval()(x))
  print(f'vit_small_reverse vs vit_small, same weights, dropout 0: logits equal: {same}')
  print('| parameter | ‖grad reverse‖ / ‖grad vit_small‖ |\n|---|---|')
  for name, g in grads[0].items():
    ratio = (grads[1][name].norm() / g.norm()).item()
    print(f'| {name} | {ratio:.3g} |')


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--original', required=True, help='a checkout of the original (models/)')
  p.add_argument('--out', default='tests/data/original_parity.npz')
  p.add_argument('--reverse-ratios', action='store_true')
  args = p.parse_args()
  torch.set_num_threads(2)
  vit, bdia = load_original(args.original, 'vit_small'), load_original(args.original,
                                                                         'vit_small_inv_BDIA')
  arrays = {}
  def save(case, out, model=None):
    if model is not None:
      out.update({f'sd/{k}': v.numpy() for k, v in model.state_dict().items()})
    arrays.update({f'{case}/{k}': v for k, v in out.items()})

  for case, size, channels in (('vit_cifar10', 32, 3), ('vit_mnist', 28, 1)):
    torch.manual_seed(0)
    model = vit.ViT(image_size=size, channels=channels, **SHAPE)
    save(case, run_case(model, *batch(size, channels, 1)), model)

  torch.manual_seed(0)
  model = bdia.ViT(image_size=32, channels=3, **SHAPE)
  x, y = batch(32, 3, 1)
  for bits in (16, 9):
    model.quant_l = bits
    for layer in model.layers:
      layer.quant_l = bits
    gamma = bdia_gamma(bdia, model, x, SHAPE['depth'])
    out = dict(run_case(model, x, y), gamma=gamma)
    if bits == 9:  # logits and loss only: the fixture stays under 1 MB
      out = {k: v for k, v in out.items() if not k.startswith('grad/')}
    save(f'bdia_l{bits}', out, model if bits == 16 else None)
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  np.savez_compressed(args.out, **arrays)
  print(f'{args.out}: {len(arrays)} arrays, {os.path.getsize(args.out) / 1e3:.0f} kB, '
        f'torch {torch.__version__}')
  if args.reverse_ratios:
    reverse_ratios(args.original)


if __name__ == '__main__':
  sys.exit(main())
