"""Checks of a written variant: verification against the hooks, vLLM, lm-eval."""
