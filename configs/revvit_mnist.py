"""two-stream reversible ViT (Mangalam et al. 2022), inputs rebuilt in the backward pass, on
MNIST for 50 epochs.

    python train.py --config configs/revvit_mnist.py --workdir runs/revvit_mnist

Best test accuracy to expect: none published (the compared numbers are for CIFAR-10).
"""
from vit_jax.training.config_defaults import preset


def get_config():  # the original recipe: see config_defaults.preset
  return preset('revvit', 'mnist')
