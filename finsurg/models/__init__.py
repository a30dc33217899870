"""Resolving and loading a model: an alias, a directory, a GGUF file, a pickle checkpoint or a Hub id."""
