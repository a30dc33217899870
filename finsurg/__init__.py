"""finsurg: find residual-stream steering directions, apply them as hooks, bake them into weights."""

__version__ = "0.1.0"
