"""Pushing a model folder to the Hugging Face Hub in one commit, with a model card.

The card is generated in memory and uploaded with the weights; it is written into the
local folder only once the push succeeded, so a failed push (no network, no token, 401,
403, 5xx) leaves the folder exactly as it was.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..errors import LLMPruneError
from .card import CARD_NAME, make_card


def _network_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub talks through httpx (renamed httpx2 in recent releases): both are
    # looked up so a connection failure is recognised whichever one is installed.
    found: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def upload_files(folder: str | Path) -> list[Path]:
    """Files that a push uploads: everything but hidden files and folders (.git, .cache, temp files)."""
    folder = Path(folder)
    return sorted(
        path.relative_to(folder)
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def endpoint() -> str:
    # Read at call time: huggingface_hub reads HF_ENDPOINT once at import, which may
    # have happened before the caller (or a test) set it.
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def resolve_token(token: str | None = None) -> str:
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()  # HF_TOKEN, then the token saved by `hf auth login`
    if not found:
        raise LLMPruneError("no Hugging Face token: set HF_TOKEN or run 'hf auth login' (or use --dry-run)")
    return found


def _explain(exc: BaseException, repo_id: str) -> LLMPruneError:
    """One line a user can act on, from whatever the hub client raised."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401:
            return LLMPruneError(f"the Hub refused the token (401 Unauthorized) for {repo_id}: check HF_TOKEN or run 'hf auth login'")
        if status == 403:
            return LLMPruneError(f"no write access to {repo_id} (403 Forbidden): the token needs write permission on that namespace")
        if status >= 500:
            return LLMPruneError(f"the Hub failed with {status} (server error) while pushing {repo_id}; nothing was changed, try again later")
        detail = str(exc).splitlines()[0]
        return LLMPruneError(f"the Hub answered {status} while pushing {repo_id}: {detail}")
    if isinstance(exc, ValueError):  # the client's own checks, e.g. card metadata the Hub rejects
        return LLMPruneError(f"push to {repo_id} failed: {str(exc).splitlines()[0]}")
    if isinstance(exc, OfflineModeIsEnabled):
        return LLMPruneError("cannot push: HF_HUB_OFFLINE is set (unset it to reach the Hub)")
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return LLMPruneError(f"cannot reach the Hub at {endpoint()}: {reason}")


def describe_plan(folder: Path, files: list[Path], card: str | None, repo_id: str, revision: str | None) -> str:
    lines = [f"would push {len(files) + (card is not None)} files to {repo_id}" + (f" (revision {revision})" if revision else "") + ":"]
    total = 0
    for rel in files:
        size = (folder / rel).stat().st_size
        total += size
        lines.append(f"  {rel.as_posix():<40} {size / 2**20:10.2f} MiB")
    if card is not None:
        total += len(card.encode())
        lines.append(f"  {CARD_NAME:<40} {len(card.encode()) / 2**20:10.2f} MiB  (model card, generated)")
    lines.append(f"  total {total / 2**20:.2f} MiB")
    return "\n".join(lines)


def push_folder(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    commit_message: str | None = None,
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` in one commit; returns the repository URL.

    With ``dry_run`` nothing is sent: the files that would be uploaded are printed.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise LLMPruneError(f"{folder} is not a model folder (no config.json)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise LLMPruneError(f"bad repository id '{repo_id}': {str(exc).splitlines()[0]}") from None
    files = upload_files(folder)
    card = None if (folder / CARD_NAME).is_file() else make_card(folder, repo_id=repo_id)
    url = f"{endpoint()}/{repo_id}" + (f"/tree/{revision}" if revision else "")
    if dry_run:
        print(describe_plan(folder, files, card, repo_id, revision))
        return url
    token = resolve_token(token)

    from huggingface_hub import CommitOperationAdd, HfApi

    operations = [CommitOperationAdd(path_in_repo=rel.as_posix(), path_or_fileobj=str(folder / rel)) for rel in files]
    if card is not None:
        operations.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card.encode("utf-8")))
    api = HfApi(endpoint=endpoint(), token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        # create_commit rather than upload_folder: upload_folder may split a large folder
        # into several commits, and a pushed model should appear (or not) as a whole.
        api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload {folder.name} with llmprune",
            revision=revision,
            repo_type="model",
        )
    except LLMPruneError:
        raise
    except (ValueError, *_network_errors()) as exc:
        raise _explain(exc, repo_id) from None
    if card is not None:
        (folder / CARD_NAME).write_text(card, encoding="utf-8")
    return url
