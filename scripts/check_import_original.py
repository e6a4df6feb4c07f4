"""Checks import_original on the original's own files: a bare state_dict (.pth) and the
checkpoint its --resume loads (checkpoint/<net>-ckpt.t7, DataParallel names), of its
CIFAR-10 vit_small at the full preset, against the logits the original computes.

Run by hand, in a venv with torch and vit-jax (never by the suite):

    /tmp/torch-venv/bin/pip install torch==2.13.0 einops scipy -e .
    /tmp/torch-venv/bin/python scripts/check_import_original.py --original /tmp/original \
        --data ../shared/data/cifar10

Prints, per format, the import tool's accuracy line and the largest relative difference
between vit-jax's logits and the original's on 63 test images (every 16th of the first
100 of each class).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_original_fixture import load_original  # noqa: E402  (the same device-neutral load)

PRESET = dict(image_size=32, patch_size=4, num_classes=10, dim=512, depth=6, heads=8,
              dim_head=64, mlp_dim=512, dropout=0.1, emb_dropout=0.1)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--original', required=True)
  p.add_argument('--data', required=True, help='the CIFAR-10 image folder')
  args = p.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  from vit_jax.models import vit as model_lib
  from vit_jax.training import checkpoints, config_defaults, data

  torch.manual_seed(0)
  net = load_original(args.original, 'vit_small').ViT(**PRESET).eval()
  ds = data.first_per_class(data.load_dataset(f'folder:{args.data}'), 1, 100)
  x = np.asarray(data.normalize(ds.test_images[::16], ds.mean, ds.std, np.float32))
  with torch.no_grad():
    want = net(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
  tmp = tempfile.mkdtemp()
  files = {'state_dict .pth': os.path.join(tmp, 'vit_small.pth'),
           'resume checkpoint .t7': os.path.join(tmp, 'vit_small-ckpt.t7')}
  torch.save(net.state_dict(), files['state_dict .pth'])
  torch.save({'net': torch.nn.DataParallel(net).state_dict(), 'acc': 0.0, 'epoch': 0},
             files['resume checkpoint .t7'])
  config = config_defaults.preset('vit', 'cifar10')
  for label, path in files.items():
    workdir = os.path.join(tmp, label.split()[0].replace('_', ''))
    out = subprocess.run([sys.executable, '-m', 'vit_jax.tools.import_original', path,
                          '--config', 'configs/vit_cifar10.py', '--workdir', workdir,
                          f'--config.dataset=folder:{args.data}', '--config.eval_per_class=100',
                          '--config.train_per_class=13', '--evaluate'],
                         capture_output=True, text=True, check=False)
    print(f'{label}: exit {out.returncode}: {out.stdout.strip().splitlines()[-1:]}'
          f'{out.stderr.strip()[-300:] if out.returncode else ""}')
    _, train, _ = checkpoints.load_arrays(workdir)
    got = model_lib.build(config).apply({'params': train['state']['params']}, x, train=False)
    err = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
    print(f'{label}: max |logit difference| / max |logit| = {err:.2e} over {len(x)} images; '
          f'same argmax: {(np.asarray(got).argmax(1) == want.argmax(1)).mean():.0%}')
  print(f'torch {torch.__version__}, jax {jax.__version__}')


if __name__ == '__main__':
  main()
