"""The vLLM engine: its arguments for the real seed cards as data, the refusals (BTLM, an uneven tensor-parallel
size, no environment, a server that does not start), and, with vLLM's environment installed (`modeldeck engine
install vllm`; slow), tiny random GPT-NeoX, Llama and Falcon checkpoints served by vLLM giving modeldeck's own
runtime's tokens: completions, chat, the card's defaults, stop strings, tensor parallelism."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modeldeck import registry
from modeldeck.registry.engines import vllm as engine

from .conftest import REFERENCE, TOKENIZERS, first_party_card_data, hf_config, serve_process, tiny_card_data

FALCON_40B = "h2ogpt-oig-oasst1-falcon-40b"


def vllm_python() -> Path | None:
    try:
        return engine.find_python()
    except engine.EngineNotInstalledError:
        return None


needs_vllm = pytest.mark.skipif(
    vllm_python() is None, reason="vLLM's environment is not installed (modeldeck engine install vllm)"
)


# --- arguments, as data ----------------------------------------------------------------------------


@pytest.mark.parametrize("card_id", [c.id for c in registry.cards() if c.architecture.checkpoint_layout != "btlm"])
def test_server_command_carries_the_card(card_id: str, tmp_path: Path) -> None:
    card = registry.get(card_id)
    command = engine.server_command(
        Path("/env/bin/python"), card, tmp_path, port=8123, dtype="bfloat16", tensor_parallel_size=2
    )
    assert command[:3] == ["/env/bin/python", "-m", "vllm.entrypoints.openai.api_server"]

    def value(flag: str) -> str:
        return command[command.index(flag) + 1]

    names = command[command.index("--served-model-name") + 1 : command.index("--dtype")]
    assert names == [card.id, *card.aliases]
    assert value("--model") == str(tmp_path) and value("--host") == "127.0.0.1" and value("--port") == "8123"
    assert value("--max-model-len") == str(card.architecture.context_length)
    assert value("--tensor-parallel-size") == "2" and value("--dtype") == "bfloat16"
    assert value("--chat-template") == str(tmp_path / "chat_template.jinja")
    assert value("--generation-config") == str(tmp_path)  # the exported generation_config.json
    overrides = json.loads(value("--override-generation-config"))
    assert overrides["max_new_tokens"] == card.generation.max_new_tokens
    assert ("temperature" in overrides) == (not card.generation.do_sample)  # vLLM ignores do_sample
    assert overrides.get("temperature", 0.0) == 0.0


def test_extra_arguments_pass_through_but_never_replace_the_cards(tmp_path: Path) -> None:
    card = registry.get("tiny-neox")
    command = engine.server_command(Path("py"), card, tmp_path, port=1, dtype="auto", extra=["--enforce-eager"])
    assert command[-1] == "--enforce-eager"
    with pytest.raises(engine.EngineError, match="vLLM argument --max-model-len is set by modeldeck from the card"):
        engine.server_command(Path("py"), card, tmp_path, port=1, dtype="auto", extra=["--max-model-len=9"])


def test_cpu_environment_binds_one_core_group_per_rank() -> None:
    card = registry.get(FALCON_40B)
    env = engine.server_env(card, 2, "cpu", kv_cache_bytes=3 * 2**30 + 1, cpus=8)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4" and env["VLLM_CPU_OMP_THREADS_BIND"] == "0-3|4-7"
    assert engine.server_env(card, 2, "cpu", 1, cpus=2)["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in engine.server_env(card, 1, "cpu", 1)
    assert "VLLM_CPU_KVCACHE_SPACE" not in engine.server_env(card, 2, "cuda", 1)
    with pytest.raises(engine.EngineError, match="needs a core per rank; this machine has 2"):
        engine.server_env(card, 4, "cpu", 1, cpus=2)


@pytest.mark.parametrize(("gb", "count", "gpus"), [(80, 2, 2), (141, 1, 1), (80, 8, 2)])
def test_falcon_40b_tensor_parallel_size_comes_from_the_memory_planner(
    monkeypatch: pytest.MonkeyPatch, gb: int, count: int, gpus: int
) -> None:
    torch = pytest.importorskip("torch")
    from modeldeck.runtime import vllm as runner

    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": gb * 10**9}))
    assert runner._tensor_parallel_size(registry.get(FALCON_40B), "cuda", "bfloat16", None) == gpus


def test_a_machine_with_too_few_gpus_is_told_how_many(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from modeldeck.runtime import vllm as runner

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": 80 * 10**9}))
    with pytest.raises(engine.EngineError, match=r"needs 2 GPUs of 80 GB .* this machine has 1"):
        runner._tensor_parallel_size(registry.get(FALCON_40B), "cuda", "bfloat16", None)


def test_each_request_sends_vllm_every_option_and_the_cards_eos() -> None:
    pytest.importorskip("torch")
    from modeldeck import runtime
    from modeldeck.runtime.generate import Sequence
    from modeldeck.runtime.vllm import request_body

    model = runtime.load("tiny-neox", device="cpu")
    greedy = model.options(max_new_tokens=7, min_new_tokens=2, repetition_penalty=1.3)
    body = request_body("tiny-neox", Sequence([5, 6], greedy, {0}), None)
    assert body == {
        "model": "tiny-neox",
        "prompt": [5, 6],
        "max_tokens": 7,
        "min_tokens": 2,
        "repetition_penalty": 1.3,
        "temperature": 0.0,  # the card's do_sample false: vLLM's temperature 0
        "top_p": 1.0,
        "top_k": 0,
        "ignore_eos": True,
        "stop_token_ids": [0],  # the card's eos, kept out of the first min_tokens by vLLM
        "stream": True,
        "return_token_ids": True,
    }
    sampled = model.options(temperature=0.7, top_k=5, top_p=0.9, seed=3)
    body = request_body("tiny-neox", Sequence([5], sampled, {0}), 2)
    assert (body["temperature"], body["top_k"], body["top_p"], body["seed"]) == (0.7, 5, 0.9, 3)
    assert body["logprobs"] == 2 and body["return_tokens_as_token_ids"] is True
    assert "stop" not in body  # stop strings stay modeldeck's (runtime/generate.py Sequence)


# --- refusals ------------------------------------------------------------------------------------


def no_traceback(result: Any) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def test_gpt_jx_is_refused_with_the_reason(run_cli: Any) -> None:
    result = run_cli("serve", "gpt-jx-3b", "--engine", "vllm", "--port", "0")
    assert result.returncode == 1
    assert "card 'gpt-jx-3b' cannot run on vLLM: vLLM has no BTLM (GPT-JX) model" in result.stderr
    assert "serve it on modeldeck's runtime (leave out --engine vllm)" in result.stderr
    no_traceback(result)


def test_a_tensor_parallel_size_that_does_not_divide_the_heads_is_refused(run_cli: Any) -> None:
    result = run_cli("serve", FALCON_40B, "--engine", "vllm", "--tensor-parallel-size", "3", "--port", "0")
    assert result.returncode == 1
    assert f"--tensor-parallel-size 3 does not split card '{FALCON_40B}' evenly (128 query heads, 8 kv heads" in (
        result.stderr
    )
    assert "choose one of 1, 2, 4, 8, 16, 32, 64, 128" in result.stderr
    no_traceback(result)


def test_head_sizes_vllms_cpu_attention_lacks_are_refused() -> None:
    with pytest.raises(engine.EngineError, match="head_dim 40, which vLLM's CPU attention does not support"):
        engine.check_card(registry.get("tiny-neox"), 1, "cpu")
    engine.check_card(registry.get("tiny-neox"), 1, "cuda")


def test_a_missing_environment_says_how_to_create_it(run_cli: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv(engine.ENV_PYTHON, raising=False)
    monkeypatch.setenv(engine.ENV_HOME, str(tmp_path / "nowhere"))
    result = run_cli("serve", "pythia-70m", "--engine", "vllm", "--port", "0")
    assert result.returncode == 1
    assert f"vLLM's environment is not installed (no {tmp_path / 'nowhere' / 'bin' / 'python'})" in result.stderr
    assert "create it with `modeldeck engine install vllm`" in result.stderr
    monkeypatch.setenv(engine.ENV_PYTHON, str(tmp_path / "python3"))
    result = run_cli("engine", "where", "vllm")
    assert f"{engine.ENV_PYTHON}={tmp_path / 'python3'} is not an executable python" in result.stderr
    no_traceback(result)


def fake_environment(env: Path, imports: bool) -> Path:
    """A folder shaped like a virtual environment whose python answers `import vllm` (or fails to)."""
    (env / "bin").mkdir(parents=True)
    python = env / "bin" / "python"
    python.write_text("#!/bin/sh\necho 0.9.9\n" if imports else "#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    return python


def test_an_interrupted_install_is_unfinished_and_the_next_install_rebuilds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / "vllm-env"
    fake_environment(env, imports=False)  # what a killed install leaves: a python, no vLLM, no mark
    monkeypatch.delenv(engine.ENV_PYTHON, raising=False)
    monkeypatch.setenv(engine.ENV_HOME, str(env))
    with pytest.raises(engine.EngineNotInstalledError, match=r"vllm-env is unfinished \(an install was interrupted\)"):
        engine.find_python()
    rebuilt: list[list[str]] = []

    def steps(target: Path, device: str, python: str = sys.executable) -> list[list[str]]:
        assert not target.exists()  # the unfinished one was removed first
        rebuilt.append([str(target)])
        script = f"import os, pathlib; p = pathlib.Path({str(target)!r}) / 'bin'; p.mkdir(parents=True); (p / 'python').symlink_to({sys.executable!r})"
        return [
            [sys.executable, "-c", script],
            [str(target / "bin" / "python"), "-c", "import sys; print('vllm 0.9.9')"],
        ]

    monkeypatch.setattr(engine, "install_steps", steps)
    said: list[str] = []
    assert engine.install(env, "cpu", said.append) == env / "bin" / "python"
    assert rebuilt and f"removing {env} (an unfinished environment)" in said
    assert (env / engine.INSTALLED).read_text() == "vllm 0.9.9\n"
    assert engine.find_python() == env / "bin" / "python"
    with pytest.raises(engine.EngineError, match="already holds an environment; pass --force"):
        engine.install(env, "cpu", said.append)


def test_a_working_environment_without_the_mark_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "vllm-env"
    python = fake_environment(env, imports=True)  # made before the mark existed
    monkeypatch.setattr(engine, "install_steps", lambda *a, **k: pytest.fail("a working environment was rebuilt"))
    said: list[str] = []
    assert engine.install(env, "cpu", said.append) == python
    assert said == [f"{env} holds a working environment (vllm 0.9.9) without modeldeck's mark: kept"]
    assert (env / engine.INSTALLED).read_text() == "vllm 0.9.9\n"


def test_modeldeck_runtime_options_are_refused_on_vllm(run_cli: Any) -> None:
    result = run_cli("serve", "tiny-neox", "--engine", "vllm", "--quantize", "int8", "--port", "0")
    assert "--quantize is an option of modeldeck's runtime; the vllm engine chooses its own kernels" in result.stderr
    result = run_cli("serve", "tiny-neox", "--tensor-parallel-size", "2", "--port", "0")
    assert "--tensor-parallel-size is an option of --engine vllm" in result.stderr
    no_traceback(result)


def fake_python(tmp_path: Path, body: str) -> Path:
    """An executable standing in for vLLM's python: a shell script (what runs is `script -m vllm...`)."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def group_gone(pid: int) -> bool:
    from modeldeck.runtime.vllm import group_alive

    return not group_alive(pid)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def neox_64(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A tiny GPT-NeoX with head_dim 64 (vLLM's CPU attention runs it) and the bundled demo's tokenizer."""
    return tiny_vllm_checkpoint("astrid", tmp_path_factory)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('echo "error: unrecognized arguments: --bogus" >&2; exit 2', "vLLM exited with code 2 before it was ready"),
        ("sleep 300 & sleep 300; exit 0", "vLLM was not ready within 3 s"),  # a child of its own, never ready
    ],
)
def test_a_vllm_that_does_not_start_is_shown_stopped_and_its_port_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, neox_64: tuple[Any, Path], body: str, says: str
) -> None:
    from modeldeck.runtime import vllm as runner
    from modeldeck.runtime.tokenizer import load_tokenizer

    card, folder = neox_64
    monkeypatch.setenv(engine.ENV_PYTHON, str(fake_python(tmp_path, body)))
    with pytest.raises(runner.EngineStartError) as raised:
        runner.load_vllm(card, folder, load_tokenizer(card, folder), device="cpu", startup_timeout=3)
    message = str(raised.value)
    assert says in message
    if "code 2" in says:
        assert "error: unrecognized arguments: --bogus" in message  # what it printed
    assert group_gone(raised.value.pid) and port_free(raised.value.port)


# --- for real: vLLM serving tiny checkpoints -----------------------------------------------------

PENALTY = 3.0  # the tiny cards' default repetition_penalty: strong, so that it shows in the tokens
REPEATING = ["the the the the the", "list list list", "x x x x x x", "The for statement", "A list is", "1 2 1 2 1 2"]

VLLM_FAMILIES = {
    # name: (seed card: its prompt format, tokenizer and defaults; architecture: head_dim 64 for vLLM's CPU kernels)
    "astrid": ("astrid-1b", {"hidden_size": 128, "heads": 2, "kv_heads": 2, "ffn_size": 256}),
    "llama": ("aira-2-1b1", {"hidden_size": 256, "heads": 4, "kv_heads": 2, "ffn_size": 512}),
    "falcon": (FALCON_40B, {"hidden_size": 256, "heads": 4, "kv_heads": 2, "ffn_size": 1024}),
}


def tiny_vllm_checkpoint(name: str, factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    seed, changes = VLLM_FAMILIES[name]
    if not (REFERENCE / "tokenizers").is_dir():
        pytest.skip(f"the real tokenizers are not at {REFERENCE / 'tokenizers'} (shared/ beside the clone)")
    data = tiny_card_data(seed, changes)
    data["generation"] = {  # the seed's defaults, shorter, one sequence per prompt, a strong repetition penalty
        **first_party_card_data(seed).get("generation", {}),
        "max_new_tokens": 24,
        "num_return_sequences": 1,
        "repetition_penalty": PENALTY,
    }
    card = registry.default().resolve_card(registry.card_from_data(data, name), name)
    torch.manual_seed(len(name))
    model = transformers.AutoModelForCausalLM.from_config(hf_config(card), attn_implementation="eager").eval()
    folder = factory.mktemp(f"vllm-{name}")
    model.save_pretrained(folder)
    shutil.copy(REFERENCE / "tokenizers" / TOKENIZERS[seed], folder)
    return card, folder


CONVERSATION = [
    {"role": "user", "content": "What is a list?"},
    {"role": "assistant", "content": "A sequence."},
    {"role": "user", "content": "And a tuple?"},
]


@pytest.fixture(scope="module", params=list(VLLM_FAMILIES))
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(modeldeck's model, the same card on vLLM) for one family; vLLM stopped at the end."""
    from modeldeck import runtime

    card, folder = tiny_vllm_checkpoint(request.param, tmp_path_factory)
    ours = runtime.load(card, weights=folder, dtype="float32", device="cpu")
    theirs = runtime.load(
        card, weights=folder, dtype="float32", device="cpu", engine="vllm", vllm_args=["--enforce-eager"]
    )
    yield ours, theirs
    theirs.close()
    assert not theirs.server.running


PROMPTS = ["The for statement", "A list is", "x"]


@pytest.mark.slow
@needs_vllm
def test_greedy_completions_and_chat_equal_modeldecks_runtime(served: Any) -> None:
    ours, theirs = served
    for prompt in PROMPTS:
        mine, vllms = (
            ours.generate(prompt, raw=True, do_sample=False),
            theirs.generate(prompt, raw=True, do_sample=False),
        )
        assert vllms.completions[0].token_ids == mine.completions[0].token_ids, prompt
        assert vllms.text == mine.text and vllms.finish_reason == mine.finish_reason
    mine, vllms = ours.chat(CONVERSATION, do_sample=False), theirs.chat(CONVERSATION, do_sample=False)
    assert vllms.completions[0].token_ids == mine.completions[0].token_ids and vllms.text == mine.text
    assert (
        "".join(theirs.stream("The for statement", raw=True, do_sample=False))
        == ours.generate("The for statement", raw=True, do_sample=False).text
    )


@pytest.mark.slow
@needs_vllm
def test_the_chat_template_vllm_loaded_renders_the_cards_prompt(served: Any) -> None:
    _, theirs = served
    with_system = [{"role": "system", "content": "Be brief."}, *CONVERSATION]
    for messages in (CONVERSATION, CONVERSATION[:1], with_system):
        try:
            expected = theirs.render(messages)
        except registry.PromptError as refused:  # a card without system prompts: vLLM's template raises too
            body = {"model": theirs.served_names[0], "messages": messages}
            answer = httpx.post(f"{theirs.server.url}/tokenize", json=body, timeout=60)
            assert answer.status_code == 400 and str(refused).split(";")[0][:40] in answer.text
            continue
        body = {"model": theirs.served_names[0], "messages": messages, "add_generation_prompt": True}
        answer = httpx.post(f"{theirs.server.url}/tokenize", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        whole = theirs.tokenizer.backend.encode(expected, add_special_tokens=False).ids
        assert answer.json()["tokens"] == whole  # vLLM tokenizes its rendering whole: so does this


@pytest.mark.slow
@needs_vllm
def test_the_cards_defaults_and_stop_strings_apply_through_the_server(served: Any) -> None:
    import openai
    from openai import OpenAI

    from .test_serve import serving

    ours, theirs = served
    defaults = ours.card.generation
    with serving(theirs, max_batch=4) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        name = theirs.card.id
        assert defaults.repetition_penalty == PENALTY

        # a prompt whose greedy continuation the card's penalty changes: one that holds the tokens the model would
        # pick without it (a random model may never repeat a token on its own)
        def changed(prompt: str) -> bool:
            return ours.generate(prompt, do_sample=False).text != ours.generate(prompt, **unpenalized).text

        unpenalized = {"do_sample": False, "repetition_penalty": 1.0}
        seen = [ours.generate(p, **unpenalized).text + " " + p for p in REPEATING]
        penalized = next(p for p in REPEATING + seen if changed(p))
        plain = client.completions.create(model=name, prompt=penalized, temperature=0)
        assert plain.choices[0].text == ours.generate(penalized, do_sample=False).text  # with the card's penalty
        mine = ours.generate("The for statement", do_sample=False)
        stop = mine.text[4:9]
        cut = client.completions.create(model=name, prompt="The for statement", temperature=0, stop=[stop])
        assert cut.choices[0].text == mine.text[: mine.text.index(stop)] and cut.choices[0].finish_reason == "stop"
        chat = client.chat.completions.create(model=name, messages=CONVERSATION, temperature=0)  # type: ignore[arg-type]
        assert chat.choices[0].message.content == ours.chat(CONVERSATION, do_sample=False).text
        streamed = client.completions.create(model=name, prompt="A list is", temperature=0, stream=True, logprobs=2)
        chunks = list(streamed)
        greedy = ours.generate("A list is", do_sample=False)  # the server formats completions prompts too
        assert "".join(c.choices[0].text for c in chunks) == greedy.text
        scored = [lp for c in chunks if c.choices[0].logprobs for lp in c.choices[0].logprobs.token_logprobs or []]
        generated = greedy.completions[0].token_ids
        reference = ours.logprobs(ours.encode("A list is") + generated).logprobs[-len(generated) :]
        assert len(scored) == len(generated) and scored == pytest.approx(reference, abs=1e-3)  # vLLM's, raw logits
        with pytest.raises(openai.BadRequestError, match="echo is not available on the vllm engine"):
            client.completions.create(model=name, prompt="x", echo=True, max_tokens=2)


@pytest.mark.slow
@needs_vllm
def test_tensor_parallel_2_gives_the_same_tokens(tmp_path_factory: pytest.TempPathFactory) -> None:
    from modeldeck import runtime

    card, folder = tiny_vllm_checkpoint("llama", tmp_path_factory)
    ours = runtime.load(card, weights=folder, dtype="float32", device="cpu")
    with runtime.load(
        card, weights=folder, dtype="float32", device="cpu", engine="vllm", tensor_parallel_size=2,
        vllm_args=["--enforce-eager"],
    ) as theirs:  # fmt: skip
        assert theirs.tensor_parallel_size == 2
        for prompt in PROMPTS:
            mine = ours.generate(prompt, raw=True, do_sample=False).completions[0].token_ids
            assert theirs.generate(prompt, raw=True, do_sample=False).completions[0].token_ids == mine
        pid = theirs.server.process.pid
    assert group_gone(pid)


@pytest.mark.slow
@needs_vllm
def test_a_real_vllm_refusing_its_arguments_is_shown_and_cleaned_up(neox_64: tuple[Any, Path]) -> None:
    from modeldeck import runtime
    from modeldeck.runtime.vllm import EngineStartError

    card, folder = neox_64
    with pytest.raises(EngineStartError) as raised:
        runtime.load(card, weights=folder, device="cpu", engine="vllm", vllm_args=["--kv-cache-dtype=bogus"])
    assert "vLLM exited with code" in str(raised.value) and "bogus" in str(raised.value)
    assert group_gone(raised.value.pid) and port_free(raised.value.port)


def vllm_processes(marker: str) -> list[int]:
    """Processes whose command line names `marker` (vLLM's model folder: modeldeck-vllm-CARD-...)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
@needs_vllm
def test_modeldeck_serve_engine_vllm_command(tmp_path: Path, neox_64: tuple[Any, Path]) -> None:
    """`modeldeck serve CARD.yaml --engine vllm` as a real process: it announces vLLM, answers with modeldeck's
    tokens, and SIGTERM stops it with every vLLM process."""
    from modeldeck import runtime

    card, folder = neox_64
    card_file = tmp_path / "card.yaml"
    card_file.write_text(yaml.safe_dump(card.model_dump(mode="json", exclude_none=True)), encoding="utf-8")
    args = ["serve", str(card_file), "--weights", str(folder)]
    args += ["--engine", "vllm", "--dtype", "float32", "--port", "0", "--vllm-arg=--enforce-eager"]
    marker = f"modeldeck-vllm-{card.id}-"
    others = set(vllm_processes(marker))  # a module fixture's vLLM may serve the same card id meanwhile
    with serve_process(args) as served:
        assert set(vllm_processes(marker)) - others
        body = {"model": card.id, "prompt": "The for statement", "max_tokens": 12, "temperature": 0, "raw": True}
        answer = httpx.post(f"{served.url}/v1/completions", json=body, timeout=120).json()
        ours = runtime.load(card, weights=folder, dtype="float32", device="cpu")
        assert answer["choices"][0]["text"] == ours.generate("The for statement", raw=True, max_new_tokens=12).text
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0
    log = served.log
    assert f"serving {card.id} (vLLM on cpu, tensor parallel 1, float32;" in log and "Traceback" not in log
    assert not set(vllm_processes(marker)) - others  # the API server, its engine core and worker all ended
