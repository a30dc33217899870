"""The bake of a recipe into bias tensors, and the writer that streams a variant's tensors."""
