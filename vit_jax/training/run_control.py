"""What ends a training run early: user errors, preemption signals, non-finite losses."""
import logging
import os
import signal
import sys
import threading

log = logging.getLogger(__name__)

# Exit statuses of every command: a user error (one line, nothing lost), and a stop by
# SIGTERM/SIGINT or a lost peer after which the same command resumes.
EXIT_ERROR, EXIT_PREEMPTED = 2, 75


class UserError(Exception):
  """Input the user must fix (a config value, the data, a checkpoint, the workdir).

  Every command prints its message as one line and exits with ``EXIT_ERROR``; nothing
  already written is lost. The kinds below, and ``ConfigError``, ``DataError`` and
  ``CheckpointError`` where they are raised, derive from it.
  """


class TrainingError(UserError, RuntimeError):
  """The run cannot go on; the message says why and what to change."""


class Preempted(Exception):
  """SIGTERM/SIGINT: the message says what was saved and how to resume."""


class Signals:
  """SIGTERM/SIGINT set a flag (never an exception inside library code); twice: exit now."""

  def __init__(self):
    self.received = None
    self.last_checkpoint = 'no checkpoint was written'

  def _handler(self, signum, _):
    name = signal.Signals(signum).name
    if self.received is None:
      self.received = name
      log.warning('%s received: stopping at the next safe point (send it again to stop at '
                  'once, without saving)', name)
      return
    sys.stderr.write(f'{os.path.basename(sys.argv[0]) or "python"}: stopped: {self.received} '
                     f'then {name} received: stopped at once without saving; '
                     f'{self.last_checkpoint}. Rerun the same command to resume\n')
    sys.stderr.flush()
    os._exit(EXIT_PREEMPTED)  # pylint: disable=protected-access

  def check(self, what: str) -> None:
    """During setup: stop here if a signal came."""
    if self.received:
      raise Preempted(f'{self.received} received {what}; no checkpoint was written. Rerun '
                      'the same command to resume')

  def __enter__(self):
    self.old = {}
    if threading.current_thread() is threading.main_thread():
      self.old = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *exc):
    for s, h in self.old.items():
      signal.signal(s, h)


def nonfinite_error(first_bad: int, steps_per_epoch: int, config, saved_step: int,
                    seed=None) -> str:
  """The message for a non-finite loss or gradient at 0-based step ``first_bad``.

  One model (``seed`` None): the run stops and keeps its last checkpoint. One of several
  models: that model stops with the parameters it had before the step, the others go on.
  """
  where = (f'step {first_bad + 1} (epoch {first_bad // steps_per_epoch + 1}, step '
           f'{first_bad % steps_per_epoch + 1} of {steps_per_epoch})')
  if seed is None:
    kept = (f'the last good checkpoint ({f"step {saved_step}" if saved_step else "none yet"}) '
            'is kept as it was')
  else:
    kept = ('this model keeps the parameters it had before that step and trains no '
            'further; the other models go on')
  return (f'{"" if seed is None else f"seed {seed}: "}loss or gradients became NaN/Inf at '
          f'{where}; {kept}. Lower --config.learning_rate (now {config.learning_rate:g})'
          f'{"" if config.grad_clip_norm else ", set --config.grad_clip_norm=1.0"}'
          f'{", use --config.bf16=False" if config.bf16 else ""}, or skip such steps with '
          '--config.on_nonfinite=skip')
