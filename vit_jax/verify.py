"""Moved to ``vit_jax.tools.verify``; this file keeps ``python -m vit_jax.verify`` working."""
import runpy

if __name__ == '__main__':
  runpy.run_module('vit_jax.tools.verify', run_name='__main__', alter_sys=True)
