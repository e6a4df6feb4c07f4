"""Moved to ``vit_jax.tools.report``; this file keeps ``python -m vit_jax.report`` working."""
import runpy

if __name__ == '__main__':
  runpy.run_module('vit_jax.tools.report', run_name='__main__', alter_sys=True)
