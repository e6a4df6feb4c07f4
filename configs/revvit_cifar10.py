"""two-stream reversible ViT (Mangalam et al. 2022), inputs rebuilt in the backward pass, on
CIFAR-10 for 400 epochs.

    python train.py --config configs/revvit_cifar10.py --workdir runs/revvit_cifar10

Best test accuracy to expect: the BDIA paper reported 86.22 % (the original's 86.99 % was
per-block recomputation with a wrong gradient: RESULTS.md, section 7).
"""
from vit_jax.training.config_defaults import preset


def get_config():  # the original recipe: see config_defaults.preset
  return preset('revvit', 'cifar10')
