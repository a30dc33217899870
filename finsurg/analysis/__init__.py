"""TransformerLens analysis, hook surgery, reports and plots."""
