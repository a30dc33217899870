"""Streaming safetensors I/O, shard copying, and the bake of a recipe into bias tensors."""
