"""Moved to ``vit_jax.tools.compare``; this file keeps ``python -m vit_jax.compare`` working."""
import runpy

if __name__ == '__main__':
  runpy.run_module('vit_jax.tools.compare', run_name='__main__', alter_sys=True)
