"""Trains a ViT variant: python train.py --config configs/bdia_cifar10.py --workdir runs/bdia

Override any config field: --config.num_epochs=10 --config.dataset=folder:/data/cifar10.
Rerunning the same command with the same --workdir resumes from the latest checkpoint.
"""
import sys

from absl import flags

from vit_jax import cli

cli.define_config_flag()
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics.csv and summary.json go.')
flags.DEFINE_bool('fresh', False, 'Move an existing run in --workdir aside and start over.')


def main(argv):
  args = cli.parse(argv, 'train.py')
  if not args.workdir:
    cli.fail('train.py', '--workdir is required (a folder for checkpoints and metrics)')
  from vit_jax import checkpoints, data, train_lib, validate
  if args.config.get('distributed'):
    import jax
    jax.distributed.initialize()
  try:
    train_lib.train_and_evaluate(args.config, args.workdir, fresh=args.fresh)
  except train_lib.Preempted as e:
    cli.fail('train.py', str(e), cli.EXIT_PREEMPTED)
  except (validate.ConfigError, data.DataError, train_lib.TrainingError,
          checkpoints.CheckpointError) as e:
    cli.fail('train.py', str(e))


if __name__ == '__main__':
  main(sys.argv)
