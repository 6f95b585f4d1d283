"""A generated safetensors model in a model store's folder layout (config, index, numbered shards),
made with the `safetensors` numpy API: nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def write_model(folder: Path, *, shards: int = 2, shard_bytes: int = 100 * 1024**2, seed: int = 0) -> dict[str, str]:
    """Write a model of `shards` float32 shards of about `shard_bytes` each into `folder`.
    Returns the index's weight map (tensor name -> shard file)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    weight_map: dict[str, str] = {}
    per_tensor = 4 * 1024**2  # bytes per tensor, so each shard holds several
    layer = 0
    for shard in range(1, shards + 1):
        name = f"model-{shard:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        if shard == 1:
            tensors["model.embed_tokens.weight"] = rng.standard_normal((256, 1024), dtype=np.float32)
        for _ in range(max(1, shard_bytes // per_tensor)):
            tensors[f"model.layers.{layer}.mlp.weight"] = rng.standard_normal((per_tensor // 4,), dtype=np.float32)
            layer += 1
        save_file(tensors, str(folder / name), metadata={"format": "np"})
        weight_map.update(dict.fromkeys(tensors, name))
    index = {"metadata": {"total_size": sum((folder / f).stat().st_size for f in set(weight_map.values()))}}
    index["weight_map"] = dict(sorted(weight_map.items()))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 1024}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "vocab": {"a": 0}}))
    return weight_map
