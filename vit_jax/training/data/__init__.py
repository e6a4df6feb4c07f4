"""The data: in-memory data sets for small-image training, and on-device augmentation.

``load_dataset(spec, data_dir)`` returns a :class:`Dataset` of uint8 numpy arrays;
``load_for(config)`` the one a config trains on (its subsets applied).
Accepted ``spec`` forms:

* ``cifar10``, ``mnist``: through TFDS (needs TensorFlow; imported lazily, GPUs
  hidden from it). Tries ``download=False`` first; when the data set is not
  prepared and there is no network, fails at once with a :class:`DataError`.
* ``folder:/path``: ``root/train/<class>/*`` and ``root/test/<class>/*`` with
  jpg/jpeg/png/bmp files, decoded with PIL in threads (no TensorFlow). Class ids
  follow the sorted class names of ``train/``. Images keep their channel count:
  all grayscale -> C=1; if RGB and grayscale files are mixed, grayscale ones are
  repeated to 3 channels. Normalisation: CIFAR-10 constants if the class names are
  the CIFAR-10 ones (and C=3), else per-channel mean/std of the train images.
  Horizontal flips are allowed unless the images are single-channel (taken to be
  digits/characters, where a mirror image is a different symbol).
* ``mnist_idx:/path``: MNIST IDX files (optionally gzipped). If only the t10k pair
  is present, the last 20 % is held out for evaluation and the rest is used for
  training (8,000/2,000 for the real 10,000-image file); ``note`` says so.

One file per part: ``dataset`` (the Dataset and subsets), ``tfds_loader``,
``image_files`` (folders and IDX), ``augment`` (jitted crops, flips, normalisation).
"""
import os
from typing import Any

from vit_jax.training.data.augment import augment, normalize  # noqa: F401  (public here)
from vit_jax.training.data.dataset import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD,  # noqa: F401
                                           MNIST_CLASSES, MNIST_MEAN, MNIST_STD, SPEC_HELP,
                                           DataError, Dataset, first_per_class, subset)
from vit_jax.training.data.image_files import load_folder, load_mnist_idx
from vit_jax.training.data.tfds_loader import load_tfds, TFDS_SETS


def parse_spec(spec) -> tuple[str, str]:
  """``spec`` as (kind, path): ('cifar10' or 'mnist', '') for TFDS, ('folder' or
  'mnist_idx', the expanded path) for local files; ``DataError`` for anything else."""
  if spec in TFDS_SETS:
    return spec, ''
  kind, sep, path = spec.partition(':') if isinstance(spec, str) else ('', '', '')
  if sep and path and kind in ('folder', 'mnist_idx'):
    return kind, os.path.expanduser(path)
  raise DataError(f'unknown dataset {spec!r}; {SPEC_HELP}')


def load_dataset(spec: str, data_dir: str = '') -> Dataset:
  """Loads the data set named by ``spec`` (see the module docstring)."""
  kind, path = parse_spec(spec)
  if kind == 'folder':
    return load_folder(spec, path)
  if kind == 'mnist_idx':
    return load_mnist_idx(spec, path)
  return load_tfds(spec, data_dir)


def load_for(config) -> Dataset:
  """The data set ``config`` trains and evaluates on: ``config.dataset`` loaded, then its
  first ``train_per_class``/``eval_per_class`` images of each class, then a random
  ``train_examples``/``eval_examples`` of those (each 0 = all)."""
  ds = load_dataset(config.dataset, config.data_dir)
  ds = first_per_class(ds, config.train_per_class, config.eval_per_class)
  return subset(ds, config.train_examples, config.eval_examples)


def dataset_info(ds, config) -> dict[str, Any]:
  """Normalisation, augmentation and epoch length of ``ds`` as ``config`` trains on it.

  ``config.random_flip``: 'auto' flips where the data set allows it (not single-channel
  images such as digits), 'yes' or 'no' decide; ``config.random_crop_padding``: zero
  padding before the random crop (0: no crop).
  """
  flip = ds.flip if config.get('random_flip', 'auto') == 'auto' else config.random_flip == 'yes'
  return dict(mean=tuple(ds.mean), std=tuple(ds.std), flip=flip,
              crop_padding=config.get('random_crop_padding', 4),
              steps_per_epoch=len(ds.train_labels) // config.batch_size)
