"""The surgery recipe: which residual dimensions to shift, at which layers, and by how much.

offset_L(alpha) = alpha * (sum_n coefficient_n * e_{index_n} + steering.coefficient * steering.{L})

A conditional recipe (format 2) also holds a topic condition per steered layer, and its offset is
added only as far as the condition's gate opens (finsurg.steer.graft). Format 1 recipes are read as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, FiniteFloat, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from finsurg.errors import FinsurgError
from finsurg.jsonfile import read_json, validation_message
from finsurg.options import finite_alpha
from finsurg.steer.arch import for_config
from finsurg.steer.graft import Gate
from finsurg.steer.surgery import Surgery

RECIPE_FORMAT = "finsurg.recipe/1"
CONDITIONAL_FORMAT = "finsurg.recipe/2"  # a recipe with a topic condition
RECIPE_FORMATS = (RECIPE_FORMAT, CONDITIONAL_FORMAT)
RECIPE_NAME = "recipe.json"
STEERING_NAME = "steering_vectors.safetensors"
CONDITION_NAME = "condition.safetensors"
ANALYSIS_NAME = "mech_interp_results.json"  # beside a derived recipe: the analysis that made it


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NeuronSpec(_Strict):
    index: NonNegativeInt
    coefficient: FiniteFloat
    role: str = ""


class SteeringSpec(_Strict):
    """file=None records the coefficient of a steering term whose vectors were not published."""

    file: str | None
    coefficient: FiniteFloat


class ConditionSpec(_Strict):
    """Where the gate opens at each steered layer L: z = sharpness_L · (condition.{L} · x̂ − threshold_L), read on
    the MLP's normed input x̂; `file` holds each layer's unit direction (float32)."""

    file: str
    thresholds: dict[NonNegativeInt, FiniteFloat]
    sharpness: dict[NonNegativeInt, PositiveFloat]
    read_at: Literal["mlp_input"] = "mlp_input"


class ModelSpec(_Strict):
    architecture: str
    hidden_size: PositiveInt
    num_hidden_layers: PositiveInt
    weights_sha256: str | None = None  # of the base's weight files' SHA256 sums, where the analysis recorded it


class DirectionSpec(_Strict):
    """How the steering vectors were found (finsurg.analysis.directions)."""

    method: Literal["seed", "caa", "pca"] = "seed"
    positions: str = "last_prompt"


class TuningSpec(_Strict):
    """The tuning trial the recipe's alpha 3 lands on, and its objectives on the tune split."""

    kl_budget: FiniteFloat
    trials: PositiveInt
    seed: int
    trial: NonNegativeInt
    strength: FiniteFloat
    shift_up: FiniteFloat
    shift_down: FiniteFloat
    kl: FiniteFloat
    split: str = "tune"
    route: Literal["unconditional", "conditional"] = "unconditional"
    route_flag: Literal["auto", "unconditional", "conditional"] = "auto"  # what --route asked for
    off_topic_budget: FiniteFloat | None = None
    prose_budget: FiniteFloat | None = None


class RecipeSpec(_Strict):
    format: Literal[RECIPE_FORMATS]  # type: ignore[valid-type]
    model: ModelSpec
    layers: list[NonNegativeInt]
    neurons: list[NeuronSpec] = []
    steering: SteeringSpec | None = None
    default_alpha: FiniteFloat = 3.0
    description: str = ""
    pack: str = "finance"  # the behaviour pack it was made from: a built-in name or a directory
    site: str = "layer_output"  # where the offsets are added (finsurg.steer.arch: a family's site)
    direction: DirectionSpec = DirectionSpec()
    tuning: TuningSpec | None = None
    condition: ConditionSpec | None = None


@dataclass
class Recipe:
    spec: RecipeSpec
    vectors: dict[int, torch.Tensor] = field(default_factory=dict)
    conditions: dict[int, torch.Tensor] = field(default_factory=dict)  # unit directions, by layer
    origin: str = ""
    source_dir: Path | None = None  # where recipe.json was read; an analysis run keeps its plots there

    def __post_init__(self) -> None:
        self._check_consistent()

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Load recipe.json (or a directory holding it) and its steering vectors."""
        path = Path(path)
        if path.is_dir():
            path = path / RECIPE_NAME
        raw = read_json(path, f"recipe not found: {path}")
        recipe = cls.from_dict(raw, base_dir=path.parent, origin=str(path))
        recipe.source_dir = path.parent
        return recipe

    @classmethod
    def from_dict(cls, raw: object, base_dir: Path | None = None, origin: str = "") -> Recipe:
        label = origin or "recipe"
        if not isinstance(raw, dict):
            raise FinsurgError(f"{label}: a recipe is a JSON object")
        if raw.get("format") not in RECIPE_FORMATS:
            raise FinsurgError(
                f"{label}: unsupported recipe format {raw.get('format')!r} (this finsurg reads "
                f"{' and '.join(RECIPE_FORMATS)})"
            )
        try:
            spec = RecipeSpec.model_validate(raw)
        except ValidationError as exc:
            raise FinsurgError(f"{label}: {validation_message(exc)}") from None
        files = {"steering": spec.steering and spec.steering.file, "condition": spec.condition and spec.condition.file}
        loaded: dict[str, dict] = {"steering": {}, "condition": {}}
        for prefix, name in files.items():
            if name is not None:
                if base_dir is None:
                    raise FinsurgError(f"{label}: its {prefix} vectors need the recipe's directory")
                loaded[prefix] = _load_vectors(base_dir / name, label, prefix)
        return cls(spec=spec, vectors=loaded["steering"], conditions=loaded["condition"], origin=origin)

    @classmethod
    def preset(cls, name: str) -> Recipe:
        folder = resources.files("finsurg") / "data" / "recipes" / name
        if not folder.is_dir():
            raise FinsurgError(f"no built-in recipe named {name!r} (built in: {', '.join(preset_names())})")
        with resources.as_file(folder) as directory:
            recipe = cls.load(directory)
        recipe.origin = f"preset:{name}"
        return recipe

    # ---- checks -------------------------------------------------------------------------
    def _check_consistent(self) -> None:
        spec, label = self.spec, self.origin or "recipe"
        hidden, depth = spec.model.hidden_size, spec.model.num_hidden_layers
        if not spec.layers:
            raise FinsurgError(f"{label}: layers is empty")
        if len(set(spec.layers)) != len(spec.layers):
            raise FinsurgError(f"{label}: layers repeat")
        for layer in spec.layers:
            if layer >= depth:
                raise FinsurgError(f"{label}: layer {layer} is out of range (the model has {depth} layers)")
        for neuron in spec.neurons:
            if neuron.index >= hidden:
                raise FinsurgError(f"{label}: neuron {neuron.index} is out of range (hidden size {hidden})")
        if not spec.neurons and not self.has_steering:
            raise FinsurgError(f"{label}: no neurons and no steering vectors; the recipe changes nothing")
        if self.has_steering:
            _check_vectors(self.vectors, spec.layers, hidden, label, "steering")
        if (spec.condition is not None) != (spec.format == CONDITIONAL_FORMAT):
            raise FinsurgError(f"{label}: a topic condition goes with format {CONDITIONAL_FORMAT}, and only there")
        if spec.condition is not None:
            _check_vectors(self.conditions, spec.layers, hidden, label, "condition")
            for field_name in ("thresholds", "sharpness"):
                missing = sorted(set(spec.layers) - set(getattr(spec.condition, field_name)))
                if missing:
                    raise FinsurgError(f"{label}: the condition has no {field_name} for layer {missing[0]}")

    def check_model(self, config: dict, where: str = "model") -> None:
        """Refuse a model whose architecture or sizes differ from the ones the recipe was made for."""
        want = self.spec.model
        label = self.origin or "recipe"
        archs = config.get("architectures") or []
        site = for_config(config, where).site
        if self.spec.site != site.name:
            raise FinsurgError(
                f"{label} adds its offsets at the {self.spec.site} site, but {where} ({', '.join(archs)}) can bake "
                f"only its {site.name} site ({site.description})"
            )
        if want.architecture not in archs:
            raise FinsurgError(f"{label} is for {want.architecture}, but {where} is {', '.join(archs) or '?'}")
        if self.conditional:
            for_config(config, where).grafting(label)
        for key in ("hidden_size", "num_hidden_layers"):
            if int(config.get(key, -1)) != getattr(want, key):
                raise FinsurgError(
                    f"{label} is for {key}={getattr(want, key)}, but {where} has {key}={config.get(key)}"
                )

    # ---- the formula --------------------------------------------------------------------
    @property
    def has_steering(self) -> bool:
        return self.spec.steering is not None and self.spec.steering.file is not None

    @property
    def conditional(self) -> bool:
        return self.spec.condition is not None

    @property
    def layers(self) -> list[int]:
        return sorted(self.spec.layers)

    def gates(self) -> dict[int, Gate]:
        """Each steered layer's gate (none for an unconditional recipe); the same at every alpha."""
        condition = self.spec.condition
        if condition is None:
            return {}
        return {
            layer: Gate(
                (condition.sharpness[layer] * self.conditions[layer].double()).float(),
                -condition.sharpness[layer] * condition.thresholds[layer],
            )
            for layer in self.layers
        }

    def offsets(self, alpha: float) -> dict[int, torch.Tensor]:
        """The float32 residual offset added after each steered layer, computed in float64."""
        try:
            alpha = finite_alpha(alpha)
        except ValueError as exc:
            raise FinsurgError(str(exc)) from None
        unit = torch.zeros(self.spec.model.hidden_size, dtype=torch.float64)
        for neuron in self.spec.neurons:
            unit[neuron.index] += neuron.coefficient
        result = {}
        for layer in self.layers:
            total = unit.clone()
            if self.has_steering:
                total += self.spec.steering.coefficient * self.vectors[layer].double()
            result[layer] = (alpha * total).float()
        return result

    def surgery(self, alpha: float) -> Surgery:
        """The recipe at alpha: each steered layer's offset, under its gate where the recipe is conditional."""
        return Surgery.of(self.offsets(alpha), self.gates())

    # ---- output -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return self.spec.model_dump(mode="json", exclude_defaults=False)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / RECIPE_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        for prefix, spec, vectors in (
            ("steering", self.spec.steering, self.vectors),
            ("condition", self.spec.condition, self.conditions),
        ):
            if spec is not None and spec.file is not None:
                tensors = {f"{prefix}.{layer}": vectors[layer].float().contiguous() for layer in self.layers}
                save_file(tensors, directory / spec.file, metadata={"format": "pt"})
        return directory / RECIPE_NAME


def _load_vectors(path: Path, label: str, prefix: str) -> dict[int, torch.Tensor]:
    try:
        raw = load_file(path)
    except FileNotFoundError:
        raise FinsurgError(f"{label}: {prefix} file not found: {path}") from None
    except (SafetensorError, OSError) as exc:
        raise FinsurgError(f"{label}: cannot read {prefix} file {path} ({exc})") from None
    vectors = {}
    for name, tensor in raw.items():
        head, _, layer = name.partition(".")
        if head != prefix or not layer.isdigit():
            raise FinsurgError(f"{label}: unexpected tensor {name!r} in {path.name} (want {prefix}.<layer>)")
        if tensor.dtype != torch.float32:
            raise FinsurgError(f"{label}: {name} is {tensor.dtype}, {prefix} vectors are float32")
        vectors[int(layer)] = tensor
    return vectors


def _check_vectors(vectors: dict[int, torch.Tensor], layers: list[int], hidden: int, label: str, prefix: str) -> None:
    for layer in layers:
        vector = vectors.get(layer)
        if vector is None:
            raise FinsurgError(f"{label}: {prefix} vector {prefix}.{layer} is missing")
        if tuple(vector.shape) != (hidden,):
            raise FinsurgError(
                f"{label}: {prefix}.{layer} has shape {list(vector.shape)}, expected [{hidden}] (the model's hidden size)"
            )
        if not torch.isfinite(vector).all():
            raise FinsurgError(f"{label}: {prefix}.{layer} contains NaN or inf")


def preset_names() -> list[str]:
    root = resources.files("finsurg") / "data" / "recipes"
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir())


def resolve_recipe(spec: str | None, model_name: str, config: dict) -> Recipe:
    """A recipe path or preset name; with none, the built-in recipe that matches the model."""
    if spec:
        recipe = Recipe.preset(spec) if spec in preset_names() and not Path(spec).exists() else Recipe.load(spec)
    else:
        recipe = _default_recipe(model_name, config)
    recipe.check_model(config, model_name)
    return recipe


def _default_recipe(model_name: str, config: dict) -> Recipe:
    for name in preset_names():
        recipe = Recipe.preset(name)
        want = recipe.spec.model
        if (
            want.architecture in (config.get("architectures") or [])
            and want.hidden_size == config.get("hidden_size")
            and want.num_hidden_layers == config.get("num_hidden_layers")
        ):
            return recipe
    raise FinsurgError(
        f"no built-in recipe fits {model_name}; run `finsurg analyze` on it or pass --recipe recipe.json"
    )
