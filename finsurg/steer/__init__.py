"""Recipes, architecture descriptors and the offset hooks: what a surgery is and where it lands."""
