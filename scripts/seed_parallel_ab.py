"""Per-model speed of seed-parallel training against one model, measured interleaved.

    python scripts/seed_parallel_ab.py VARIANT [BATCH] [STEPS]

Compiles, in one process, the CIFAR-10 preset's training program (depth 6) for one model,
for 3 models one after another (``vmap_seeds=1``) and for 3 models vectorised
(``vmap_seeds=3``), then times a chunk of STEPS steps of each, twice, in turn: a machine
whose load drifts slows all three alike, which a bench run (one configuration after the
other) does not guarantee. Prints each program's seconds per model-step and its ratio to
one model (above 1: faster per model).
"""
import sys
import time

import jax
import numpy as np

from vit_jax.training import program


def main(variant: str, batch: int = 128, steps: int = 2, rounds: int = 2) -> None:
  programs = {}
  for name, models, per_vmap in (('1 model', 1, 0), ('3, one after another', 3, 1),
                                 ('3, vmapped', 3, 3)):
    c = program.make_config(variant, 6, batch, [], models)
    c.vmap_seeds = per_vmap
    compiled, _, make_inputs = program.compile_train_step(c)
    state, sums, *inputs = make_inputs()
    state, sums = compiled(state, sums, *inputs, np.int32(1))  # the first call's overhead
    jax.block_until_ready(sums)
    programs[name] = dict(run=compiled, state=state, sums=sums, inputs=inputs, models=models,
                          times=[])
  for _ in range(rounds):
    for p in programs.values():
      t0 = time.perf_counter()
      p['state'], p['sums'] = p['run'](p['state'], p['sums'], *p['inputs'], np.int32(steps))
      jax.block_until_ready(p['sums'])
      p['times'].append((time.perf_counter() - t0) / steps / p['models'])
  alone = min(programs['1 model']['times'])
  for name, p in programs.items():
    print(f"{variant} {name}: {min(p['times']):.3f} s a model-step "
          f"({', '.join(f'{t:.3f}' for t in p['times'])}), ratio {alone / min(p['times']):.3f}")


if __name__ == '__main__':
  main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
