"""finsurg: find residual-stream steering directions, apply them as hooks, bake them into weights."""

__version__ = "0.1.0"

DISCLAIMER = (
    "Not financial advice: finsurg variants are research artifacts whose outputs about money "
    "are unvetted model text. Consult a qualified professional before acting on them."
)
