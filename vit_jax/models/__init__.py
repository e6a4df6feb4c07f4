"""The model wing. To see how exact reversible backprop works, read in this order:

  variants.py     each stack as couplings a' = forward(a, b, h(b)) with their inverses
                  a = inverse(a', b, h(b), side): BDIA's and the momentum net's are here
  reversible.py   the one engine: a custom VJP over the stack that rebuilds each block's
                  input from its output and back-propagates, block by block
  quant.py        the exact grid arithmetic: quantizer, parity and shrink side bits

and then the network around it:

  vit.py          the ViT (patch embedding, the stack, the head); ``build(config)``
  layers.py       shifted patch tokenization, locality self-attention, the block
  fixed_order.py  LayerNorm and softmax summed in a fixed order, so that the backward
                  pass recomputes each branch bit for bit
  original_state_dict.py  the PyTorch original's parameter names <-> the params tree
"""
