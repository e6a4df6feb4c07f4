"""Defaults shared by every config: the original project's recipe for CIFAR-10.

They live in the package so that every tool (train.py, bench, compare, verify) has them;
each file in configs/ is one ``preset(variant, dataset)``, its docstring the command and
the accuracy to expect. A config exposes ``get_config()`` returning an
``ml_collections.ConfigDict``; every field can be overridden from the command line
(``--config.num_epochs=10``). Fields derived from others (steps per epoch, schedule
lengths) are computed by the trainer, so overrides of their inputs take effect.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = "cifar10"           # 'cifar10' | 'mnist' (TFDS) | 'folder:/path' | 'mnist_idx:/path'
  c.data_dir = ''                 # TFDS data_dir ('' = TFDS default, ~/tensorflow_datasets)
  c.train_examples = 0            # > 0: a fixed random subset of the training split (reduced budget)
  c.eval_examples = 0             # > 0: the same for the evaluation split
  c.train_per_class = 0           # > 0: only the first K training images of each class (file order)
  c.eval_per_class = 0            # > 0: the same for the evaluation split
  c.train_eval_examples = 0       # > 0: each epoch, also evaluate N training images (evenly
                                  #   spaced, unaugmented; metrics.csv: train_eval_acc/_loss)
  c.seed = 0
  c.num_epochs = 400
  c.batch_size = 128              # global batch, split over all devices
  c.eval_batch_size = 500
  c.random_crop_padding = 4       # zero padding before the random crop; 0 = no crop
  c.random_flip = 'auto'          # 'auto' (not for single-channel images) | 'yes' | 'no'
  c.parallel_seeds = 1            # N > 1: train seeds seed..seed+N-1 as N models in one program
  c.vmap_seeds = 0                # of those, how many one jax.vmap covers; 0 = all on GPU, 1 on CPU
  c.steps_per_dispatch = 0        # steps per device loop; 0 = about 2 s of steps (measured)

  c.optimizer = 'setadam'         # 'setadam' | 'adamw' | 'sgd'
  c.learning_rate = 1e-4
  c.weight_decay = 0.0
  c.sgd_momentum = 0.9            # sgd only
  c.schedule = 'cosine'           # 'cosine' | 'constant'
  c.warmup_epochs = 0.0
  c.grad_clip_norm = 0.0          # 0 = no clipping
  c.label_smoothing = 0.0
  c.bf16 = False                  # bf16 compute, float32 parameters (and exact carries)

  c.model = ml_collections.ConfigDict()
  c.model.variant = 'vit'         # 'vit' | 'remat' | 'revvit' | 'bdia' | 'momentum'
  c.model.image_size = 32
  c.model.channels = 3
  c.model.num_classes = 10
  c.model.patch_size = 4
  c.model.dim = 512
  c.model.depth = 6
  c.model.heads = 8
  c.model.dim_head = 64
  c.model.mlp_dim = 512
  c.model.dropout = 0.1
  c.model.emb_dropout = 0.1

  c.bdia = ml_collections.ConfigDict()
  c.bdia.quant_bits = 9           # l: activations live on the 2^-l grid
  c.momentum_net = ml_collections.ConfigDict()
  c.momentum_net.beta_bits = 3    # m: beta = 1 - 2^-m (7/8)
  c.momentum_net.quant_bits = 9

  c.checkpoint_every_epochs = 1   # 0 = none per epoch (the last step is always saved)
  c.checkpoint_every_steps = 0    # 0 = only per epoch
  c.keep_checkpoints = 3          # 0 = keep all
  c.log_every_steps = 50          # unused: progress is shown once a dispatch (kept for old runs)
  c.progress_bar = True
  c.tensorboard = True            # event files when TensorFlow is importable
  c.on_nonfinite = 'stop'         # 'stop' | 'skip'
  c.exactness_check_every_steps = 0  # reversible variants: rebuild one batch every N steps
  c.exactness_check_action = 'warn'  # 'warn' | 'stop' when the rebuilt activations differ
  c.distributed = False           # multi-host: call jax.distributed.initialize()
  return c


def preset(variant: str, dataset: str) -> ml_collections.ConfigDict:
  """The original recipe for ``variant`` on 'cifar10' or 'mnist' (each configs/ file's).

  CIFAR-10: SET-Adam, lr 1e-4, batch 128, cosine decay, 400 epochs, dim 512, depth 6, 8
  heads of 64, MLP 512, dropout 0.1, random crops (padding 4) and flips. MNIST as the
  original trains it: 50 epochs, depth 4, MLP 256, horizontal flips and no random crop.
  README lists every deliberate difference from the original.
  """
  c = get_config()
  c.model.variant = variant
  if dataset == 'mnist':
    c.dataset, c.num_epochs = 'mnist', 50
    c.random_crop_padding, c.random_flip = 0, 'yes'
    c.model.image_size, c.model.channels, c.model.depth, c.model.mlp_dim = 28, 1, 4, 256
  return c


def apply_overrides(config, overrides: list[str]) -> None:
  """Applies ``--config.a.b=value`` strings (bench, compare) with the field's own type.

  Raises ValueError naming the field for an unknown field or a value of the wrong type.
  """
  for item in overrides:
    key, sep, text = item.removeprefix('--config.').partition('=')
    *parents, leaf = key.split('.')
    node = config
    try:
      for part in parents:
        node = node[part]
      old = node[leaf]
    except (KeyError, AttributeError, TypeError):
      raise ValueError(f'{item}: config has no field {key!r}') from None
    if not sep:
      raise ValueError(f'{item}: expected --config.{key}=VALUE')
    if isinstance(old, bool):
      if text.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(f'--config.{key}={text!r}: expected true or false')
      node[leaf] = text.lower() in ('true', '1')
      continue
    try:
      node[leaf] = type(old)(float(text)) if isinstance(old, int) and float(text).is_integer() \
          else type(old)(text)
    except ValueError:
      raise ValueError(f'--config.{key}={text!r}: expected {type(old).__name__}') from None
