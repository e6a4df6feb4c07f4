"""One run per workdir: an exclusive ``flock`` on ``WORKDIR/.lock`` for the run's whole life.

The lock is the operating system's (``fcntl.flock``), held through an open file: it goes
away with the process however the process ends, so a run killed by SIGKILL or a power
cut leaves nothing stale behind, and the next run simply takes it. The file's content
(``<pid> <host>``) names the last holder, for the message a refused run prints; it is
rewritten by every run that gets the lock and is not part of the run's results.

A second run on a held workdir is refused with ``WorkdirLocked`` before it writes
anything: it opens an existing lock file read-only and never creates the workdir. In a
multi-process (multi-host) run only the process that writes files (process 0) locks.

Where the workdir does not exist yet there is nothing to lock: ``WorkdirLock.acquire``
is called again once the run has created the workdir (the moment it writes anyway), and
of two runs racing for a new workdir only one gets the lock. After ``--fresh`` has moved
a run aside, the same call locks the new, empty workdir.
"""
import errno
import fcntl
import os
import socket

from vit_jax.training.config_checks import ConfigError

LOCK_FILE = '.lock'


class WorkdirLocked(ConfigError):
  """Another live process holds the workdir; the message names it."""


def _holder(fd: int) -> str:
  try:
    pid, host = os.pread(fd, 512, 0).decode(errors='replace').split()[:2]
    return f'pid {pid} on {host}'
  except (OSError, ValueError):  # the holder has not written its name yet
    return 'another process'


def _refuse(workdir: str, fd: int) -> WorkdirLocked:
  return WorkdirLocked(
      f'workdir {workdir} is in use by another run ({_holder(fd)}); nothing was changed. '
      'Wait for that run to end (or stop it), or use another --workdir')


def _try_lock(fd: int) -> bool:
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except OSError as e:
    if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      return False
    raise


def check(workdir: str) -> None:
  """Raises ``WorkdirLocked`` if a live run holds ``workdir``; holds nothing, writes nothing.

  A quick early check (train.py calls it before its heavy imports); the run itself
  takes the lock with ``WorkdirLock``.
  """
  try:
    fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDONLY)
  except OSError:
    return  # no lock file, or none we can read: WorkdirLock decides
  try:
    if not _try_lock(fd):
      raise _refuse(workdir, fd)
  finally:
    os.close(fd)  # also releases the probe's lock


class WorkdirLock:
  """Holds ``workdir``'s lock from ``acquire`` until ``release`` (or the with block's end)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir, self.enabled = workdir, enabled
    self.path = os.path.join(workdir, LOCK_FILE)
    self.fd = None

  def _holds_current_file(self) -> bool:
    if self.fd is None:
      return False
    try:
      here, held = os.stat(self.path), os.fstat(self.fd)
    except OSError:
      return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)

  def acquire(self) -> None:
    """Locks an existing workdir (nothing happens while it does not exist).

    Raises ``WorkdirLocked`` if another live process holds it, ``ConfigError`` if the
    lock file cannot be created. Calling it again is cheap; it re-locks if the folder
    was replaced (``--fresh``).
    """
    if not self.enabled or not os.path.isdir(self.workdir) or self._holds_current_file():
      return
    self.release()
    for _ in range(10):  # the file may be replaced between open and flock (--fresh)
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as e:
        raise ConfigError(f'workdir {self.workdir} cannot be locked ({e.strerror} for '
                          f'{self.path}); choose another --workdir or fix its permissions') from e
      if not _try_lock(fd):
        error = _refuse(self.workdir, fd)
        os.close(fd)
        raise error
      self.fd = fd
      if self._holds_current_file():
        break
      self.release()
    if self.fd is None:
      raise ConfigError(f'workdir {self.workdir} cannot be locked: {self.path} keeps being '
                        'replaced by another process; use another --workdir')
    os.ftruncate(self.fd, 0)
    os.pwrite(self.fd, f'{os.getpid()} {socket.gethostname()}\n'.encode(), 0)

  def release(self) -> None:
    if self.fd is not None:
      os.close(self.fd)  # closing the only descriptor releases the flock
      self.fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()
