"""`modeldeck download`: the card's files through huggingface_hub, against a hand-built cache and a local hub.

No test reaches the network. The CLI runs in a subprocess with HF_HOME and HF_HUB_OFFLINE=1 in its environment (as a
user sets them) and a sitecustomize that logs and refuses every socket connection, so a connection attempt that
huggingface_hub swallows (it falls back to the cache on network errors) is still caught. The last tests run the real
download path against an imitation of the hub's endpoints on 127.0.0.1 (HF_ENDPOINT), the only address allowed.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar

import huggingface_hub
import pytest
from click.testing import CliRunner
from huggingface_hub.utils.tqdm import are_progress_bars_disabled

from modeldeck import registry
from modeldeck.registry.cli import main
from modeldeck.registry.weights import UnknownRevisionError

from .conftest import refuse_network, run_python_without
from .test_hub import CHECKPOINT, add_to_cache, write_checkpoint


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_network(monkeypatch)


COMMIT_MAIN, COMMIT_STEP3000 = "a" * 40, "b" * 40

GUARD = """
import os, socket


def _refuse(*args, **kwargs):
    with open(os.environ["MODELDECK_TEST_NETLOG"], "a") as log:
        log.write(f"{args[1:] if len(args) > 1 else args}\\n")
    raise OSError(101, "network access refused by the test")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = lambda *a, **k: _refuse(None, *a)
"""


def guarded_cli(run_cli: Any, env: dict[str, str], netlog: Path, unset: set[str]) -> Any:
    """run(*args): the CLI in a subprocess with `env` and without the `unset` variables of this process; fails the
    test if the subprocess' network guard (GUARD) logged a connection."""

    def run(*args: str) -> Any:
        saved = {k: os.environ.pop(k) for k in unset if k in os.environ}
        try:
            result = run_cli(*args, env=env)
        finally:
            os.environ.update(saved)
        assert not netlog.exists(), f"the CLI tried to reach the network: {netlog.read_text()}"
        return result

    return run


@pytest.fixture
def offline(tmp_path: Path, fake_site: Any, run_cli: Any) -> Any:
    """run(*args) -> the CLI in a subprocess with HF_HOME=tmp/hf, HF_HUB_OFFLINE=1, no token, no network."""
    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True)
    (fake_site.root / "sitecustomize.py").write_text(GUARD)
    netlog = tmp_path / "network.log"
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "MODELDECK_TEST_NETLOG": str(netlog)}

    run = guarded_cli(run_cli, env, netlog, unset={"HF_HUB_CACHE", "HF_TOKEN", "HF_TOKEN_PATH"})
    run.home = home
    return run


def test_download_offline_prints_the_cached_snapshot(offline: Any) -> None:
    main_snapshot = add_to_cache(offline.home, "EleutherAI/pythia-1.4b", "main", COMMIT_MAIN)
    step3000 = add_to_cache(offline.home, "EleutherAI/pythia-1.4b", "step3000", COMMIT_STEP3000)

    result = offline("download", "pythia-1.4b")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{main_snapshot}\n"
    assert (
        f"EleutherAI/pythia-1.4b@main (card pythia-1.4b): the files it needs, into {offline.home / 'hub'} "
        "(offline: the cache only)" in result.stderr
    )
    assert "3 files, " in result.stderr and "model.safetensors (" in result.stderr

    result = offline("download", "pythia-1.4b", "--revision", "step3000")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{step3000}\n"


def test_download_of_an_unlisted_revision_names_the_nearest(offline: Any) -> None:
    add_to_cache(offline.home, "EleutherAI/pythia-1.4b", "main", COMMIT_MAIN)
    result = offline("download", "pythia-1.4b", "--revision", "step3001")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(
        "error: card pythia-1.4b lists no revision 'step3001' of EleutherAI/pythia-1.4b "
        "(nearest listed: step3000, step4000, step2000"
    )
    assert "Traceback" not in result.stderr


def test_download_offline_cache_miss_says_how_to_get_it(offline: Any) -> None:
    add_to_cache(offline.home, "EleutherAI/pythia-1.4b", "main", COMMIT_MAIN)
    result = offline("download", "pythia-1.4b", "--revision", "step4000")
    assert result.returncode == 1 and result.stdout == ""
    assert "EleutherAI/pythia-1.4b@step4000 (card pythia-1.4b) is not in the Hugging Face cache" in result.stderr
    assert "`modeldeck download pythia-1.4b --revision step4000` with HF_HUB_OFFLINE unset" in result.stderr


def test_a_pickle_card_needs_allow_pickle(offline: Any) -> None:
    names = ("config.json", "pytorch_model.bin", "tokenizer.json")
    snapshot = add_to_cache(offline.home, "PAIXAI/Astrid-1B", "main", COMMIT_MAIN, names=names)

    refused = offline("download", "astrid-1b")
    assert refused.returncode == 1 and refused.stdout == ""
    message = refused.stderr
    assert message.startswith("error: PAIXAI/Astrid-1B (card astrid-1b) only ships pickle checkpoints")
    assert "loading a pickle can execute arbitrary code" in message
    assert "`modeldeck download astrid-1b --revision main --allow-pickle` (downloading runs nothing)" in message
    assert "`modeldeck convert DIR --allow-pickle --out OUT`" in message

    allowed = offline("download", "astrid-1b", "--allow-pickle")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == f"{snapshot}\n"


def pinned_card_data(card_data: Any, files: dict[str, bytes]) -> dict[str, Any]:
    data = card_data("pythia-1.4b")
    data["id"], data["aliases"] = "pinned-pythia", []
    pins = [{"path": n, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()]
    data["source"] = {**data["source"], "repo": "example/pinned-pythia", "files": pins}
    return data


def test_download_verify_and_verify_check_the_cached_snapshot(
    offline: Any, fake_site: Any, card_data: Any, tmp_path: Path
) -> None:
    source = write_checkpoint(tmp_path / "src")
    files = {name: (source / name).read_bytes() for name in CHECKPOINT}
    fake_site.card_plugin("pinned-dist", "pinned_plugin", pinned_card_data(card_data, files))
    uncached = offline("verify", "pinned-pythia")
    assert uncached.returncode == 1 and uncached.stdout == ""
    assert uncached.stderr.startswith(
        f"error: example/pinned-pythia@main (card pinned-pythia) is not in the Hugging Face cache "
        f"({offline.home / 'hub'}); download it with `modeldeck download pinned-pythia --revision main`"
    )
    snapshot = add_to_cache(offline.home, "example/pinned-pythia", "main", COMMIT_MAIN, source=source)

    downloaded = offline("download", "pinned-pythia", "--verify")
    assert downloaded.returncode == 0, downloaded.stderr
    assert downloaded.stdout == f"{snapshot}\n"
    assert "verified: 3 files match the card's pins" in downloaded.stderr

    checked = offline("verify", "pinned-pythia")
    assert checked.returncode == 0, checked.stderr
    assert f"card pinned-pythia: 3 pinned files in {snapshot}" in checked.stdout
    assert "3 of 3 files ok" in checked.stdout

    blob = (snapshot / "model.safetensors").resolve()  # the cache's blob behind the snapshot's symlink
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    tampered = offline("verify", "pinned-pythia")
    assert tampered.returncode == 1
    assert any(line.split()[:3] == ["model.safetensors", "wrong", "hash"] for line in tampered.stdout.splitlines())
    assert "model.safetensors (wrong hash)" in tampered.stderr
    assert "`modeldeck download pinned-pythia --force-download` replaces cached copies" in tampered.stderr

    refused = offline("download", "pinned-pythia", "--verify")
    assert refused.returncode == 1 and refused.stdout == ""
    assert (
        "1 of 3 files of card pinned-pythia" in refused.stderr and "  - model.safetensors: wrong hash" in refused.stderr
    )

    missing = offline("verify", "pinned-pythia", "--revision", "step3000")
    assert missing.returncode == 1
    assert "pins the files of revision main = step143000 only, not 'step3000'" in missing.stderr


def test_download_and_verify_run_without_torch(tmp_path: Path) -> None:
    """`download --help`, `verify` of the bundled card and `download` from the offline cache, with torch (and the
    other runtime packages) unavailable and every connection refused."""
    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True)
    snapshot = add_to_cache(home, "EleutherAI/pythia-1.4b", "main", COMMIT_MAIN)
    netlog = tmp_path / "network.log"
    environment = f"""
import os
for name in ("HF_HUB_CACHE", "HF_TOKEN", "HF_TOKEN_PATH", "MODELDECK_DEBUG"):
    os.environ.pop(name, None)
os.environ.update(HF_HOME={str(home)!r}, HF_HUB_OFFLINE="1", MODELDECK_TEST_NETLOG={str(netlog)!r})
"""
    commands = """
from modeldeck.registry import cli
for args in (["download", "--help"], ["verify", "tiny-neox"], ["download", "pythia-1.4b"]):
    try:
        cli.main(args)
    except SystemExit as exc:
        assert exc.code in (0, None), (args, exc.code)
print("done")
"""
    result = run_python_without(("torch", "transformers", "safetensors", "tokenizers"), environment + GUARD + commands)
    assert result.returncode == 0, result.stderr
    assert not netlog.exists(), netlog.read_text()
    assert result.stdout.startswith("Usage: ") and "Download the files card NAME needs" in result.stdout
    assert "3 of 3 files ok" in result.stdout
    assert f"{snapshot}\ndone\n" in result.stdout
    assert "EleutherAI/pythia-1.4b@main (card pythia-1.4b): the files it needs" in result.stderr


# --- in-process: what reaches huggingface_hub ------------------------------------------------------


def test_download_passes_patterns_progress_and_force_to_huggingface_hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        calls.append({**kwargs, "bars_disabled": are_progress_bars_disabled()})
        names = ("config.json", "pytorch_model.bin", "tokenizer.json")
        return str(write_checkpoint(tmp_path / f"snap{len(calls)}", names))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    runner = CliRunner()
    result = runner.invoke(main, ["download", "astrid-1b", "--allow-pickle", "--force-download"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == str(tmp_path / "snap1")
    (call,) = calls
    assert call["repo_id"] == "PAIXAI/Astrid-1B" and call["revision"] == "main" and call["force_download"] is True
    assert set(call["allow_patterns"]) == {
        "*.safetensors",
        "model.safetensors.index.json",
        "pytorch_model*.bin",
        "pytorch_model.bin.index.json",
        "config.json",
        "generation_config.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
    }
    assert call["bars_disabled"] is False  # huggingface_hub's progress bars are on

    calls.clear()
    result = runner.invoke(main, ["download", "astrid-1b"])
    assert result.exit_code == 1 and not calls  # refused before any hub call


def test_download_of_a_bundled_card_prints_the_package_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(**kwargs: object) -> str:
        raise AssertionError(f"snapshot_download must not be called: {kwargs}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    result = CliRunner().invoke(main, ["download", "tiny-neox"])
    assert result.exit_code == 0, result.output
    folder = Path(result.stdout.strip())
    assert folder.name == "tiny-neox" and (folder / "model.safetensors").is_file()
    assert "card tiny-neox ships its weights in modeldeck.cards:tiny-neox: nothing to download" in result.stderr


def test_runtime_load_resolves_a_listed_revision_through_the_same_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Any
) -> None:
    import huggingface_hub.constants

    from modeldeck import runtime

    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ckpt = tiny_checkpoint("gpt-neox")  # its card lists pythia's 154 revisions
    add_to_cache(home, ckpt.card.source.repo, "main", COMMIT_MAIN)  # main: a dummy, not this checkpoint
    add_to_cache(home, ckpt.card.source.repo, "step3000", COMMIT_STEP3000, source=ckpt.directory)

    seen: list[str] = []
    real = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: seen.append(kw["revision"]) or real(**kw))
    model = runtime.load(ckpt.card, revision="step3000", device="cpu")
    assert seen == ["step3000"]
    assert model.generate("Hello", max_new_tokens=3).text == (
        runtime.load(ckpt.card, weights=ckpt.directory, device="cpu").generate("Hello", max_new_tokens=3).text
    )
    with pytest.raises(UnknownRevisionError, match=r"nearest listed: step3000, step4000, step2000"):
        runtime.load(ckpt.card, revision="step3001", device="cpu")
    assert seen == ["step3000"]  # the unlisted revision never reached the hub
    assert registry.get("pythia-1.4b").source.revisions[:3] == ["step0", "step1", "step2"]


def test_the_guard_catches_a_connection(tmp_path: Path, fake_site: Any, run_cli: Any) -> None:
    """The subprocess guard works: a connection attempt is logged even when the caller swallows the error."""
    (fake_site.root / "sitecustomize.py").write_text(GUARD)
    (fake_site.root / "probe.py").write_text(
        textwrap.dedent(
            """
            import socket
            try:
                socket.create_connection(("huggingface.co", 443), timeout=1)
            except OSError:
                pass
            """
        )
    )
    netlog = tmp_path / "network.log"
    env = {**os.environ, "PYTHONPATH": str(fake_site.root), "MODELDECK_TEST_NETLOG": str(netlog)}
    subprocess.run([sys.executable, "-c", "import probe"], env=env, check=True, timeout=60)
    assert "huggingface.co" in netlog.read_text()


# --- the real download path, against a hub imitation on 127.0.0.1 (HF_ENDPOINT) --------------------


class FakeHub(http.server.BaseHTTPRequestHandler):
    """The four endpoints snapshot_download uses: revision info, the file tree, HEAD and GET of /resolve/.

    GET honours `Range: bytes=N-`; a file named in `cut` has its first GET cut off 1 MiB before its end (the
    connection closes before the promised Content-Length), as a dropped connection would."""

    repo = "example/served-pythia"
    commit = "c" * 40
    files: ClassVar[dict[str, bytes]] = {}
    cut: ClassVar[set[str]] = set()
    requests: ClassVar[list[tuple[str, str, dict[str, str]]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, value: Any) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _file_headers(self, name: str) -> bytes:
        data = self.files[name]
        self.send_header("X-Repo-Commit", self.commit)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        return data

    def _route(self) -> str | None:
        path = urllib.parse.urlsplit(self.path).path
        self.requests.append((self.command, path, {k.lower(): v for k, v in self.headers.items()}))
        if path == f"/api/models/{self.repo}/revision/main":
            siblings = [{"rfilename": n} for n in self.files]
            self._json({"id": self.repo, "sha": self.commit, "siblings": siblings, "private": False})
        elif path == f"/api/models/{self.repo}/tree/{self.commit}":
            self._json(
                [
                    {"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                    for n, d in self.files.items()
                ]
            )
        elif path.startswith(prefix := f"/{self.repo}/resolve/{self.commit}/") and path[len(prefix) :] in self.files:
            return path[len(prefix) :]
        else:
            self.send_error(404)
        return None

    def do_HEAD(self) -> None:
        name = self._route()
        if name is not None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(self._file_headers(name))))
            self.end_headers()

    def do_GET(self) -> None:
        name = self._route()
        if name is None:
            return
        start = int(m.group(1)) if (m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("range", ""))) else 0
        self.send_response(206 if start else 200)
        data = self._file_headers(name)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if name in self.cut:
            self.cut.discard(name)
            self.wfile.write(data[: len(data) - 2**20])  # all but the last MiB
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data[start:])


@pytest.fixture
def served(tmp_path: Path, fake_site: Any, run_cli: Any, card_data: Any) -> Any:
    """A fake hub on 127.0.0.1 serving example/served-pythia (a pythia-1.4b card registered by a plugin), and
    run(*args) -> the CLI against it, in a subprocess that may connect to 127.0.0.1 only."""
    source = write_checkpoint(tmp_path / "src")
    files = {name: (source / name).read_bytes() for name in CHECKPOINT}
    # 12 MiB more (trailing padding is harmless): a file worth cutting, longer than huggingface_hub's 10 MiB chunks,
    # so that the bytes received before the cut are written and the retry asks for the rest
    files["model.safetensors"] += bytes(range(256)) * (12 * 4096)
    files.update(
        {
            "generation_config.json": b'{"do_sample": false}',
            "pytorch_model.bin": b"a pickle that must never be fetched",
            "README.md": b"# not needed",
            "onnx/model.onnx": b"not needed either",
        }
    )
    data = card_data("pythia-1.4b")
    data["id"], data["aliases"] = "served-pythia", []
    data["source"] = {**data["source"], "repo": FakeHub.repo, "revisions": [], "revision_aliases": {}}
    fake_site.card_plugin("served-dist", "served_plugin", data)
    guard = GUARD.replace(
        "socket.socket.connect = _refuse",
        "_connect = socket.socket.connect\n"
        "socket.socket.connect = lambda s, a, *r: _connect(s, a, *r) if a[0] == '127.0.0.1' else _refuse(s, a)",
    ).replace(
        "socket.getaddrinfo = lambda *a, **k: _refuse(None, *a)",
        "_getaddrinfo = socket.getaddrinfo\n"
        "socket.getaddrinfo = lambda *a, **k: _getaddrinfo(*a, **k) if a[0] == '127.0.0.1' else _refuse(None, *a)",
    )
    (fake_site.root / "sitecustomize.py").write_text(guard.replace("socket.create_connection = _refuse\n", ""))

    handler = type("Hub", (FakeHub,), {"files": files, "cut": set(), "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    home, netlog = tmp_path / "hf", tmp_path / "network.log"
    proxies = {k for k in os.environ if k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env = {
        "HF_HOME": str(home),
        "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
        "HF_TOKEN": "hf_modeldeck_test_token",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "MODELDECK_TEST_NETLOG": str(netlog),
        "NO_PROXY": "127.0.0.1",
    }

    run = guarded_cli(run_cli, env, netlog, unset={"HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN_PATH", *proxies})
    run.hub, run.files, run.home = handler, files, home
    yield run
    server.shutdown()
    server.server_close()


def fetched(hub: Any) -> list[str]:
    return [path.rsplit("/", 1)[-1] for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path]


def test_download_fetches_only_the_needed_files_and_resumes_a_dropped_connection(served: Any) -> None:
    served.hub.cut.add("model.safetensors")
    result = served("download", "served-pythia")
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert folder == served.home / "hub" / "models--example--served-pythia" / "snapshots" / FakeHub.commit
    needed = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"}
    assert {p.name for p in folder.iterdir()} == needed
    for name in needed:
        assert (folder / name).read_bytes() == served.files[name], name
    assert sorted(set(fetched(served.hub))) == sorted(needed)  # never the pickle, the README or the onnx folder

    # the cut connection was resumed where it stopped, with an HTTP Range request
    gets = [h for m, p, h in served.hub.requests if m == "GET" and p.endswith("/model.safetensors")]
    assert len(gets) == 2 and "range" not in gets[0]
    resumed = re.fullmatch(r"bytes=(\d+)-", gets[1].get("range", ""))
    assert resumed and 0 < int(resumed.group(1)) <= len(served.files["model.safetensors"]) - 2**20, gets[1]
    assert "Trying to resume download" in result.stderr
    # the token came from HF_TOKEN in the environment
    assert all(h.get("authorization") == "Bearer hf_modeldeck_test_token" for _, _, h in served.hub.requests)

    # run again: the cached files are not fetched again
    served.hub.requests.clear()
    again = served("download", "served-pythia")
    assert again.returncode == 0, again.stderr
    assert again.stdout == result.stdout and fetched(served.hub) == []


def test_download_with_allow_pickle_also_fetches_the_pickle(served: Any) -> None:
    result = served("download", "served-pythia", "--allow-pickle")
    assert result.returncode == 0, result.stderr
    assert "pytorch_model.bin" in fetched(served.hub)
    assert (Path(result.stdout.strip()) / "pytorch_model.bin").read_bytes() == served.files["pytorch_model.bin"]
