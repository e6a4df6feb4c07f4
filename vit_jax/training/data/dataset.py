"""The in-memory data set every loader returns, its checks, and reduced-budget subsets:
``subset`` (a fixed random draw) and ``first_per_class`` (a stated rule: the first K
images of each class in the loader's order, which for image folders is sorted file names)."""
import dataclasses

import numpy as np

from vit_jax.training.run_control import UserError
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                   'frog', 'horse', 'ship', 'truck')
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
MNIST_CLASSES = tuple(str(i) for i in range(10))
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
SPEC_HELP = ("accepted forms: 'cifar10', 'mnist' (TFDS), 'folder:/path/to/images' "
             "(train/<class>/*, test/<class>/*), 'mnist_idx:/path/to/idx_files'")


class DataError(UserError, ValueError):
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


def first_per_class(ds: Dataset, train: int = 0, test: int = 0) -> Dataset:
  """The first ``train`` / ``test`` images of each class, in the split's order (0 = all).

  The loaders keep a stated order (image folders: sorted file names within each class;
  IDX files: file order), so the rule picks the same images on every machine, whatever
  the file system lists first. Classes with fewer images give all they have.
  """
  def take(images, labels, k):
    if not k:
      return images, labels
    rank = np.zeros(len(labels), np.int64)  # each image's place among its class's images
    for c in np.unique(labels):
      rank[labels == c] = np.arange(np.count_nonzero(labels == c))
    keep = np.flatnonzero(rank < k)
    return images[keep], labels[keep]
  if not train and not test:
    return ds
  xtr, ytr = take(ds.train_images, ds.train_labels, train)
  xte, yte = take(ds.test_images, ds.test_labels, test)
  note = (f'first {train or "all"} training and {test or "all"} test images of each class: '
          f'{len(ytr)} of {len(ds.train_labels)} and {len(yte)} of {len(ds.test_labels)}')
  return dataclasses.replace(ds, train_images=xtr, train_labels=ytr, test_images=xte,
                             test_labels=yte, note='; '.join(filter(None, (ds.note, note))))
