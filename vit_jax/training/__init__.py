"""The training wing: ``train_lib.train_and_evaluate(config, workdir)`` and its parts.

  train_lib.py        the run: checks, data, restore, then the loop; summaries
  train_loop.py       the loop: chunks of steps, evaluation, checkpoints, signals
  train_step.py       the training step for one model, and the jitted chunk of steps
  evaluation.py       loss and accuracy on the evaluation set
  parallel.py         the data mesh over devices and the model axis over seeds
  data/               data sets (TFDS, image folders, MNIST IDX) and augmentation
  optim.py            SET-Adam, AdamW, SGD and their schedules
  checkpoints.py      Orbax checkpoints, written by process 0
  run_files.py        the workdir format: metrics.csv, config.json, summary.json
  config_defaults.py  the defaults every config starts from, and the presets
  config_checks.py    config and workdir checks: one line per bad input
  exactness.py        the reconstruction check (verify, and the guard during training)
  program.py          the compiled training program and its memory, for the tools
  run_control.py      what ends a run early: errors, signals, non-finite losses
  workdir_lock.py     one run per workdir
  multiprocess.py     several processes: who writes, a lost peer
"""
