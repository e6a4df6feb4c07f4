"""The PyTorch original's ``state_dict`` names <-> vit-jax's params tree, both ways.

The original (CarlYoungq/ResearchProj) has counterparts for three variants:

* ``vit`` and ``remat``: ``models/vit_small.py`` (the same function; remat only changes
  what the backward pass keeps);
* ``bdia``: ``models/vit_small_inv_BDIA.py``, whose attention has separate ``to_q``,
  ``to_k``, ``to_v`` projections, fused here into one ``to_qkv`` (q, k, v in that order,
  heads major within each, as the original's ``rearrange('b n (h d) -> b h n d')``).

``revvit`` (two streams, the head reads both) and ``momentum`` (a velocity stream) have
no counterpart: the original's ``vit_small_reverse.py`` is a one-stream ViT with a
hand-written backward pass, and its momentum model was left unfinished.

A torch ``nn.Linear`` stores its weight as [out, in]; a Flax ``Dense`` kernel is
[in, out]: every linear weight is transposed. Blocks are stacked on a leading axis here
(``params['blocks']``) and numbered in the original. Both directions check that every
tensor is used exactly once and every leaf filled exactly once (``MappingError`` names
what is left over on either side); a ``module.`` prefix (``nn.DataParallel``) is dropped.
"""
from typing import Callable, Mapping, NamedTuple

import numpy as np

VARIANTS = ('vit', 'remat', 'bdia')
_T = lambda w: np.asarray(w).T  # torch Linear [out, in] <-> Dense kernel [in, out]
_ID = np.asarray


class MappingError(ValueError):
  """The state_dict and the params tree do not correspond one to one."""


class Entry(NamedTuple):
  path: tuple              # the leaf in params
  names: tuple             # the original's tensors ('{k}': the block number)
  to_jax: Callable         # [tensors] -> leaf (one block's slice for a block entry)
  to_torch: Callable       # leaf -> [tensors]
  per_block: bool = False


def _one(path, name, f=_ID, per_block=False):
  return Entry(path, (name,), lambda ts: f(ts[0]), lambda leaf: [f(leaf)], per_block)


def entries(variant: str) -> list[Entry]:
  """The correspondence for ``variant``: one Entry per leaf of the params tree."""
  if variant not in VARIANTS:
    raise MappingError(f'model.variant={variant!r} has no counterpart in the original '
                       f'(it has {", ".join(VARIANTS)}); revvit and momentum are vit-jax\'s own')
  spt, head = 'to_patch_embedding.to_patch_tokens', 'mlp_head'
  out = [
      _one(('ShiftedPatchEmbedding_0', 'LayerNorm_0', 'scale'), f'{spt}.1.weight'),
      _one(('ShiftedPatchEmbedding_0', 'LayerNorm_0', 'bias'), f'{spt}.1.bias'),
      _one(('ShiftedPatchEmbedding_0', 'Dense_0', 'kernel'), f'{spt}.2.weight', _T),
      _one(('ShiftedPatchEmbedding_0', 'Dense_0', 'bias'), f'{spt}.2.bias'),
      _one(('cls_token',), 'cls_token'),
      _one(('pos_embedding',), 'pos_embedding'),
      _one(('LayerNorm_0', 'scale'), f'{head}.0.weight'),
      _one(('LayerNorm_0', 'bias'), f'{head}.0.bias'),
      _one(('Dense_0', 'kernel'), f'{head}.1.weight', _T),
      _one(('Dense_0', 'bias'), f'{head}.1.bias'),
  ]
  blk = 'layers.{k}.block' if variant == 'bdia' else 'transformer.layers.{k}'
  b = lambda *p: ('blocks',) + p
  out += [_one(b('attn_norm', 'scale'), f'{blk}.0.norm.weight', per_block=True),
          _one(b('attn_norm', 'bias'), f'{blk}.0.norm.bias', per_block=True),
          _one(b('attn', 'temperature'), f'{blk}.0.fn.temperature', per_block=True),
          _one(b('attn', 'to_out', 'kernel'), f'{blk}.0.fn.to_out.0.weight', _T, True),
          _one(b('attn', 'to_out', 'bias'), f'{blk}.0.fn.to_out.0.bias', per_block=True),
          _one(b('mlp_norm', 'scale'), f'{blk}.1.norm.weight', per_block=True),
          _one(b('mlp_norm', 'bias'), f'{blk}.1.norm.bias', per_block=True),
          _one(b('mlp', 'Dense_0', 'kernel'), f'{blk}.1.fn.net.0.weight', _T, True),
          _one(b('mlp', 'Dense_0', 'bias'), f'{blk}.1.fn.net.0.bias', per_block=True),
          _one(b('mlp', 'Dense_1', 'kernel'), f'{blk}.1.fn.net.3.weight', _T, True),
          _one(b('mlp', 'Dense_1', 'bias'), f'{blk}.1.fn.net.3.bias', per_block=True)]
  qkv = b('attn', 'to_qkv', 'kernel')
  if variant == 'bdia':  # q, k, v: three [inner, dim] weights <-> one [dim, 3·inner] kernel
    out.append(Entry(qkv, tuple(f'{blk}.0.fn.to_{p}.weight' for p in 'qkv'),
                     lambda ts: np.concatenate(ts, 0).T,
                     lambda leaf: list(np.split(np.asarray(leaf).T, 3, 0)), per_block=True))
  else:
    out.append(_one(qkv, f'{blk}.0.fn.to_qkv.weight', _T, per_block=True))
  return out


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _leaf_paths(tree, prefix=()):
  if isinstance(tree, Mapping):
    return [q for k in tree for q in _leaf_paths(tree[k], prefix + (k,))]
  return [prefix]


def _left(kind: str, items) -> str:
  items = sorted(items)
  return f'{len(items)} {kind}: {", ".join(items[:6])}{" ..." if len(items) > 6 else ""}'


def to_params(state_dict: Mapping[str, np.ndarray], variant: str, like) -> dict:
  """The params tree (numpy float32) for the original's ``state_dict``.

  ``like``: a params tree of the target model (arrays or ``jax.ShapeDtypeStruct``), for
  the depth and every leaf's shape.
  """
  sd = {k.removeprefix('module.'): np.asarray(v, np.float32) for k, v in state_dict.items()}
  depth = _get(like, ('blocks', 'attn', 'temperature')).shape[0]
  params, used = {}, set()
  for e in entries(variant):
    names = [[n.format(k=k) for n in e.names] for k in (range(depth) if e.per_block else [0])]
    missing = [n for group in names for n in group if n not in sd]
    if missing:
      raise MappingError(f'the state_dict lacks {_left("tensors", missing)} (a {variant} '
                         f'model of depth {depth} needs them)')
    slices = [e.to_jax([sd[n] for n in group]) for group in names]
    leaf = np.stack(slices) if e.per_block else slices[0]
    try:
      want = tuple(_get(like, e.path).shape)
    except (KeyError, TypeError):
      raise MappingError(f'the model has no {"/".join(e.path)} for {", ".join(names[0])} '
                         '(an attention with one head of dim_head = dim has no to_out)') from None
    if leaf.shape != want:
      raise MappingError(f'{"/".join(e.path)}: the state_dict gives shape {leaf.shape} '
                         f'({", ".join(names[0])}), the model has {want}: check the config')
    node = params
    for p in e.path[:-1]:
      node = node.setdefault(p, {})
    if e.path[-1] in node:
      raise MappingError(f'{"/".join(e.path)} filled twice')
    node[e.path[-1]] = leaf
    used.update(n for group in names for n in group)
  unused = set(sd) - used
  if unused:
    raise MappingError(f'{_left("tensors unused", unused)}: the state_dict belongs to '
                       f'another model or depth')
  unfilled = {'/'.join(p) for p in _leaf_paths(like)} - {'/'.join(p) for p in
                                                         _leaf_paths(params)}
  if unfilled:
    raise MappingError(f'{_left("leaves unfilled", unfilled)}')
  return params


def to_state_dict(params, variant: str) -> dict[str, np.ndarray]:
  """The original's ``state_dict`` (numpy float32 arrays) for a params tree."""
  depth = _get(params, ('blocks', 'attn', 'temperature')).shape[0]
  sd, filled = {}, set()
  for e in entries(variant):
    leaf = np.asarray(_get(params, e.path), np.float32)
    for k, part in enumerate(leaf if e.per_block else [leaf]):
      for name, tensor in zip(e.names, e.to_torch(part)):
        sd[name.format(k=k)] = np.array(tensor, np.float32, order="C")  # 0-d stays 0-d
    filled.add('/'.join(e.path))
  extra = {'/'.join(p) for p in _leaf_paths(params)} - filled
  if extra:
    raise MappingError(f'{_left("leaves with no counterpart", extra)}')
  assert len(sd) == sum(len(e.names) * (depth if e.per_block else 1) for e in entries(variant))
  return sd
