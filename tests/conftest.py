"""Shared fixtures: installed-looking plugin distributions on disk, and running the real CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CARDS = REPO / "cards"
REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture
def reference() -> Path:
    """../shared/reference (real tokenizers and configs); tests that need it skip without it."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE} (it lives beside the clone in shared/)")
    return REFERENCE


def first_party_card_data(card_id: str) -> dict:
    """A first-party card as a plain dict: its cards/ file, or the Pythia suite's generated card."""
    path = CARDS / f"{card_id}.yaml"
    if path.is_file():
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    from modeldeck.plugins import pythia  # the 16 Pythia cards come from cards/pythia.suite.yaml

    return pythia.card_data(card_id)


@pytest.fixture
def card_data() -> Callable[[str], dict]:
    """Loads a first-party card as a plain dict, to mutate in tests."""
    return first_party_card_data


class FakeSite:
    """A folder on sys.path holding distributions with `modeldeck` entry points, as pip would install them."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def add(self, dist: str, modules: dict[str, str], entry_points: dict[str, str], version: str = "1.0") -> None:
        for name, source in modules.items():
            (self.root / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
        lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[modeldeck]\n{lines}\n", encoding="utf-8")

    def card_plugin(self, dist: str, module: str, card: dict) -> None:
        """A distribution whose plugin registers one card given as a dict."""
        self.add(
            dist,
            {
                module: f"""
                from modeldeck.registry import hookimpl
                CARD = {card!r}

                @hookimpl
                def register_cards(register):
                    register(CARD)
                """
            },
            {module.replace("_", "-"): module},
        )


@pytest.fixture
def h2ogpt_chat() -> tuple[list[dict[str, str]], str]:
    """h2oGPT's own multi-turn example (h2oGPT tests/test_prompter.py) and the prompt it renders to."""
    messages = [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "I'm good"},
        {"role": "user", "content": "Go to the market?"},
    ]
    return (
        messages,
        "<human>: Hello!\n<bot>: Hi!\n<human>: How are you?\n<bot>: I'm good\n<human>: Go to the market?\n<bot>:",
    )


@pytest.fixture
def fake_site(tmp_path: Path) -> FakeSite:
    return FakeSite(tmp_path / "site")


CliRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli(fake_site: FakeSite) -> CliRunner:
    """Run `modeldeck ARGS` in a subprocess that also sees the fake site's distributions."""

    def run(
        *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "PYTHONPATH": str(fake_site.root), **(env or {})}
        full_env.pop("MODELDECK_DEBUG", None)
        return subprocess.run(
            [sys.executable, "-m", "modeldeck.registry.cli", *args],
            capture_output=True,
            text=True,
            env=full_env,
            input=stdin,
            timeout=60,
        )

    return run


# --- tiny checkpoints in the exact Hugging Face layout, with transformers' model as the reference ----

TINY_FAMILIES = {
    # family: (seed card whose tokenizer, prompt format and defaults are kept, architecture changes)
    "gpt-neox": ("pythia-1.4b", {"heads": 8, "kv_heads": 8}),
    "falcon": ("h2ogpt-oig-oasst1-falcon-40b", {"heads": 8, "kv_heads": 2}),
    "falcon-7b": (
        "h2ogpt-oig-oasst1-falcon-40b",
        {
            "heads": 8,
            "kv_heads": 1,
            "checkpoint_layout": "falcon-7b",
            "residual": {"kind": "parallel", "shared_norm": True},
        },
    ),
    "llama": ("aira-2-1b1", {"heads": 8, "kv_heads": 2}),
    "astrid": ("astrid-1b", {"heads": 8, "kv_heads": 8}),
}
TOKENIZERS = {  # seed card -> its real tokenizer in ../shared/reference/tokenizers
    "pythia-1.4b": "gpt-neox/tokenizer.json",
    "astrid-1b": "gpt-neox/tokenizer.json",
    "h2ogpt-oig-oasst1-falcon-40b": "falcon/tokenizer.json",
    "aira-2-1b1": "llama-spm/tokenizer.model",
}


def tiny_card_data(seed: str, changes: dict) -> dict:
    """The seed card with only its architecture shrunk (same layout, prompt format, tokenizer, defaults)."""
    data = first_party_card_data(seed)
    data["id"], data["aliases"] = f"tiny-{seed}", []
    data["architecture"] = {**data["architecture"], "layers": 2, "hidden_size": 64, "ffn_size": 128, **changes}
    data["parameters"] = {}
    return data


def hf_config(card):
    """The transformers config for a card's architecture, written here independently of modeldeck's layouts."""
    import transformers

    a = card.architecture
    common = {
        "vocab_size": a.vocab_size,
        "hidden_size": a.hidden_size,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "max_position_embeddings": a.context_length,
        "tie_word_embeddings": a.tied_embeddings,
        "initializer_range": 0.1,
    }
    if a.checkpoint_layout == "gpt-neox":
        return transformers.GPTNeoXConfig(
            **common,
            intermediate_size=a.ffn_size,
            rotary_pct=a.positions.fraction,
            rotary_emb_base=a.positions.base,
            use_parallel_residual=a.residual.kind == "parallel",
            layer_norm_eps=a.norm.eps,
        )
    if a.checkpoint_layout == "llama":
        return transformers.LlamaConfig(
            **common, num_key_value_heads=a.kv_heads, intermediate_size=a.ffn_size, rms_norm_eps=a.norm.eps
        )
    return transformers.FalconConfig(
        **common,
        num_kv_heads=a.kv_heads,
        new_decoder_architecture=a.checkpoint_layout == "falcon",
        multi_query=a.kv_heads == 1,
        parallel_attn=True,
        bias=False,
        ffn_hidden_size=a.ffn_size,
        layer_norm_epsilon=a.norm.eps,
    )


@dataclasses.dataclass
class TinyCheckpoint:
    directory: Path
    card: object  # modeldeck Card
    reference: object  # the transformers model, fp32, eval mode


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """tiny_checkpoint(family) -> TinyCheckpoint, built once per session with random weights."""
    built: dict[str, TinyCheckpoint] = {}

    def build(family: str, tokenizer: bool = True) -> TinyCheckpoint:
        """tokenizer=False: for tests of the decoder alone, which then also run without ../shared (the folder
        has no tokenizer file; load it with `load_model`)."""
        torch = pytest.importorskip("torch")
        transformers = pytest.importorskip("transformers")
        if family not in built:
            from modeldeck import registry

            seed, changes = TINY_FAMILIES[family]
            card = registry.default().resolve_card(
                registry.card_from_data(tiny_card_data(seed, changes), family), family
            )
            torch.manual_seed(sorted(TINY_FAMILIES).index(family))
            model = transformers.AutoModelForCausalLM.from_config(hf_config(card), attn_implementation="eager").eval()
            directory = tmp_path_factory.mktemp(f"tiny-{family}")
            model.save_pretrained(directory)
            if (REFERENCE / "tokenizers").is_dir():
                shutil.copy(REFERENCE / "tokenizers" / TOKENIZERS[seed], directory)
            built[family] = TinyCheckpoint(directory, card, model)
        if tokenizer and not (REFERENCE / "tokenizers").is_dir():
            pytest.skip(f"the real tokenizers are not at {REFERENCE / 'tokenizers'} (shared/ beside the clone)")
        return built[family]

    return build


# --- shared helpers ------------------------------------------------------------------------------


def edit_weights(directory: Path, change: Callable[[dict], None]) -> None:
    """Rewrite a checkpoint's model.safetensors after `change` edits its tensors in place."""
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def edit_config(directory: Path, change: Callable[[dict], None]) -> None:
    """Rewrite a checkpoint's config.json after `change` edits it in place."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def refuse_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any socket connection or name lookup in this process fail the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"test tried to reach the network: {args[1:] if args else kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: refuse(None, *args))


def load_model(card, directory: Path, with_tokenizer: bool, attention: str = "sdpa"):
    """runtime.load (the whole path) when the checkpoint folder has its tokenizer; otherwise the same checkpoint
    loading (runtime/loading.py) without one, with what decoder-only tests use: .card, .decoder, .backend, .dtype."""
    import torch

    from modeldeck import registry, runtime
    from modeldeck.runtime.attention import get_backend
    from modeldeck.runtime.loading import load_decoder

    if with_tokenizer:
        return runtime.load(card, weights=directory, device="cpu", attention=attention)
    layout = registry.default().checkpoint_layouts()[card.architecture.checkpoint_layout]
    decoder = load_decoder(card, layout, Path(directory), torch.float32, torch.device("cpu"))
    return types.SimpleNamespace(card=card, decoder=decoder, backend=get_backend(attention), dtype=torch.float32)


def expected_text(full: str, stops: tuple[str, ...], strip: str) -> str:
    """What a TextStream must end with for the full decoded text: cut before the first stop string, then stripped."""
    cuts = [full.find(s) for s in stops if s in full]
    text = full[: min(cuts)] if cuts else full
    if strip == "leading_space":
        return text.removeprefix(" ")
    return text.strip() if strip == "whitespace" else text


def run_python_without(blocked: tuple[str, ...], body: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """Run `body` in a fresh interpreter in which importing any of the `blocked` packages fails, then check that
    none of them was imported after all (a torch-free promise, tested)."""
    prelude = textwrap.dedent(
        f"""
        import sys, importlib.abc

        BLOCKED = {tuple(blocked)!r}

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked in this test")

        sys.meta_path.insert(0, Blocker())
        """
    )
    check = '\nleaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)\nassert not leaked, leaked\n'
    script = prelude + textwrap.dedent(body) + check
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)


@dataclasses.dataclass
class ServeProcess:
    """`modeldeck serve ...` running as a real process: its URL, the process, and the stderr lines it printed."""

    url: str
    process: subprocess.Popen[str]
    lines: list[str]

    @property
    def log(self) -> str:
        return "".join(self.lines)


@contextlib.contextmanager
def serve_process(args: list[str], timeout: float = 300, env: dict[str, str] | None = None) -> Iterator[ServeProcess]:
    """`modeldeck ARGS` (a serve command) in a fresh interpreter, yielded once uvicorn says where it runs; killed at
    the end if the test did not stop it, and its stderr read to the end (`log`)."""
    command = [sys.executable, "-m", "modeldeck.registry.cli", *args]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not any("Uvicorn running on" in line for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        url = re.search(r"Uvicorn running on (http://\S+)", "".join(lines))[1]  # type: ignore[index]
        yield ServeProcess(url, process, lines)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(10)


# --- Go's text/template, as Ollama runs a Modelfile's TEMPLATE -----------------------------------------

GO_RENDERER = Path(__file__).parent / "export_go" / "render.go"


@pytest.fixture(scope="session")
def go_render(tmp_path_factory):
    """Go's text/template (Debian's golang-go), as Ollama runs a TEMPLATE; skips where Go is absent."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (apt-get install golang-go): the Ollama template is not rendered")
    root = tmp_path_factory.mktemp("go")
    binary = root / "render"
    env = {**os.environ, "GO111MODULE": "off", "GOCACHE": str(root / "cache"), "GOPATH": str(root / "gopath")}
    subprocess.run([go, "build", "-o", str(binary), str(GO_RENDERER)], check=True, env=env, cwd=root, timeout=300)

    def render(template: str, convs: list[list[dict[str, str]]]) -> list[str]:
        request = json.dumps({"template": template, "conversations": convs})
        done = subprocess.run([str(binary)], input=request, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout))

    return render


# --- a live server -------------------------------------------------------------------------------


@dataclasses.dataclass
class Served:
    url: str
    app: Any
    server: Any
    thread: threading.Thread

    def client(self) -> Any:
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=60)

    def health(self) -> dict[str, Any]:
        import httpx

        return httpx.get(f"{self.url}/health", timeout=10).json()

    def wait_for(self, condition: Callable[[dict[str, Any]], bool], seconds: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            health = self.health()
            if condition(health):
                return health
            time.sleep(0.02)
        raise AssertionError(f"condition not reached within {seconds} s: {health}")


@contextlib.contextmanager
def serving(model: Any, **options: Any) -> Iterator[Served]:
    """create_app + uvicorn on a free loopback port, in a thread; shut down gracefully at the end."""
    from modeldeck.runtime.server import create_app, make_server

    app = create_app(model, **options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = make_server(app, "127.0.0.1", sock.getsockname()[1], shutdown_timeout=20, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", app, server, thread)
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def serve_app() -> Callable[..., Any]:
    """serving(model, **create_app options) as a fixture, for tests outside this folder's modules."""
    return serving
