"""Image data sets from local files, without TensorFlow: image folders and MNIST IDX files.

``folder:/path``: ``train/<class>/*`` and ``test/<class>/*``, decoded with PIL in
threads. ``mnist_idx:/path``: MNIST IDX files, optionally gzipped. The package
docstring (``vit_jax.training.data``) says how each is read.
"""
import concurrent.futures
import gzip
import os
import struct
import zlib

import numpy as np

from vit_jax.training.data.dataset import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD,
                                           IMAGE_EXTENSIONS, MNIST_CLASSES, MNIST_MEAN,
                                           MNIST_STD, DataError, Dataset)


def _list_classes(root, split):
  """Returns {class name: sorted image paths} for ``root/split``."""
  d = os.path.join(root, split)
  if not os.path.isdir(d):
    raise DataError(f'{d} is missing: an image folder needs {root}/train/<class>/*.jpg '
                    f'and {root}/test/<class>/*.jpg')
  classes = sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith('.'))
  if not classes:
    raise DataError(f'{d} has no class folders: put the images of each class in {d}/<class>/')
  files = {}
  for c in classes:
    files[c] = sorted(
        e.path for e in os.scandir(os.path.join(d, c)) if e.is_file()
        and not e.name.startswith('.') and e.name.lower().endswith(IMAGE_EXTENSIONS))
    if not files[c]:
      raise DataError(f"class folder {os.path.join(d, c)} has no images "
                      f"({'/'.join(IMAGE_EXTENSIONS)}): add images or remove the folder")
  return files


def _decode(path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      mode = 'L' if im.mode in ('1', 'L', 'LA', 'I', 'I;16', 'F') else 'RGB'
      return np.asarray(im if im.mode == mode else im.convert(mode))
  except Exception as e:  # pylint: disable=broad-except
    why = ' '.join(f'{type(e).__name__}: {e}'.split())
    raise DataError(f'cannot read image {path} ({why}): delete or replace the file') from None


def _decode_all(paths):
  """Decodes ``paths`` in threads into one uint8 [N, H, W, C] array."""
  chunks = [paths[i:i + 512] for i in range(0, len(paths), 512)]
  with concurrent.futures.ThreadPoolExecutor(min(32, (os.cpu_count() or 1) + 4)) as ex:
    arrays = [a for part in ex.map(lambda ps: [_decode(p) for p in ps], chunks) for a in part]
  size = arrays[0].shape[:2]
  for p, a in zip(paths, arrays):
    if a.shape[:2] != size:
      raise DataError(f'images of different sizes: {paths[0]} is {size[0]}x{size[1]} but {p} '
                      f'is {a.shape[0]}x{a.shape[1]}: resize them all to one size')
  if size[0] != size[1]:
    raise DataError(f'images in {os.path.dirname(os.path.dirname(paths[0]))} are '
                    f'{size[0]}x{size[1]}: only square images are supported, resize them')
  if all(a.ndim == 2 for a in arrays):
    return np.stack(arrays)[..., None]
  return np.stack([np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a for a in arrays])


def _mean_std(images, chunk=8192):
  """Per-channel mean and std of uint8 images on the [0, 1] scale (float64 sums)."""
  s = np.zeros(images.shape[-1]), np.zeros(images.shape[-1])
  for i in range(0, len(images), chunk):
    x = images[i:i + chunk].reshape(-1, images.shape[-1]).astype(np.float64) / 255
    s = s[0] + x.sum(0), s[1] + (x * x).sum(0)
  n = images.size // images.shape[-1]
  mean = s[0] / n
  std = np.sqrt(np.maximum(s[1] / n - mean**2, 0))
  std = np.where(std < 1e-6, 1.0, std)  # Constant channel: do not divide by zero.
  return tuple(float(m) for m in mean), tuple(float(v) for v in std)


def load_folder(spec, root):
  if not os.path.isdir(root):
    raise DataError(f'image folder {root} does not exist: pass --config.dataset=folder:/path '
                    f'to a folder with train/<class>/ and test/<class>/ subfolders')
  train, test = _list_classes(root, 'train'), _list_classes(root, 'test')
  only_test = sorted(set(test) - set(train))
  if only_test:
    raise DataError(f'class folder(s) {", ".join(only_test)} exist only in {root}/test: add '
                    f'training images under {root}/train/<class>/ or remove them from test/')
  classes = tuple(train)  # Sorted by _list_classes; ids follow this order.
  ids = {c: i for i, c in enumerate(classes)}
  paths, labels = [], []
  for files in (train, test):
    paths.append([p for c in files for p in files[c]])
    labels.append(np.array([ids[c] for c in files for _ in files[c]], np.int32))
  images = _decode_all(paths[0] + paths[1])
  xtr, xte = images[:len(paths[0])], images[len(paths[0]):]
  if classes == CIFAR10_CLASSES and images.shape[-1] == 3:
    mean, std = CIFAR10_MEAN, CIFAR10_STD
  else:
    mean, std = _mean_std(xtr)
  return Dataset(spec, xtr, labels[0], xte, labels[1], classes, mean, std,
                 flip=images.shape[-1] != 1)


# ---------------------------------------------------------------- mnist_idx:
def _read_idx(path, ndim):
  """Reads an IDX file of unsigned bytes with ``ndim`` dimensions (gzip or raw)."""
  try:
    with open(path, 'rb') as f:
      raw = f.read()
    if raw[:2] == b'\x1f\x8b':
      raw = gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f'cannot read {path} ({e}): replace it with the original MNIST file') from None
  magic = bytes([0, 0, 8, ndim])
  if len(raw) < 4 + 4 * ndim or raw[:4] != magic:
    raise DataError(f'{path} is not an IDX file of {ndim}-d unsigned bytes (magic {raw[:4].hex()}, '
                    f'expected {magic.hex()}): replace it with the original MNIST file')
  dims = struct.unpack(f'>{ndim}I', raw[4:4 + 4 * ndim])
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != np.prod(dims):
    raise DataError(f'{path}: header says shape {dims} but the file holds {data.size} values: '
                    f'it is truncated or corrupt, replace it with the original MNIST file')
  return data.reshape(dims)


def _load_idx_pair(root, prefix):
  """Returns (images [N,H,W,1], int32 labels) for 'train'/'t10k', or None if both absent."""
  names = {'images': f'{prefix}-images-idx3-ubyte', 'labels': f'{prefix}-labels-idx1-ubyte'}
  paths = {k: next((p for p in (os.path.join(root, n), os.path.join(root, n) + '.gz')
                    if os.path.isfile(p)), None) for k, n in names.items()}
  if not any(paths.values()):
    return None
  for k, p in paths.items():
    if p is None:
      raise DataError(f'{root} has half of the {prefix} pair: {names[k]}[.gz] is missing, add it')
  images, labels = _read_idx(paths['images'], 3), _read_idx(paths['labels'], 1)
  if len(images) != len(labels):
    raise DataError(f'{root}: {len(images)} {prefix} images but {len(labels)} labels: '
                    f'the files do not belong together')
  if labels.size and labels.max() > 9:
    raise DataError(f'{paths["labels"]} has label {labels.max()} > 9: not an MNIST label file')
  return images[..., None], labels.astype(np.int32)


def load_mnist_idx(spec, root):
  if not os.path.isdir(root):
    raise DataError(f'MNIST folder {root} does not exist: pass --config.dataset=mnist_idx:DIR '
                    f'with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz')
  train, test = _load_idx_pair(root, 'train'), _load_idx_pair(root, 't10k')
  if test is None:
    raise DataError(f'{root} has no t10k-images-idx3-ubyte[.gz] / t10k-labels-idx1-ubyte[.gz]: '
                    f'put the MNIST IDX files there')
  note = ''
  if train is None:  # Only the test set is available: hold out its last 20 %.
    n = len(test[0])
    n_eval = n // 5
    if n_eval == 0:
      raise DataError(f'{root}: only {n} t10k images and no train files: too few to split')
    (x, y), k = test, n - n_eval
    train, test = (x[:k], y[:k]), (x[k:], y[k:])
    note = (f'MNIST train files absent: t10k set split {k}/{n_eval} '
            f'(first {k} for training, last {n_eval} for evaluation)')
  (xtr, ytr), (xte, yte) = train, test
  return Dataset(spec, xtr, ytr, xte, yte, MNIST_CLASSES, MNIST_MEAN, MNIST_STD, False, note)
