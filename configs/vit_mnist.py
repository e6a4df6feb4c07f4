"""ViT-small (plain autodiff) on mnist: the original recipe (setadam, lr 1e-4, batch 128, cosine)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from base import preset  # noqa: E402


def get_config():
  return preset('vit', 'mnist')
