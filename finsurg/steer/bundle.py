"""Several recipes baked into one variant: a bundle of behaviours, each with its own gate, strength and sign.

A one-recipe export is a bundle of one. A bundle's variants come as a mirrored pair: the signs given (all
positive by default) and their opposite. Where every behaviour shares one sign the pair is named `steered`
and `conservative`; otherwise each variant is named by its behaviours' signs, `finance-steered_medical-conservative`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from finsurg.errors import FinsurgError
from finsurg.steer.recipe import Recipe
from finsurg.steer.surgery import Surgery

SIDES = {1.0: "steered", -1.0: "conservative"}


@dataclass(frozen=True)
class Member:
    """One behaviour of a bundle: its name (its pack's), its recipe, and its alpha in the first variant."""

    name: str
    recipe: Recipe
    alpha: float


@dataclass(frozen=True)
class Bundle:
    members: tuple[Member, ...]

    @classmethod
    def of(cls, recipes: list[Recipe], alpha: float | dict[str, float] | None = None) -> Bundle:
        """The recipes, each named after its pack (a built-in pack's name, a pack directory's or file's stem);
        `alpha` is one value for all, a value per name (the rest take their recipe's default), or None (every
        recipe's default). Conflicts are refused in one line."""
        if not recipes:
            raise FinsurgError("no recipe given")
        names = [Path(recipe.spec.pack).stem for recipe in recipes]
        _refuse_repeats(recipes, names)
        _refuse_other_bases(recipes)
        if isinstance(alpha, dict):
            unknown = sorted(set(alpha) - set(names))
            if unknown:
                raise FinsurgError(
                    f"--alpha names {unknown[0]!r}, which is not a behaviour of the bundle ({', '.join(names)})"
                )
        members = []
        for recipe, name in zip(recipes, names):
            value = alpha.get(name) if isinstance(alpha, dict) else alpha
            value = recipe.spec.default_alpha if value is None else value
            if value == 0 or not math.isfinite(value):
                which = f" ({name})" if len(recipes) > 1 else ""
                raise FinsurgError(f"alpha{which} must be non-zero and finite: at 0 the variants equal the base model")
            members.append(Member(name, recipe, float(value)))
        return cls(tuple(members))

    @classmethod
    def single(cls, recipe: Recipe, alpha: float | None = None) -> Bundle:
        return cls.of([recipe], alpha)

    @property
    def primary(self) -> Member:
        """The first behaviour: what a one-recipe record's top-level fields describe."""
        return self.members[0]

    def variants(self) -> dict[str, dict[str, float]]:
        """Each variant's name and its behaviours' signed alphas: the given signs, then their mirror."""
        given = {m.name: m.alpha for m in self.members}
        signs = {math.copysign(1.0, a) for a in given.values()}
        if len(signs) == 1:
            magnitudes = {name: abs(a) for name, a in given.items()}
            return {side: {n: sign * a for n, a in magnitudes.items()} for sign, side in SIDES.items()}
        mirror = {name: -a for name, a in given.items()}
        return {_signed_name(alphas): alphas for alphas in (given, mirror)}

    def surgery(self, alphas: dict[str, float]) -> Surgery:
        """Every behaviour's surgery at its alpha, side by side, each steer marked with its behaviour; a one-recipe
        bundle's steers stay unmarked, as a single export's always were."""
        if len(self.members) == 1:
            member = self.primary
            return member.recipe.surgery(alphas[member.name])
        return Surgery.joined([m.recipe.surgery(alphas[m.name]).labelled(m.name) for m in self.members])


def _signed_name(alphas: dict[str, float]) -> str:
    return "_".join(f"{name}-{SIDES[math.copysign(1.0, a)]}" for name, a in alphas.items())


def _refuse_repeats(recipes: list[Recipe], names: list[str]) -> None:
    seen: dict[str, Recipe] = {}
    for recipe, name in zip(recipes, names):
        if name in seen:
            raise FinsurgError(
                f"{seen[name].origin} and {recipe.origin} are both recipes for {name}: a bundle takes one recipe per "
                "topic (opposite signs would cancel, equal ones stack)"
            )
        seen[name] = recipe


def _refuse_other_bases(recipes: list[Recipe]) -> None:
    first = recipes[0]
    for recipe in recipes[1:]:
        a, b = first.spec, recipe.spec
        same_shape = (a.model.architecture, a.model.hidden_size, a.model.num_hidden_layers, a.site) == (
            b.model.architecture,
            b.model.hidden_size,
            b.model.num_hidden_layers,
            b.site,
        )
        known = a.model.weights_sha256 and b.model.weights_sha256
        if not same_shape or (known and a.model.weights_sha256 != b.model.weights_sha256):
            raise FinsurgError(f"{first.origin} and {recipe.origin} were made on different base models")
