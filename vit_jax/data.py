"""In-memory data sets for small-image training, plus jittable augmentation.

``load_dataset(spec, data_dir)`` returns a :class:`Dataset` of uint8 numpy arrays.
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
"""
import concurrent.futures
import dataclasses
import functools
import gzip
import os
import socket
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                   'frog', 'horse', 'ship', 'truck')
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
MNIST_CLASSES = tuple(str(i) for i in range(10))
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
SPEC_HELP = ("accepted forms: 'cifar10', 'mnist' (TFDS), 'folder:/path/to/images' "
             "(train/<class>/*, test/<class>/*), 'mnist_idx:/path/to/idx_files'")
# Per spec: (class names, mean, std, flip).
_TFDS_SETS = {'cifar10': (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, True),
              'mnist': (MNIST_CLASSES, MNIST_MEAN, MNIST_STD, False)}


class DataError(ValueError):
  """One clear line saying what is wrong and what to do."""


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: fields are arrays.
class Dataset:
  """A whole data set in host memory (uint8 images, int32 labels)."""
  name: str                 # e.g. 'cifar10', 'folder:/x/y', 'mnist_idx:/x'
  train_images: np.ndarray  # uint8 [N, H, W, C]
  train_labels: np.ndarray  # int32 [N]
  test_images: np.ndarray   # uint8 [M, H, W, C]
  test_labels: np.ndarray   # int32 [M]
  class_names: tuple[str, ...]
  mean: tuple[float, ...]   # per channel, on the [0, 1] scale
  std: tuple[float, ...]
  flip: bool                # horizontal flips allowed in augmentation
  note: str = ''            # e.g. 'MNIST test set split 8000/2000'

  def __post_init__(self):
    for split in ('train', 'test'):
      x, y = getattr(self, f'{split}_images'), getattr(self, f'{split}_labels')
      if x.dtype != np.uint8 or x.ndim != 4 or y.dtype != np.int32 or y.shape != x.shape[:1]:
        raise DataError(f'{self.name}: {split} arrays must be uint8 [N,H,W,C] and int32 [N], '
                        f'got {x.dtype}{list(x.shape)} and {y.dtype}{list(y.shape)}')
      if y.size and not 0 <= y.min() <= y.max() < len(self.class_names):
        raise DataError(f'{self.name}: {split} labels outside [0, {len(self.class_names)})')
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise DataError(f'{self.name}: train images are {self.train_images.shape[1:]} but '
                      f'test images are {self.test_images.shape[1:]}')
    if not len(self.mean) == len(self.std) == self.channels:
      raise DataError(f'{self.name}: mean/std need {self.channels} entries')

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_size(self) -> int:
    h, w = self.train_images.shape[1:3]
    if h != w:
      raise DataError(f'{self.name}: images are {h}x{w}; only square images are supported')
    return h

  @property
  def channels(self) -> int:
    return self.train_images.shape[3]


def subset(ds: Dataset, train: int = 0, test: int = 0) -> Dataset:
  """A reduced-budget copy: ``train`` / ``test`` examples drawn without replacement (0 = all).

  The draw uses a fixed seed (not the run's), so every variant and seed of a comparison
  sees the same images; order within each split is kept, so folder data sets (sorted by
  class) still give every class its share.
  """
  def take(images, labels, n, salt):
    if not n or n >= len(labels):
      return images, labels
    keep = np.sort(np.random.default_rng(salt).choice(len(labels), n, replace=False))
    return images[keep], labels[keep]
  xtr, ytr = take(ds.train_images, ds.train_labels, train, 0)
  xte, yte = take(ds.test_images, ds.test_labels, test, 1)
  if ytr is ds.train_labels and yte is ds.test_labels:
    return ds
  note = f'subset: {len(ytr)} of {len(ds.train_labels)} training and {len(yte)} of ' \
         f'{len(ds.test_labels)} test images (a reduced budget)'
  return dataclasses.replace(ds, train_images=xtr, train_labels=ytr, test_images=xte,
                             test_labels=yte, note='; '.join(filter(None, (ds.note, note))))


def load_dataset(spec: str, data_dir: str = '') -> Dataset:
  """Loads the data set named by ``spec`` (see the module docstring)."""
  if spec in _TFDS_SETS:
    return _load_tfds(spec, data_dir)
  kind, sep, path = spec.partition(':')
  if sep and path and kind == 'folder':
    return _load_folder(spec, os.path.expanduser(path))
  if sep and path and kind == 'mnist_idx':
    return _load_mnist_idx(spec, os.path.expanduser(path))
  raise DataError(f'unknown dataset {spec!r}; {SPEC_HELP}')


# ---------------------------------------------------------------- TFDS
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


def _load_tfds(name, data_dir):
  tfds = _import_tfds(name)
  classes, mean, std, flip = _TFDS_SETS[name]
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


# ---------------------------------------------------------------- folder:
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


def _load_folder(spec, root):
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


def _load_mnist_idx(spec, root):
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


# ---------------------------------------------------------------- JAX ops
@functools.partial(jax.jit, static_argnames=('flip', 'pad'))
def augment(key, images, *, flip: bool, pad: int = 4) -> jax.Array:
  """Random crop after ``pad`` zero padding, plus random horizontal flips if ``flip``.

  Args:
    key: PRNG key; all randomness comes from it (same key -> same output).
    images: [B, H, W, C], any dtype (kept).
    flip: flip each image left-right with probability 0.5.
    pad: zero padding on each side; crop offsets are uniform in [0, 2 * pad].

  Returns:
    [B, H, W, C] array of the input dtype.
  """
  images = jnp.asarray(images)
  b, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * pad + 1)
  crop = lambda x, o: jax.lax.dynamic_slice(x, (o[0], o[1], 0), (h, w, c))
  out = jax.vmap(crop)(padded, offsets)
  if flip:
    flips = jax.random.bernoulli(flip_key, 0.5, (b,))
    out = jnp.where(flips[:, None, None, None], out[:, :, ::-1], out)
  return out


@functools.partial(jax.jit, static_argnames=('dtype',))
def normalize(images_uint8, mean, std, dtype=jnp.float32) -> jax.Array:
  """Returns ``(x / 255 - mean) / std`` per channel (last axis), computed in float32."""
  x = jnp.asarray(images_uint8).astype(jnp.float32) / 255.0
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  if mean.shape != (x.shape[-1],) or std.shape != (x.shape[-1],):
    raise DataError(f'normalize: images have {x.shape[-1]} channels but mean/std have '
                    f'shapes {mean.shape}/{std.shape}')
  return ((x - mean) / std).astype(dtype)
