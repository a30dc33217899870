"""The variant directory format: its file names, the base record every report builds on, and the surgery record.

A variant directory holds the weights and config that transformers and vLLM load, plus
`finsurg_surgery.json` (what was done to which base), `finsurg_offsets.safetensors` (the exact
offsets baked in), any reports the checks wrote, the model card and `SHA256SUMS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from finsurg.errors import FinsurgError
from finsurg.jsonfile import read_json, validation_message
from finsurg.packs import CardWording
from finsurg.steer.findings import Findings
from finsurg.steer.recipe import RecipeSpec

SURGERY_NAME = "finsurg_surgery.json"


OFFSETS_NAME = "finsurg_offsets.safetensors"


VERIFICATION_NAME = "verification.json"


VLLM_REPORT_NAME = "verification_vllm.json"


LLAMACPP_REPORT_NAME = "verification_llamacpp.json"


EVAL_NAME = "eval.json"


CROSSTALK_NAME = "crosstalk.json"  # a bundle's: each behaviour in it against its recipe alone


CARD_NAME = "README.md"


PLOTS_DIR = "plots"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseModelInfo(Record):
    name: str
    source: str
    path: str
    architecture: str
    hub_id: str | None = None
    license: str | None = None
    files: dict[str, str]  # weight file name -> SHA256
    gguf: str | None = None  # the GGUF the base was converted from, where it was one (llama.cpp exports start there)
    gguf_sha256: str | None = None


class BundledBehaviour(Record):
    """One behaviour of a bundle, as its variant baked it."""

    name: str
    alpha: float
    recipe: RecipeSpec
    recipe_origin: str
    steering_vectors_sha256: str | None
    card: CardWording = CardWording()
    behaviour: Findings | None = None
    disclaimer: str


class SurgeryRecord(Record):
    format: Literal["finsurg.surgery/1"] = "finsurg.surgery/1"
    finsurg_version: str
    variant: str
    alpha: float
    dtype: str
    baked_into: str
    site: str = "layer_output"
    rewritten_as: str | None = None  # the variant's architecture, when the bake rewrote the base's
    context_cap: int | None = None  # max_position_embeddings lowered to a sliding window (--cap-context)
    base_model: BaseModelInfo
    recipe: RecipeSpec
    recipe_origin: str
    steering_vectors_sha256: str | None
    card: CardWording = CardWording()
    # from the analysis that derived the recipe: held-out effects at alpha ±3, the prompting baseline, examples
    behaviour: Findings | None = None  # Findings.summary()
    disclaimer: str  # a bundle's: each behaviour's, once
    # a bundle of several behaviours: every one of them (the top-level fields above repeat the first)
    bundle: list[BundledBehaviour] = []


def read_record(path: Path, kind: type[Record], missing: str) -> Record:
    try:
        return kind.model_validate(read_json(path, missing))
    except ValidationError as exc:
        raise FinsurgError(f"{path}: {validation_message(exc, path.name)}") from None
