"""Atomic checkpoints of nested run state, in one safetensors file (never unpickled).

Nested dicts/lists/tuples of tensors and JSON scalars (optimizer states, metrics tables, per-client
personal states) are flattened into a tensor table plus a JSON "skeleton" stored in the
safetensors header. Writing goes to ``<path>.tmp`` then ``os.replace``: a reader sees the old
checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fedalign_lite.errors import CheckpointError


def flatten(obj, tensors: dict, prefix: str = "t"):
    """JSON skeleton of ``obj``; its tensors are moved into ``tensors`` under generated keys."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": flatten(torch.from_numpy(np.ascontiguousarray(obj)), tensors, prefix)}
    if isinstance(obj, dict):   # keys kept with their types (optimizer states use int keys)
        return {"__dict__": [[k, flatten(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__tuple__" if isinstance(obj, tuple) else "__list__": [flatten(v, tensors, prefix) for v in obj]}
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}; use tensors, arrays, dicts, lists or scalars")


def unflatten(skel, tensors: dict):
    if isinstance(skel, dict):
        if "__tensor__" in skel:
            return tensors[skel["__tensor__"]]
        if "__ndarray__" in skel:
            return unflatten(skel["__ndarray__"], tensors).numpy()
        if "__dict__" in skel:
            return {(tuple(k) if isinstance(k, list) else k): unflatten(v, tensors) for k, v in skel["__dict__"]}
        if "__tuple__" in skel:
            return tuple(unflatten(v, tensors) for v in skel["__tuple__"])
        return [unflatten(v, tensors) for v in skel["__list__"]]
    return skel


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` atomically to ``path`` (a ``.safetensors`` file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict = {}
    skeleton = json.dumps(flatten(state, tensors))
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata={"skeleton": skeleton, "format": "fedalign-checkpoint-1"})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is truncated, corrupted, or not a fedalign checkpoint.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != "fedalign-checkpoint-1":
            raise CheckpointError(f"{path} is not a fedalign checkpoint (format={meta.get('format')!r})")
        return unflatten(json.loads(meta["skeleton"]), tensors)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated ({type(e).__name__}: {e}); "
                              f"delete it or pass resume=False to start over") from e
