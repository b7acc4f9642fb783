"""Hub names the Hugging Face way, through the real loader and the real huggingface_hub client.

The cache is a folder in huggingface_hub's own layout (models--org--name/blobs, snapshots/<revision>,
refs/main), built here from a saved model. Downloads are tested against a small HTTP server on this
machine that answers as the hub's API does (revision info, resolve URLs with X-Repo-Commit and ETag
headers, X-Error-Code for gated and missing repositories): this machine has no internet.
"""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from workbench import families, hub
from workbench.errors import InputError
from workbench.model import load_model
from workbench.runs import run_tokens

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return families.build("gpt2", tmp_path_factory.mktemp("src") / "tiny", layers=1)


def build_cache(cache: Path, repo: str, source: Path) -> Path:
    """huggingface_hub's cache layout for `repo`: blobs named by content hash, a snapshot of links to them, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    snapshot = root / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for f in source.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        (root / "blobs" / digest).write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", digest))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture
def env(monkeypatch, tmp_path):
    for name in ("WORKBENCH_MODEL_ROOT", hub.ALLOW_ENV, hub.OFFLINE_SWITCH, "HF_ENDPOINT", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return monkeypatch


def _logits(model):
    logits, _ = run_tokens(model, torch.tensor([[0, 5, 9, 3]]))
    return logits


def test_a_cached_hub_name_loads_through_the_real_loader(env, tmp_path, saved):
    snapshot = build_cache(tmp_path / "cache", "testorg/tiny-gpt2", saved)
    model = load_model("testorg/tiny-gpt2")
    assert model.info.kind == "hub cache" and Path(model.info.source) == snapshot
    assert torch.equal(_logits(model), _logits(load_model(str(saved))))


def test_offline_a_missing_name_says_how_to_fetch_it(env, tmp_path):
    with pytest.raises(InputError, match=r"not in the local Hugging Face cache and downloads are off.*hf download testorg/absent"):
        load_model("testorg/absent")
    env.delenv("HF_HUB_OFFLINE")
    env.setenv(hub.OFFLINE_SWITCH, "1")  # the workbench's own switch does the same
    with pytest.raises(InputError, match="downloads are off"):
        load_model("testorg/absent")


class FakeHub(BaseHTTPRequestHandler):
    """Answers as huggingface.co does for one repository; `files` {name: bytes}; `error` (status, X-Error-Code) for every call."""

    files: ClassVar[dict[str, bytes]] = {}
    repo = "testorg/tiny-gpt2"
    error: tuple[int, str] | None = None
    calls: ClassVar[list[str]] = []

    def log_message(self, *args):
        pass

    def _answer(self, body: bool):
        type(self).calls.append(f"{self.command} {self.path}")
        if self.error:
            self.send_response(self.error[0])
            self.send_header("X-Error-Code", self.error[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith(f"/api/models/{self.repo}/tree/"):  # the file listing
            tree = [{"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()} for n, b in self.files.items()]
            data, headers = json.dumps(tree).encode(), {"Content-Type": "application/json"}
        elif self.path.startswith(f"/api/models/{self.repo}"):  # the revision
            data = json.dumps({"id": self.repo, "sha": REVISION, "siblings": [{"rfilename": n} for n in self.files]}).encode()
            headers = {"Content-Type": "application/json"}
        else:
            name = self.path.split(f"/{self.repo}/resolve/{REVISION}/", 1)[-1].split(f"/{self.repo}/resolve/main/", 1)[-1]
            if name not in self.files:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = self.files[name]
            headers = {"X-Repo-Commit": REVISION, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        self.send_response(200)
        for k, v in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self):
        self._answer(True)

    def do_HEAD(self):
        self._answer(False)


def _online(env):
    """Downloads allowed: huggingface_hub reads HF_HUB_OFFLINE once, at import (conftest.py set it), so its constant goes too."""
    import huggingface_hub.constants

    env.delenv("HF_HUB_OFFLINE")
    env.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def server(env):
    FakeHub.error, FakeHub.calls = None, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _online(env)
    env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{httpd.server_address[1]}")
    yield FakeHub
    httpd.shutdown()


def test_online_a_missing_name_downloads_safetensors_only_with_progress(server, saved):
    server.files = {f.name: f.read_bytes() for f in saved.iterdir()} | {"pytorch_model.bin": b"pickle: never fetched"}
    seen = []
    folder = hub.fetch("testorg/tiny-gpt2", tqdm_class=hub.progress_tqdm(lambda desc, share: seen.append(share)))
    assert (folder / "model.safetensors").is_file() and not (folder / "pytorch_model.bin").exists()
    assert not any("pytorch_model.bin" in c for c in server.calls)
    assert seen and seen[-1] == 1.0  # the progress reached the end
    model = load_model("testorg/tiny-gpt2")  # now from the cache it wrote, through the real loader
    assert model.info.kind == "hub cache" and torch.equal(_logits(model), _logits(load_model(str(saved))))


def test_a_repository_of_pickles_only_is_refused(server, saved):
    server.files = {"config.json": (saved / "config.json").read_bytes(), "pytorch_model.bin": b"pickle"}
    with pytest.raises(InputError, match="no safetensors weights, only pickle"):
        hub.fetch("testorg/tiny-gpt2")


@pytest.mark.parametrize(
    "error, says",
    [
        ((403, "GatedRepo"), r"gated on the Hugging Face Hub: accept its licence .*hf auth login.*HF_TOKEN"),
        ((404, "RepoNotFound"), r"no model 'testorg/tiny-gpt2' on the Hugging Face Hub"),
    ],
)
def test_gated_and_missing_repositories_get_one_line(server, error, says):
    """The real client raises its own GatedRepoError / RepositoryNotFoundError from the server's answer; we say what to do."""
    server.error = error
    with pytest.raises(InputError, match=says) as caught:
        load_model("testorg/tiny-gpt2")
    assert "\n" not in str(caught.value)
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    assert isinstance(caught.value.__cause__, GatedRepoError if error[1] == "GatedRepo" else RepositoryNotFoundError)


def test_no_connection_says_how_to_work_offline(env, monkeypatch):
    _online(env)
    env.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(InputError, match=r"could not download 'testorg/tiny-gpt2'.*HF_HUB_OFFLINE=1"):
        hub.fetch("testorg/tiny-gpt2")


def test_a_shared_server_loads_only_its_allow_list(env, tmp_path, saved):
    build_cache(tmp_path / "cache", "testorg/tiny-gpt2", saved)
    root = tmp_path / "models"
    root.mkdir()
    env.setenv("WORKBENCH_MODEL_ROOT", str(root))
    with pytest.raises(InputError, match="hub names on its allow-list"):
        load_model("testorg/tiny-gpt2")
    (root / hub.ALLOW_FILE).write_text("# hub models this server loads\ntestorg/tiny-gpt2\n")
    assert load_model("testorg/tiny-gpt2").info.kind == "hub cache"
    with pytest.raises(InputError, match="not on it"):
        hub.fetch("testorg/other", root)
    env.setenv(hub.ALLOW_ENV, "testorg/other, gpt2")
    assert hub.allow_list(root) == {"testorg/tiny-gpt2", "testorg/other", "gpt2"}


def test_the_app_downloads_a_new_hub_name_and_opens_it(server, saved, tmp_path):
    """The home page with a hub name not in the cache: downloaded (under the sidebar's progress bar), then loaded."""
    from streamlit.testing.v1 import AppTest

    server.files = {f.name: f.read_bytes() for f in saved.iterdir()}
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=180)
    at.session_state["wb.model"] = "testorg/tiny-gpt2"
    at.run()
    assert not at.exception and not [e.value for e in at.sidebar.error]
    assert hub.cached("testorg/tiny-gpt2") is not None
    assert any(c.startswith("GET /testorg/tiny-gpt2/resolve/") for c in server.calls)
