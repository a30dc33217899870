"""Checkpoint reading and writing: safetensors, shard copies and reflinks, GGUF, the lazy piece loader,
hashes and atomic directories. It knows nothing of recipes, packs or variants."""
