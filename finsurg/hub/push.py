"""Upload variant directories to the Hugging Face Hub (or any Hub-compatible server).

`create_repo(exist_ok=True)` then `upload_folder`; never `ModelCard.push_to_hub`, which posts to a
hard-coded validation URL. The token comes from huggingface_hub's usual sources (HF_TOKEN, the
saved login) and is never printed, logged or written.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from finsurg import __version__
from finsurg.errors import FinsurgError
from finsurg.io.hashing import check_sums, sealed_files
from finsurg.variant.card import repo_name
from finsurg.variant.directory import Variant
from finsurg.variant.record import SurgeryRecord
from finsurg.variant.seal import seal


def check_repo_id(repo_id: str, what: str = "repo id") -> str:
    """huggingface_hub's own rules, plus the namespace/name form that a model upload needs."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise FinsurgError(f"invalid {what} {repo_id!r}: expected namespace/name") from None
    if repo_id.count("/") != 1:
        raise FinsurgError(f"invalid {what} {repo_id!r}: expected namespace/name")
    return repo_id


def default_repo_id(directory: Path, namespace: str) -> str:
    return f"{namespace}/{repo_name(Variant(directory).record)}"


def checked(directory: Path, repo_id: str) -> tuple[SurgeryRecord, dict[str, str]]:
    """The variant's surgery record and verified SHA256SUMS: a damaged variant is never uploaded."""
    check_repo_id(repo_id)
    return Variant(directory).record, check_sums(directory)


def plan(directory: Path, repo_id: str, private: bool, endpoint: str) -> dict:
    """What an upload sends where."""
    files = [
        {"path": name, "bytes": (directory / name).stat().st_size} for name in sealed_files(directory) + ["SHA256SUMS"]
    ]
    return {
        "directory": str(directory),
        "repo_id": repo_id,
        "url": f"{endpoint.rstrip('/')}/{repo_id}",
        "private": private,
        "files": sorted(files, key=lambda f: f["path"]),
    }


def push(directory: Path, repo_id: str, private: bool = False, dry_run: bool = False) -> dict:
    """Re-render the card with the repo id, reseal, and upload the whole directory in one commit."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    api = HfApi()
    surgery, sums = checked(directory, repo_id)
    if dry_run:
        return plan(directory, repo_id, private, api.endpoint) | {"dry_run": True}
    seal(directory, known=sums, repo_id=repo_id)
    upload = plan(directory, repo_id, private, api.endpoint)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(directory),
            repo_id=repo_id,
            repo_type="model",
            commit_message=f"finsurg {__version__}: {surgery.variant} variant, alpha {surgery.alpha:+g}",
        )
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = " (log in with `hf auth login` or set HF_TOKEN)" if status in (401, 403) else ""
        raise FinsurgError(f"upload of {directory} to {repo_id} failed: HTTP {status}{hint}") from None
    except LocalTokenNotFoundError:
        raise FinsurgError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN") from None
    except Exception as exc:  # the transport raises its own HTTP client's types: an unreachable server
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise FinsurgError(f"cannot upload to {api.endpoint}: {reason}") from None
    return upload | {"dry_run": False, "commit": getattr(commit, "oid", None)}
