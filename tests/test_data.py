"""Tests for vit_jax/training/data: fast, CPU only, no network (slow ones read ../shared/data)."""
import gzip
import re
import struct
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vit_jax.training import data
from vit_jax.training.data import DataError, tfds_loader

SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


def _write_image(path, value, size=8, mode='RGB', fmt=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  shape = (size, size, 3) if mode == 'RGB' else (size, size)
  Image.fromarray(np.full(shape, value, np.uint8), mode).save(path, fmt)


def _make_folder(root, train, test, **kw):
  """Writes root/{train,test}/<class>/<i>.png; pixel value = 10 * sorted id + i."""
  ids = {c: i for i, c in enumerate(sorted(train))}
  for split, counts in (('train', train), ('test', test)):
    for c, n in counts.items():
      for i in range(n):
        _write_image(root / split / c / f'{i}.png', 10 * ids.get(c, 0) + i, **kw)
  return root


def _one_line_error(spec, match):
  with pytest.raises(DataError, match=re.escape(str(match))) as e:
    data.load_dataset(spec)
  assert '\n' not in str(e.value)


# ------------------------------------------------------------------ folder:
def test_folder_labels_follow_sorted_class_names(tmp_path):
  root = _make_folder(tmp_path, {'zebra': 2, 'ant': 3, 'moth': 1}, {'moth': 2, 'ant': 1})
  _write_image(root / 'train' / 'ant' / 'extra.JPG', 200, fmt='JPEG')  # Upper-case ext.
  _write_image(root / 'train' / 'ant' / 'extra2.bmp', 201)
  (root / 'train' / 'ant' / 'notes.txt').write_text('not an image')  # Ignored.
  ds = data.load_dataset(f'folder:{root}')
  assert ds.class_names == ('ant', 'moth', 'zebra')
  assert ds.train_images.shape == (8, 8, 8, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (3, 8, 8, 3) and ds.test_labels.dtype == np.int32
  assert ds.train_labels.dtype == np.int32
  np.testing.assert_array_equal(ds.train_labels, [0, 0, 0, 0, 0, 1, 2, 2])
  np.testing.assert_array_equal(ds.test_labels, [0, 1, 1])
  png = [0, 1, 2, 5, 6, 7]  # ant's extra.JPG and extra2.bmp sort after its 2.png.
  np.testing.assert_array_equal(ds.train_images[png, 0, 0, 0] // 10, ds.train_labels[png])
  assert (ds.num_classes, ds.image_size, ds.channels, ds.flip) == (3, 8, 3, True)
  x = ds.train_images.reshape(-1, 3) / 255
  np.testing.assert_allclose(ds.mean, x.mean(0), atol=1e-6)
  np.testing.assert_allclose(ds.std, x.std(0), atol=1e-6)


def test_folder_grayscale_keeps_one_channel(tmp_path):
  root = _make_folder(tmp_path, {'a': 2, 'b': 2}, {'a': 1}, mode='L')
  ds = data.load_dataset(f'folder:{root}')
  assert ds.train_images.shape == (4, 8, 8, 1) and ds.channels == 1
  assert not ds.flip and len(ds.mean) == len(ds.std) == 1


def test_folder_mixed_gray_and_rgb_gives_rgb(tmp_path):
  root = _make_folder(tmp_path, {'a': 2}, {'a': 1}, mode='L')
  _write_image(root / 'train' / 'a' / 'rgb.png', 7)
  ds = data.load_dataset(f'folder:{root}')
  assert ds.train_images.shape == (3, 8, 8, 3) and ds.flip
  np.testing.assert_array_equal(ds.train_images[0, 0, 0], [0, 0, 0])


def test_folder_with_cifar10_class_names_uses_cifar_constants(tmp_path):
  root = _make_folder(tmp_path, {c: 1 for c in data.CIFAR10_CLASSES},
                      {c: 1 for c in data.CIFAR10_CLASSES}, size=4)
  ds = data.load_dataset(f'folder:{root}')
  assert ds.class_names == data.CIFAR10_CLASSES
  assert (ds.mean, ds.std, ds.flip) == (data.CIFAR10_MEAN, data.CIFAR10_STD, True)


def test_folder_errors(tmp_path):
  _one_line_error(f'folder:{tmp_path / "nope"}', tmp_path / 'nope')
  (tmp_path / 'a' / 'test').mkdir(parents=True)
  _one_line_error(f'folder:{tmp_path / "a"}', tmp_path / 'a' / 'train')
  root = _make_folder(tmp_path / 'b', {'cat': 1}, {})
  _one_line_error(f'folder:{root}', root / 'test')  # test/ missing.
  (root / 'test').mkdir()
  _one_line_error(f'folder:{root}', 'no class folders')
  (root / 'test' / 'empty_class').mkdir()
  _one_line_error(f'folder:{root}', root / 'test' / 'empty_class')
  (root / 'test' / 'empty_class').rmdir()
  _write_image(root / 'test' / 'only_in_test' / '0.png', 1)
  _one_line_error(f'folder:{root}', 'only_in_test')
  _write_image(root / 'train' / 'only_in_test' / '0.png', 1)
  (root / 'train' / 'cat' / 'bad.jpg').write_bytes(b'\xff\xd8 this is not a jpeg')
  _one_line_error(f'folder:{root}', root / 'train' / 'cat' / 'bad.jpg')
  (root / 'train' / 'cat' / 'bad.jpg').unlink()
  _write_image(root / 'test' / 'cat' / 'big.png', 1, size=9)
  _one_line_error(f'folder:{root}', root / 'test' / 'cat' / 'big.png')
  (root / 'test' / 'cat' / 'big.png').unlink()
  (root / 'test' / 'cat').rmdir()
  data.load_dataset(f'folder:{root}')  # Repaired: loads.
  root = tmp_path / 'c'
  (root / 'train' / 'x').mkdir(parents=True)
  (root / 'test' / 'x').mkdir(parents=True)
  Image.new('RGB', (6, 4)).save(root / 'train' / 'x' / '0.png')
  Image.new('RGB', (6, 4)).save(root / 'test' / 'x' / '0.png')
  _one_line_error(f'folder:{root}', 'square')


def test_unknown_spec_lists_accepted_forms():
  for spec in ('imagenet', 'folder:', 'tfds:mnist'):
    with pytest.raises(DataError, match='folder:/path.*mnist_idx:'):
      data.load_dataset(spec)


# ------------------------------------------------------------------ mnist_idx:
def _write_idx(path, array, gz=True):
  header = bytes([0, 0, 8, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
  raw = header + array.astype(np.uint8).tobytes()
  path.write_bytes(gzip.compress(raw) if gz else raw)


def _write_mnist(root, prefix, n, size=4, gz=True, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
  labels = rng.integers(0, 10, n, dtype=np.uint8)
  suffix = '.gz' if gz else ''
  _write_idx(root / f'{prefix}-images-idx3-ubyte{suffix}', images, gz)
  _write_idx(root / f'{prefix}-labels-idx1-ubyte{suffix}', labels, gz)
  return images, labels


def test_mnist_idx_train_and_test(tmp_path):
  xtr, ytr = _write_mnist(tmp_path, 'train', 30, gz=False, seed=1)
  xte, yte = _write_mnist(tmp_path, 't10k', 12, gz=True, seed=2)
  ds = data.load_dataset(f'mnist_idx:{tmp_path}')
  np.testing.assert_array_equal(ds.train_images, xtr[..., None])
  np.testing.assert_array_equal(ds.test_labels, yte)
  assert ds.train_labels.dtype == np.int32 and ds.test_images.shape == (12, 4, 4, 1)
  assert (ds.mean, ds.std, ds.flip, ds.note) == (data.MNIST_MEAN, data.MNIST_STD, False, '')
  assert ds.class_names == tuple('0123456789')


@pytest.mark.parametrize('n,n_train', [(50, 40), (10_000, 8_000)])
def test_mnist_idx_t10k_only_holds_out_last_20_percent(tmp_path, n, n_train):
  x, y = _write_mnist(tmp_path, 't10k', n, size=2)
  ds = data.load_dataset(f'mnist_idx:{tmp_path}')
  np.testing.assert_array_equal(ds.train_images[..., 0], x[:n_train])
  np.testing.assert_array_equal(ds.test_labels, y[n_train:])
  assert f'{n_train}/{n - n_train}' in ds.note


def test_mnist_idx_errors(tmp_path):
  _one_line_error(f'mnist_idx:{tmp_path}', 't10k-images-idx3-ubyte')  # Nothing there.
  _write_mnist(tmp_path, 't10k', 10)
  labels = tmp_path / 't10k-labels-idx1-ubyte.gz'
  labels.unlink()
  _one_line_error(f'mnist_idx:{tmp_path}', 't10k-labels-idx1-ubyte')  # Half a pair.
  _write_idx(labels, np.zeros((10, 2), np.uint8))  # Wrong magic (2-d).
  _one_line_error(f'mnist_idx:{tmp_path}', labels)
  labels.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack('>I', 10) + b'\0' * 9))
  _one_line_error(f'mnist_idx:{tmp_path}', 'truncated')
  labels.write_bytes(b'\x1f\x8b not really gzip')
  _one_line_error(f'mnist_idx:{tmp_path}', labels)
  _write_idx(labels, np.full(10, 11, np.uint8))
  _one_line_error(f'mnist_idx:{tmp_path}', 'label 11')


# ------------------------------------------------------------------ TFDS
@pytest.mark.parametrize('name,shape', [('cifar10', (32, 32, 3)), ('mnist', (28, 28, 1))])
def test_tfds_under_mock_data(tmp_path, name, shape):
  pytest.importorskip('tensorflow', reason='the TFDS path needs TensorFlow')
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=6):
    ds = data.load_dataset(name, data_dir=str(tmp_path))
  for x, y in ((ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)):
    assert x.shape == (6, *shape) and x.dtype == np.uint8 and y.dtype == np.int32
    assert 0 <= y.min() and y.max() < 10
  assert ds.num_classes == 10 and ds.flip == (name == 'cifar10')


def test_tfds_not_prepared_and_no_network_fails_fast(monkeypatch):
  calls = []

  def fake_load(name, *, download, **kw):
    calls.append(download)
    assert not download, 'must not try to download without network'
    raise AssertionError(f'Dataset {name}: could not find data in {kw["data_dir"]}.')

  fake_tfds = types.SimpleNamespace(load=fake_load, ReadConfig=lambda **kw: None)
  monkeypatch.setattr(tfds_loader, '_import_tfds', lambda name: fake_tfds)
  monkeypatch.setattr(tfds_loader, '_has_network', lambda: False)
  start = time.monotonic()
  with pytest.raises(DataError, match='not prepared in /nowhere.*no network') as e:
    data.load_dataset('mnist', data_dir='/nowhere')
  assert time.monotonic() - start < 2 and calls == [False]
  for hint in ('--config.dataset=folder:/path/to/images', '--config.data_dir=DIR', 'mnist_idx:'):
    assert hint in str(e.value)


def test_tfds_real_empty_data_dir_without_network(tmp_path, monkeypatch):
  pytest.importorskip('tensorflow', reason='the TFDS path needs TensorFlow')
  monkeypatch.setattr(tfds_loader, '_has_network', lambda: False)
  start = time.monotonic()
  with pytest.raises(DataError, match='cifar10.*not prepared'):
    data.load_dataset('cifar10', data_dir=str(tmp_path))
  assert time.monotonic() - start < 15  # Includes a first TensorFlow import.


def test_has_network_is_quick_when_unreachable():
  start = time.monotonic()
  assert not tfds_loader._has_network('127.0.0.1', port=1, timeout=1.0)
  assert time.monotonic() - start < 2


# ------------------------------------------------------------------ augment / normalize
def _images(b=16, h=8, c=3, seed=0):
  return np.random.default_rng(seed).integers(1, 256, (b, h, h, c), dtype=np.uint8)


def test_augment_deterministic_per_key_and_keeps_shape_dtype():
  x, k = _images(), jax.random.key(0)
  a, b = data.augment(k, x, flip=True), data.augment(k, x, flip=True)
  np.testing.assert_array_equal(a, b)
  assert a.shape == x.shape and a.dtype == jnp.uint8
  assert not np.array_equal(a, data.augment(jax.random.key(1), x, flip=True))
  f = data.augment(k, x.astype(np.float32) / 255, flip=False, pad=2)
  assert f.shape == x.shape and f.dtype == jnp.float32
  np.testing.assert_array_equal(data.augment(k, x, flip=False, pad=0), x)
  jitted = jax.jit(lambda key, im: data.augment(key, im, flip=True, pad=3))
  assert jitted(k, x).shape == x.shape


def _all_crops(image, pad):
  h = image.shape[0]
  p = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  return [p[i:i + h, j:j + h] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]


def test_augment_outputs_are_crops_and_flip_false_never_flips():
  x, pad = _images(b=64, h=6), 2
  for flip in (False, True):
    out = np.asarray(data.augment(jax.random.key(3), x, flip=flip, pad=pad))
    flipped = 0
    for img, o in zip(x, out):
      plain = any(np.array_equal(o, c) for c in _all_crops(img, pad))
      mirrored = any(np.array_equal(o, c) for c in _all_crops(img[:, ::-1], pad))
      assert plain or mirrored
      flipped += mirrored and not plain
    assert (flipped > 10) if flip else (flipped == 0)


def test_augment_offsets_cover_range_with_zero_borders():
  pad = 2
  out = np.asarray(data.augment(jax.random.key(0), np.ones((400, 8, 8, 1), np.uint8),
                                flip=False, pad=pad))
  zero_rows = (out == 0).all(axis=(2, 3))  # [B, H]
  top, bottom = zero_rows[:, :pad].sum(1), zero_rows[:, -pad:].sum(1)
  assert not (top.astype(bool) & bottom.astype(bool)).any()
  offsets = pad - top + bottom  # Row offset into the padded image.
  assert set(offsets.tolist()) == set(range(2 * pad + 1))
  assert (out.sum(axis=(1, 2, 3)) < 64).mean() > 0.5  # Zero padding visible often.


def test_normalize():
  x = _images(b=2, c=3)
  mean, std = data.CIFAR10_MEAN, data.CIFAR10_STD
  y = data.normalize(x, mean, std)
  np.testing.assert_allclose(y, (x / 255 - np.array(mean)) / np.array(std), rtol=1e-5, atol=1e-5)
  assert y.dtype == jnp.float32
  assert data.normalize(x, mean, std, dtype=jnp.bfloat16).dtype == jnp.bfloat16
  with pytest.raises(DataError, match='channels'):
    data.normalize(x, data.MNIST_MEAN, data.MNIST_STD)


def test_dataset_validates_arrays():
  x, y = np.zeros((2, 4, 4, 1), np.uint8), np.zeros(2, np.int32)
  with pytest.raises(DataError, match='int32'):
    data.Dataset('t', x, y.astype(np.int64), x, y, ('a',), (0.,), (1.,), False)
  with pytest.raises(DataError, match='labels outside'):
    data.Dataset('t', x, y + 1, x, y, ('a',), (0.,), (1.,), False)
  wide = data.Dataset('t', x[:, :2], y, x[:, :2], y, ('a',), (0.,), (1.,), False)
  with pytest.raises(DataError, match='square'):
    _ = wide.image_size


# ------------------------------------------------------------------ real data (slow)
@pytest.mark.slow
def test_real_mnist_idx_split():
  root = SHARED_DATA / 'mnist'
  if not (root / 't10k-images-idx3-ubyte.gz').exists():
    pytest.skip(f'{root} is absent (shared offline data, not part of a fresh clone)')
  ds = data.load_dataset(f'mnist_idx:{root}')
  assert ds.train_images.shape == (8000, 28, 28, 1) and ds.test_images.shape == (2000, 28, 28, 1)
  assert '8000/2000' in ds.note and set(ds.train_labels.tolist()) == set(range(10))


@pytest.mark.slow
def test_real_cifar10_folder():
  root = SHARED_DATA / 'cifar10'
  if not (root / 'train').is_dir():
    pytest.skip(f'{root} is absent (shared offline data, not part of a fresh clone)')
  ds = data.load_dataset(f'folder:{root}')
  assert ds.train_images.shape == (50_000, 32, 32, 3) and ds.test_images.shape == (10_000, 32, 32, 3)
  assert ds.class_names == data.CIFAR10_CLASSES == tuple(sorted(ds.class_names))
  assert (ds.mean, ds.std, ds.flip) == (data.CIFAR10_MEAN, data.CIFAR10_STD, True)
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)


def test_subset_is_fixed_stratified_by_order_and_labelled(tmp_path):
  ds = data.load_dataset(f'folder:{_make_folder(tmp_path, {"a": 6, "b": 6}, {"a": 3, "b": 3})}')
  small = data.subset(ds, train=4, test=2)
  assert small.train_labels.shape == (4,) and small.test_labels.shape == (2,)
  again = data.subset(ds, train=4, test=2)
  np.testing.assert_array_equal(small.train_images, again.train_images)  # not the run's seed
  assert list(small.train_labels) == sorted(small.train_labels)          # order kept
  assert 'subset: 4 of 12 training and 2 of 6 test images' in small.note
  assert data.subset(ds) is ds and data.subset(ds, train=100) is ds
