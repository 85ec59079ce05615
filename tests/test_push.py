"""``llmprune push`` against a stand-in for the Hub on 127.0.0.1: uploads, card, and errors.

The server answers the endpoints huggingface_hub calls for create_repo + create_commit:
POST /api/repos/create, /api/models/{repo}/branch/{rev}, /api/validate-yaml,
/api/models/{repo}/preupload/{rev} (every file "regular", so contents travel inside the
commit) and /api/models/{repo}/commit/{rev} (NDJSON). Nothing touches the real network.
"""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import yaml

from io_helpers import prune_24, report_for, tiny_llama
from llmprune.cli import main
from llmprune.errors import LLMPruneError
from llmprune.io.hub import push_folder
from llmprune.io.writer import save_pruned_model


class FakeHub:
    """Records what arrives; ``fail_with`` makes every answer that HTTP status."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self.created: list[dict] = []
        self.commits: list[dict] = []
        self.fail_with: int | None = None
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def answer(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path, dict(self.headers)))
                self.answer(hub.fail_with or 404, {"error": "not found"})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(("POST", self.path, dict(self.headers)))
                if hub.fail_with:
                    return self.answer(hub.fail_with, {"error": f"status {hub.fail_with}"})
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    hub.created.append(payload)
                    return self.answer(200, {"url": f"{hub.url}/{payload['organization']}/{payload['name']}"})
                if path == "/api/validate-yaml":
                    return self.answer(200, {"errors": [], "warnings": []})
                if "/branch/" in path:
                    return self.answer(200, {})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self.answer(200, {"files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
                    ]})
                if "/commit/" in path:
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    files = {
                        item["value"]["path"]: base64.b64decode(item["value"]["content"])
                        for item in lines if item["key"] == "file"
                    }
                    repo, _, revision = path.removeprefix("/api/models/").rpartition("/commit/")
                    hub.commits.append({"repo": repo, "revision": revision, "header": lines[0], "files": files})
                    return self.answer(200, {"commitUrl": f"{hub.url}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
                return self.answer(404, {"error": f"unexpected {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def paths(self) -> list[str]:
        return [path.split("?")[0] for _, path, _ in self.requests]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    fake = FakeHub()
    fake.thread.start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    # conftest sets HF_HUB_OFFLINE for the other tests; these talk to a local server only
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def folder(tmp_path) -> Path:
    model = tiny_llama(torch.bfloat16)
    layers = prune_24(model)
    report = report_for(
        layers, "2:4", method="wanda", model="llama",
        calibration={"source": "wikipedia", "nsamples": 8, "seqlen": 64, "seed": 3},
        eval={"ppl_before": 14.4, "ppl_after": 21.25, "dataset": "wikipedia:test"},
    )
    return save_pruned_model(model, None, tmp_path / "pruned", report, save_format="sparse")


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_push_uploads_folder_and_card_in_one_commit(hub, folder):
    local = {p.name: p.read_bytes() for p in folder.iterdir()}
    url = push_folder(folder, "me/tiny-24", private=True)
    assert url == f"{hub.url}/me/tiny-24"
    assert len(hub.created) == 1
    assert {k: hub.created[0].get(k) for k in ("name", "organization", "visibility")} == {
        "name": "tiny-24", "organization": "me", "visibility": "private"}
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert commit["repo"] == "me/tiny-24" and commit["revision"] == "main"
    assert set(commit["files"]) == set(local) | {"README.md"}
    for name, content in local.items():
        assert commit["files"][name] == content, name
    assert all(headers.get("authorization") == "Bearer hf_test_token" for _, _, headers in hub.requests)

    card = commit["files"]["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["library_name"] == "transformers"
    assert {"pruned", "sparse", "wanda", "2:4"} <= set(meta["tags"])
    assert "| calibration samples x length | 8 x 64 tokens |" in card
    assert "| perplexity before pruning | 14.4 |" in card and "| perplexity after pruning | 21.25 |" in card
    assert 'load_pretrained(snapshot_download("me/tiny-24"))' in card
    # the card is kept locally once the push succeeded
    assert (folder / "README.md").read_text() == card


def test_existing_card_is_kept_and_revision_branch_is_created(hub, folder):
    (folder / "README.md").write_text("my own card\n")
    url = push_folder(folder, "me/tiny-24", revision="sparse")
    assert url.endswith("/me/tiny-24/tree/sparse")
    assert "/api/models/me/tiny-24/branch/sparse" in hub.paths()
    assert hub.commits[0]["revision"] == "sparse"
    assert hub.commits[0]["files"]["README.md"] == b"my own card\n"


def test_dry_run_lists_files_and_sends_nothing(hub, folder, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")  # a dry run needs no token
    before = snapshot(folder)
    assert main(["push", str(folder), "--repo-id", "me/tiny-24", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would push 5 files to me/tiny-24" in out
    for name in ("model.safetensors", "config.json", "llmprune_report.json", "README.md"):
        assert name in out
    assert hub.requests == []
    assert snapshot(folder) == before


@pytest.mark.parametrize("status, message", [
    (401, "the Hub refused the token (401 Unauthorized)"),
    (403, "no write access to me/tiny-24 (403 Forbidden)"),
    (500, "the Hub failed with 500 (server error)"),
])
def test_http_errors_give_one_line_and_leave_the_folder_alone(hub, folder, capsys, status, message):
    hub.fail_with = status
    before = snapshot(folder)
    assert main(["push", str(folder), "--repo-id", "me/tiny-24"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"llmprune: error: {message}")
    assert err.count("\n") == 1
    assert snapshot(folder) == before
    assert hub.commits == []


def test_no_token_is_a_clear_error(hub, folder, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(LLMPruneError, match="no Hugging Face token: set HF_TOKEN"):
        push_folder(folder, "me/tiny-24")
    assert hub.requests == []


def test_no_network_is_a_clear_error(hub, folder, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    before = snapshot(folder)
    with pytest.raises(LLMPruneError, match=f"cannot reach the Hub at {dead}"):
        push_folder(folder, "me/tiny-24")
    assert snapshot(folder) == before


def test_offline_mode_is_named(hub, folder, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LLMPruneError, match="HF_HUB_OFFLINE is set"):
        push_folder(folder, "me/tiny-24")


def test_bad_input_is_refused_before_any_request(hub, folder, tmp_path):
    with pytest.raises(LLMPruneError, match="bad repository id"):
        push_folder(folder, "me/bad name")
    with pytest.raises(LLMPruneError, match="not a model folder"):
        push_folder(tmp_path / "nowhere", "me/tiny-24")
    assert hub.requests == []
