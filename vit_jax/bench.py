"""Moved to ``vit_jax.tools.bench``; this file keeps ``python -m vit_jax.bench`` working."""
import runpy

if __name__ == '__main__':
  runpy.run_module('vit_jax.tools.bench', run_name='__main__', alter_sys=True)
