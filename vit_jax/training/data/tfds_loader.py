"""CIFAR-10 and MNIST through TFDS: TensorFlow imported lazily, GPUs hidden from it.

``download=False`` is tried first; a data set that is not prepared, on a machine with no
network, fails at once with one ``DataError`` line saying what to use instead.
"""
import socket

import numpy as np

from vit_jax.training.data.dataset import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD,
                                           MNIST_CLASSES, MNIST_MEAN, MNIST_STD, DataError,
                                           Dataset)

# Per spec: (class names, mean, std, flip).
TFDS_SETS = {'cifar10': (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, True),
             'mnist': (MNIST_CLASSES, MNIST_MEAN, MNIST_STD, False)}


def _has_network(host='storage.googleapis.com', port=443, timeout=3.0) -> bool:
  try:
    socket.create_connection((host, port), timeout=timeout).close()
    return True
  except OSError:
    return False


def _import_tfds(name):
  """Imports TensorFlow (GPUs hidden, so it leaves them to JAX) and TFDS."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError(f"loading '{name}' through TFDS needs TensorFlow, which is not installed: "
                    "pip install tensorflow-cpu, or use "
                    "--config.dataset=folder:/path/to/images or mnist_idx:DIR") from None
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF was already initialised by someone else.
    pass
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def _tfds_split(tfds, name, split, data_dir, download):
  ds = tfds.load(name, split=split, data_dir=data_dir or None, download=download,
                 as_supervised=True, read_config=tfds.ReadConfig(try_autocache=False))
  # Never batch_size=-1 (kills the process under mock_data); sizes come from arrays.
  batches = list(tfds.as_numpy(ds.batch(10_000)))
  if not batches:
    raise DataError(f"TFDS '{name}' split '{split}' is empty in {data_dir or 'the default dir'}")
  images = np.concatenate([b[0] for b in batches]).astype(np.uint8)
  return images, np.concatenate([b[1] for b in batches]).astype(np.int32)


def load_tfds(name, data_dir):
  tfds = _import_tfds(name)
  classes, mean, std, flip = TFDS_SETS[name]
  load = lambda download: [_tfds_split(tfds, name, s, data_dir, download)
                           for s in ('train', 'test')]
  try:
    splits = load(download=False)  # Fails in well under a second if not prepared.
  except AssertionError:  # TFDS: 'could not find data in ...'.
    if not _has_network():
      where = data_dir or '~/tensorflow_datasets (the TFDS default)'
      raise DataError(
          f"TFDS '{name}' is not prepared in {where} and there is no network to download it: "
          f"use --config.dataset=folder:/path/to/images (train/<class>/*, test/<class>/*), "
          f"or --config.data_dir=DIR with a prepared TFDS copy"
          + (", or --config.dataset=mnist_idx:DIR" if name == 'mnist' else '')) from None
    splits = load(download=True)
  (xtr, ytr), (xte, yte) = splits
  return Dataset(name, xtr, ytr, xte, yte, classes, mean, std, flip)
