"""One run as several processes (one per host): joining them, and stopping without a hang.

``train.py --config.distributed=True`` calls ``initialize`` before anything touches JAX.
The processes then form one mesh over all their devices; every process loads the same
data and computes the same replicated state, and only process 0 reads and writes the
workdir (``train_lib``, ``checkpoints``, ``workdir_lock``): on resuming it sends the
checkpoint to the others (``from_process_0``), so the other hosts need not see it.

When one process dies (a lost host, a kill), the others learn it in their next
collective (gloo on CPU, NCCL on GPU) as an error naming the broken connection, or from
JAX's coordinator. ``exit_now`` is how a process of such a run ends on any failure: one
line, then ``os._exit``, without JAX's exit-time shutdown barrier, at which a process
would otherwise wait for the others for minutes while they wait for it in a collective.
"""
import json
import os
import sys

# How a lost peer shows in the error of a collective or a barrier (gloo, JAX's coordinator).
LOST_PEER = ('Gloo', 'Connection closed', 'Connection reset', 'coordination service',
             'heartbeat', 'UNAVAILABLE', 'DEADLINE_EXCEEDED', 'Barrier')


def initialize(coordinator_address=None, num_processes=None, process_id=None) -> None:
  """``jax.distributed.initialize``; what is None comes from the environment.

  ``JAX_COORDINATOR_ADDRESS`` may give the address; a cluster JAX knows (SLURM, Open MPI,
  Cloud TPU, Kubernetes) gives all three.
  """
  import jax  # pylint: disable=import-outside-toplevel
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def active() -> bool:
  """Whether this process is one of several (``initialize`` was called)."""
  if 'jax' not in sys.modules:
    return False
  import jax  # pylint: disable=import-outside-toplevel
  return jax.distributed.is_initialized()


def lost_peer(error: BaseException) -> str:
  """The error's text if it says that another process is gone, else ''."""
  texts, e = [], error
  while e is not None and len(texts) < 4:  # the error and its causes
    texts.append(' '.join(str(e).split()))
    e = e.__cause__ or e.__context__
  text = next((t for t in texts if any(k in t for k in LOST_PEER)), '')
  return text


def lost_peer_message(text: str) -> str:
  import jax  # pylint: disable=import-outside-toplevel
  return (f'process {jax.process_index()} of {jax.process_count()}: another process of this '
          f'run stopped or cannot be reached ({text[:120]}); rerun the command on every host '
          'to resume from the last checkpoint')


def exit_now(prog: str, message: str, code: int, label: str = 'error') -> None:
  """One line on stderr, then exit at once (see the module docstring)."""
  sys.stdout.flush()
  sys.stderr.write(f'{prog}: {label}: {message}\n')
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def from_process_0(result, abstract):
  """Process 0's ``(step, arrays, meta)`` or None, on every process, bit for bit.

  ``result`` matters on process 0 only (its arrays: host or single-device copies shaped
  like ``abstract``). The arrays and the JSON metadata travel as one byte string (two
  broadcasts: its size, then the bytes), so that every bit arrives as it was, -0.0 and
  NaN payloads included (a float broadcast sums with zeros); each process then places
  them with ``abstract``'s sharding.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  leaves, tree = jax.tree.flatten(abstract)
  source = jax.process_index() == 0
  payload, step = b'', -1
  if source and result is not None:
    step, arrays, meta = result
    payload = b''.join(np.asarray(x).tobytes() for x in jax.tree.leaves(arrays))
    payload += json.dumps(meta).encode()
  header = np.array([step, len(payload)], np.int32)
  step, size = (int(v) for v in multihost_utils.broadcast_one_to_all(header))
  if step < 0:
    return None
  data = np.frombuffer(payload, np.uint8) if source else np.zeros(size, np.uint8)
  data = np.asarray(multihost_utils.broadcast_one_to_all(data)).tobytes()
  arrays, offset = [], 0
  for a in leaves:
    n = int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
    host = np.frombuffer(data[offset:offset + n], a.dtype).reshape(a.shape)
    # Not device_put: it would compare the values across processes again (NaN != NaN).
    arrays.append(jax.make_array_from_callback(a.shape, a.sharding, lambda i, h=host: h[i]))
    offset += n
  return step, jax.tree.unflatten(tree, arrays), json.loads(data[offset:])
