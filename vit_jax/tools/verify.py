"""Checks that reversible backprop is exact on this machine, before (or during) a long run.

    python -m vit_jax.tools.verify --config configs/bdia_cifar10.py [--config.x=y ...]

One training step of the configured model on random data, with the custom VJP, reports:
- per block and stream, how many activation elements the backward pass rebuilt
  differently from the forward pass (must be 0 for bdia and momentum; revvit rebuilds
  in float arithmetic, so its max |error| is reported and a small drift is expected);
- the relative error of every parameter gradient against plain autodiff of the same
  forward computation (same keys, same quantization).
Exits 1 on any mismatch. The reconstruction is read out of the real backward pass: the
engine returns the rebuilt block inputs as the gradient of a zero "probe" argument.
"""
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import variants, vit as model_lib
from vit_jax.tools import cli
from vit_jax.training import config_checks, parallel, run_files
from vit_jax.training.exactness import reconstruction_and_grads, reference_grads, relative_errors

# float32 gradients of two different programs (custom VJP vs autodiff) differ by rounding:
# at most 1.1e-6 at the presets on a CPU, 8.5e-4 on an H200 whose TF32 matmuls round the
# two programs differently (RESULTS.md). The count of rebuilt elements that differ is the
# strict check.
GRAD_RTOL = {jnp.float32: 1e-3, jnp.bfloat16: 3e-2, jnp.float64: 1e-10}


def run(config, batch_size=None, seed=0) -> dict:
  """Runs the check for ``config``; returns a JSON-able report with ``ok``.

  With ``config.parallel_seeds`` = N > 1 it checks N models in one program, vectorised as
  seed-parallel training runs them (``parallel.seeds_per_vmap``; each model its own
  parameters and keys, the same images); mismatches are then summed, errors maximised
  over the models.
  """
  model = model_lib.build(config)
  m = config.model
  b = batch_size or config.batch_size
  n = config.get('parallel_seeds', 1)
  k_img, k_lab, k_init, k_drop = jax.random.split(jax.random.PRNGKey(seed), 4)
  images = jax.random.normal(k_img, (b, m.image_size, m.image_size, m.channels),
                             model.dtype)
  labels = jax.random.randint(k_lab, (b,), 0, m.num_classes)
  models = None if n == 1 else np.arange(n)  # the model axis, as parallel.over_models reads it
  per_vmap = parallel.seeds_per_vmap(config, parallel.make_mesh())  # as training runs them
  per_model = lambda f: jax.jit(parallel.over_models(functools.partial(f, model), models,
                                                     in_axes=(0, None, None, 0), per_vmap=per_vmap))
  init_keys, drop_keys = (k_init, k_drop) if n == 1 else (
      jax.random.split(k_init, n), jax.random.split(k_drop, n))
  params = jax.jit(parallel.over_models(lambda k: model.init(k, images[:1])['params'], models))(
      init_keys)
  mismatches, errors, grads = per_model(reconstruction_and_grads)(params, images, labels,
                                                                  drop_keys)
  ref = per_model(reference_grads)(params, images, labels, drop_keys)
  if n > 1:
    mismatches, errors = jnp.sum(mismatches, 0), jnp.max(errors, 0)
  rel = relative_errors(grads, ref)
  exact = variants.make_variant(m.variant).exact
  rtol = GRAD_RTOL[jnp.dtype(model.dtype).type]
  report = dict(variant=m.variant, depth=m.depth, batch=b, dtype=jnp.dtype(model.dtype).name,
                models=n, device=jax.devices()[0].device_kind, backend=jax.default_backend(),
                matmul_precision=str(jax.config.jax_default_matmul_precision),
                xla_flags=os.environ.get('XLA_FLAGS', ''),
                mismatches=np.asarray(mismatches).tolist(),
                max_abs_error=np.asarray(errors).tolist(),
                grad_rel_error_max=max(rel.values()), grad_rel_error_worst=max(rel, key=rel.get),
                grad_rtol=rtol)
  report['ok'] = bool((not exact or int(np.sum(mismatches)) == 0)
                      and report['grad_rel_error_max'] <= rtol and np.all(np.isfinite(errors)))
  return report


def print_report(r: dict, out=sys.stdout) -> None:
  models = f", {r['models']} models in one program" if r.get('models', 1) > 1 else ''
  print(f"{r['variant']}: depth {r['depth']}, batch {r['batch']}{models}, {r['dtype']} compute, "
        f"{r['device']} ({r['backend']}), matmul precision {r['matmul_precision']}", file=out)
  for k, (mis, err) in enumerate(zip(r['mismatches'], r['max_abs_error'])):
    cells = ', '.join(f'stream {s}: {n} differ, max |err| {e:.3g}'
                      for s, (n, e) in enumerate(zip(mis, err)))
    print(f'  block {k:2d} input rebuilt: {cells}', file=out)
  print(f"  gradients vs autodiff: max relative error {r['grad_rel_error_max']:.3g} "
        f"({r['grad_rel_error_worst']}), tolerance {r['grad_rtol']:g}", file=out)
  print('OK' if r['ok'] else 'MISMATCH: reversible backprop is not exact here', file=out)


def main(argv=None):
  from absl import flags
  cli.define_config_flag()
  flags.DEFINE_integer('batch', 0, 'Batch size (default: config.batch_size).')
  flags.DEFINE_string('json', '', 'Also write the report as JSON to this file.')
  flags.DEFINE_enum('matmul_precision', None, ['default', 'high', 'highest'],
                    'Sets jax_default_matmul_precision (GPU: default allows TF32).')
  args = cli.parse(argv or sys.argv, 'verify')
  if args.matmul_precision:
    jax.config.update('jax_default_matmul_precision', args.matmul_precision)
  try:
    config_checks.check_config(args.config, num_devices=1)
  except config_checks.ConfigError as e:
    cli.fail('verify', str(e))
  report = run(args.config, args.batch or None)
  print_report(report)
  if args.json:
    run_files.write_json(args.json, report)
  sys.exit(0 if report['ok'] else 1)


if __name__ == '__main__':
  main()
