"""Imports a model trained with the PyTorch original: its weights become a vit-jax run.

    python -m vit_jax.tools.import_original FILE --config configs/vit_cifar10.py \
        --workdir W [--config.x=y ...] [--evaluate]

FILE is what the original writes: a bare ``state_dict`` (``torch.save(net.state_dict())``),
the checkpoint its ``--resume`` loads (``checkpoint/<net>-ckpt.t7``: a dict whose ``'net'``
is the state_dict, names prefixed ``module.`` under ``nn.DataParallel``), or an ``.npz`` of
the same arrays by name. Reading the torch formats needs torch (``pip install -e
'.[torch]'``); an ``.npz`` does not. The names are mapped by
``vit_jax.models.original_state_dict`` (vit, remat, bdia), every tensor exactly once.

W then holds a run at step 0 whose parameters are the original's, with a fresh optimizer
state: ``python train.py --config ... --workdir W`` fine-tunes it with the same config, and
``--evaluate`` prints its accuracy on the config's evaluation split now.
"""
import os
import sys

from absl import flags

from vit_jax.tools import cli

PROG = 'import_original'


def read_state_dict(path: str) -> dict:
  """{name: numpy array} from a torch file (bare state_dict or {'net': ...}) or an .npz."""
  import numpy as np  # lazy, as the rest: a bad flag fails before anything loads
  if not os.path.isfile(path):
    raise ValueError(f'{path} does not exist: pass the file the original saved '
                     '(checkpoint/<net>-ckpt.t7, a state_dict .pth, or an .npz)')
  if path.endswith('.npz'):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError(f'reading {path} needs torch: pip install -e ".[torch]", or save the '
                     'state_dict as .npz (numpy.savez(file, **{k: v.numpy() ...}))') from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  (torch raises many kinds)
    raise ValueError(f'cannot read {path} with torch.load ({" ".join(str(e).split())[:160]}): '
                     'is it a file the original saved?') from None
  sd = obj.get('net', obj) if isinstance(obj, dict) else None
  if not isinstance(sd, dict) or not all(hasattr(v, 'numpy') for v in sd.values()):
    raise ValueError(f'{path} holds no state_dict (a dict of tensors, or one under "net")')
  return {k: v.detach().float().numpy() for k, v in sd.items()}


def import_run(config, state_dict: dict, workdir: str):
  """Writes ``workdir``'s step-0 checkpoint with the imported parameters; returns
  (model, params, data set, data info) for an evaluation."""
  # lazy, as in main: a bad flag fails before JAX loads
  import jax  # pylint: disable=import-outside-toplevel
  from vit_jax.models import original_state_dict, vit as model_lib  # lazy (see above)
  from vit_jax.training import (checkpoints, config_checks, data, optim,  # lazy
                                run_files, train_step)
  config_checks.check_config(config, num_devices=1)
  if config.parallel_seeds != 1:
    raise config_checks.ConfigError('config.parallel_seeds must be 1: one imported model')
  config_checks.check_workdir(config, workdir)
  ds = data.load_for(config)
  config_checks.check_dataset_matches(config, ds)
  info = data.dataset_info(ds, config)
  model, tx = model_lib.build(config), optim.make_optimizer(config, info['steps_per_epoch'])
  fresh = jax.jit(lambda: train_step.create_state(model, tx, ds.train_images.shape[1:],
                                                   config.seed))()
  params = jax.tree.map(jax.numpy.asarray, original_state_dict.to_params(
      state_dict, config.model.variant, fresh.params))
  state = fresh.replace(params=params, opt_state=tx.init(params))
  ckpt = checkpoints.Checkpoints(workdir, config.keep_checkpoints)
  try:
    if ckpt.steps():
      raise config_checks.ConfigError(f'{workdir} already holds a run (checkpoint steps '
                                      f'{ckpt.steps()}): import into a new --workdir')
    os.makedirs(workdir, exist_ok=True)
    ckpt.save(0, {'state': state, 'sums': train_step.zero_sums()},
              dict(epochs_done=0, epoch_elapsed_s=0.0, train_images=len(ds.train_labels),
                   steps_per_epoch=info['steps_per_epoch'], config=config.to_dict(),
                   stopped={}))
  finally:
    ckpt.close()
  run_files.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  return model, params, ds, info


def main(argv=None):
  cli.define_config_flag()
  flags.DEFINE_string('workdir', None, 'Where the imported run goes (a new folder).')
  flags.DEFINE_bool('evaluate', False, "Print the imported model's accuracy on the "
                    "config's evaluation split.")
  args, files = cli.parse(argv or sys.argv, PROG, positional=True)
  if len(files) != 1 or not args.workdir:
    cli.fail(PROG, 'usage: python -m vit_jax.tools.import_original FILE --config C --workdir W')
  try:
    state_dict = read_state_dict(files[0])  # before JAX loads: a bad file fails at once
  except ValueError as e:
    cli.fail(PROG, str(e))
  from vit_jax.training import evaluation, parallel  # lazy: a bad flag fails before JAX loads
  from vit_jax.training.run_control import UserError
  try:
    model, params, ds, info = import_run(args.config, state_dict, args.workdir)
  except (UserError, ValueError) as e:  # MappingError is a ValueError
    cli.fail(PROG, str(e))
  print(f'{PROG}: {files[0]} -> {args.workdir} (step 0; train.py with the same --config '
        'fine-tunes it)')
  if args.evaluate:
    mesh = parallel.make_mesh()
    step = evaluation.make_eval_step(model, info, args.config, mesh)
    loss, acc = evaluation.evaluate(step, params, ds.test_images, ds.test_labels,
                                    args.config.eval_batch_size, mesh)
    print(f'{PROG}: {len(ds.test_labels)} evaluation images: accuracy {100 * acc:.2f} %, '
          f'loss {loss:.4f}')


if __name__ == '__main__':
  main()
