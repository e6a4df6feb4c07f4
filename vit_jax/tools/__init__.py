"""The commands, each ``python -m vit_jax.tools.<name>``; ``train.py`` is the trainer's.

  verify.py     is the reconstruction exact on this machine? (exit 1 if not)
  bench.py      compile time, step time, images/s, MFU and training memory per variant;
                with ``--max-depth`` (max_depth.py) the deepest model that fits
  compare.py    trains every variant and seed with one budget, then the report
  report.py     results table and plots (plots.py) over training workdirs
  study.py      the named small-data studies (five variants, three seeds), resumable;
                their report with 95 % intervals (study_report.py, stats.py)
  evaluate.py   a run's checkpoint evaluated per class, its parameters exported
  import_original.py  a model trained with the PyTorch original, as a vit-jax run
  cli.py        flags, logging and one-line errors shared by the commands
"""
