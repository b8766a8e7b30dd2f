"""The `modeldeck` CLI, run as a real subprocess: exact output, exit codes, and no tracebacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import types

import pytest
import yaml

PYTHIA = {
    f"pythia-{size}{v}"
    for size in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
    for v in ("", "-deduped")
}
SEEDS = {"astrid-1b", "h2ogpt-oig-oasst1-falcon-40b", "aira-2-1b1", "gpt-jx-3b", "tiny-neox"} | PYTHIA


def no_traceback(result) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr


def test_list_shows_the_first_party_cards(run_cli):
    result = run_cli("list")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.strip()}
    assert set(rows) == SEEDS
    assert (
        "1.41B" in rows["pythia-1.4b"]
        and "2,048" in rows["pythia-1.4b"]
        and rows["pythia-1.4b"].split()[-1] == "pythia"
    )
    assert "8,192" in rows["gpt-jx-3b"]
    assert result.stderr == ""


def test_list_json(run_cli):
    result = run_cli("list", "--json")
    cards = {c["id"]: c for c in json.loads(result.stdout)}
    assert set(cards) == SEEDS
    assert cards["astrid-1b"]["parameters"] == 1_011_781_632
    assert cards["aira-2-1b1"]["distribution"] == "modeldeck"


def test_show_aira_has_prompt_format_and_defaults(run_cli):
    result = run_cli("show", "aira-2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for section in (
        "identity",
        "source",
        "parameters",
        "architecture",
        "tokenizer",
        "prompt format: aira",
        "generation defaults",
    ):
        assert section in out
    assert "'<|startofinstruction|>{message}<|endofinstruction|>'" in out
    assert "repetition_penalty" in out and "1.2" in out and "top_k" in out and "30" in out
    assert "1,261,545,472" in out and "1,100,068,864" in out


def test_show_json_round_trips_the_card(run_cli):
    shown = json.loads(run_cli("show", "gpt-jx-3b", "--json").stdout)
    assert shown["card"]["architecture"]["positions"] == {"kind": "alibi"}
    assert shown["computed"]["parameters"] == 2_646_255_744


def test_show_unknown_card_suggests_without_traceback(run_cli):
    result = run_cli("show", "pythia")
    assert result.returncode == 1
    no_traceback(result)
    assert "No card named 'pythia'. Did you mean: pythia-1.4b, " in result.stderr


def test_prompt_astrid_exact_bytes(run_cli):
    result = run_cli("prompt", "astrid-1b", "Why is drinking water so healthy?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "<|prompt|>Why is drinking water so healthy?<|endoftext|><|answer|>"


def test_prompt_h2ogpt_exact_bytes(run_cli):
    assert run_cli("prompt", "h2ogpt-oig-oasst1-falcon-40b", "Hi").stdout == "<human>: Hi\n<bot>:"


def test_prompt_multi_turn_from_json_on_stdin(run_cli, h2ogpt_chat):
    messages, expected = h2ogpt_chat
    result = run_cli("prompt", "h2ogpt-falcon-40b", "--messages", "-", stdin=json.dumps(messages))
    assert result.stdout == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("pythia-1.4b", "x", "--system", "Be brief."), "has no system prompt"),
        (("astrid-1b", "--messages", "[{bad json"), "--messages is not valid JSON"),
        (("astrid-1b", "--messages", '{"role": "user"}'), "must be a JSON list"),
    ],
)
def test_prompt_errors_are_one_line(run_cli, args, message):
    result = run_cli("prompt", *args)
    assert result.returncode == 1
    no_traceback(result)
    assert message in result.stderr


def test_validate_installed_cards_passes_with_warnings(run_cli):
    result = run_cli("validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "21 card(s) checked: valid (0 error(s)" in result.stdout
    # Astrid's seed sets temperature with greedy decoding; Aira sets beam options with num_beams 1.
    assert "temperature=0.3 set with do_sample false: greedy decoding ignores them" in result.stdout
    assert "length_penalty=0.3, early_stopping=True set with num_beams 1" in result.stdout


def test_validate_json(run_cli):
    report = json.loads(run_cli("validate", "--format", "json").stdout)
    assert report["ok"] is True and set(report["cards"]) == SEEDS
    assert {d["severity"] for d in report["diagnostics"]} <= {"warning", "info"}


def test_validate_a_bad_card_file(run_cli, tmp_path, card_data):
    data = card_data("astrid-1b")
    data["architecture"]["hidden_size"] = 2050
    data["architecture"]["colour"] = "blue"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    no_traceback(result)
    assert f"{path}:" in result.stderr and "architecture.colour: error: unknown field 'colour'" in result.stderr
    report = json.loads(run_cli("validate", str(path), "--format", "json").stdout)
    assert report["ok"] is False
    # Field errors come first; cross-field rules (hidden_size % heads) run once the fields are valid.
    assert [d["field"] for d in report["diagnostics"]] == ["architecture.colour"]
    assert all(d["where"] == str(path) and d["line"] for d in report["diagnostics"])


def test_validate_good_file_and_card_id(run_cli):
    from pathlib import Path

    card = Path(__file__).resolve().parent.parent / "cards" / "gpt-jx-3b.yaml"
    result = run_cli("validate", str(card), "pythia-1.4b")
    assert result.returncode == 0, result.stderr
    assert "2 card(s) checked: valid" in result.stdout


def test_yaml_syntax_error_in_validate(run_cli, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("id: x\nname: [unclosed\n")
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    no_traceback(result)
    assert f"{path}:3: error: YAML syntax error" in result.stderr


def test_schema_command_prints_the_json_schema(run_cli):
    schema = json.loads(run_cli("schema").stdout)
    assert schema["title"] == "Card" and "architecture" in schema["properties"]


def test_broken_plugins_are_reported_and_the_rest_works(run_cli, fake_site, card_data):
    fake_site.add("modeldeck-broken", {"fake_broken": "import not_installed_anywhere\n"}, {"broken": "fake_broken"})
    fake_site.add(
        "modeldeck-hookfail",
        {
            "fake_hookfail": "from modeldeck.registry import hookimpl\n\n@hookimpl\ndef register_cards(register):\n    1 / 0\n"
        },
        {"hookfail": "fake_hookfail"},
    )
    fake_site.card_plugin("modeldeck-copycat", "fake_copycat", card_data("gpt-jx-3b"))

    listed = run_cli("list")
    assert listed.returncode == 0
    no_traceback(listed)
    ids = {line.split()[0] for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert ids == SEEDS  # a copycat of a first-party card is left out, not the card
    assert "3 problem(s) loading plugins" in listed.stderr
    assert (
        "plugin broken (modeldeck-broken 1.0): error: plugin failed to import fake_broken: ModuleNotFoundError"
        in listed.stderr
    )
    assert "plugin raised in its register_cards hook: ZeroDivisionError: division by zero" in listed.stderr
    assert (
        "card 'gpt-jx-3b' from plugin fake-copycat (modeldeck-copycat 1.0) claims the name 'gpt-jx-3b' of "
        "modeldeck's own card 'gpt-jx-3b'; the plugin's card is left out" in listed.stderr
    )

    plugins = json.loads(run_cli("plugins", "--json").stdout)
    status = {p["name"]: p for p in plugins["plugins"]}
    assert status["broken"]["error"].startswith("failed to import fake_broken")
    assert status["hookfail"]["distribution"] == "modeldeck-hookfail"
    assert status["fake-copycat"]["cards"] == ["gpt-jx-3b"]

    validated = run_cli("validate")
    assert validated.returncode == 1
    no_traceback(validated)
    assert "21 card(s) checked: invalid (3 error(s)" in validated.stdout

    shown = run_cli("show", "gpt-jx-3b", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["plugin"]["distribution"] == "modeldeck"
    no_traceback(shown)


def test_env_switch_loads_no_plugins(run_cli):
    result = run_cli("list", "--json", env={"MODELDECK_PLUGINS": "none"})
    assert json.loads(result.stdout) == []


# --- running a model: the bundled demo, no network -------------------------------------------------


@pytest.fixture(scope="module")
def demo_text():
    """What the Python API generates for the README's main-job prompt, to compare the CLI with."""
    pytest.importorskip("torch")
    from modeldeck import runtime

    return runtime.load("tiny-neox", device="cpu").generate("The for statement").text


def test_generate_with_the_bundled_demo_model(run_cli, demo_text):
    result = run_cli("generate", "tiny-neox", "The for statement")
    assert result.returncode == 0, result.stderr
    assert result.stdout == demo_text + "\n"
    assert len(demo_text.split()) > 10  # it says something, in words


def test_generate_stream_and_json_agree(run_cli, demo_text):
    assert run_cli("generate", "tiny-neox", "The for statement", "--stream").stdout == demo_text + "\n"
    report = json.loads(run_cli("generate", "tiny-neox", "The for statement", "--json", "--max-new-tokens", "5").stdout)
    [completion] = report["completions"]
    assert report["card"] == "tiny-neox" and report["prompt"] == "The for statement"
    assert completion["completion_tokens"] == 5 and completion["finish_reason"] == "length"
    assert demo_text.startswith(completion["text"])


def test_generate_rejects_bad_options_in_one_line(run_cli):
    result = run_cli("generate", "tiny-neox", "x", "--temperature", "-1")
    assert result.returncode == 1
    no_traceback(result)
    assert "invalid generation option temperature=-1.0" in result.stderr


def test_chat_in_the_terminal(run_cli, demo_text):
    result = run_cli("chat", "tiny-neox", stdin="The for statement\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert "single-turn format" in result.stderr
    assert demo_text in result.stdout


def test_python_dash_m_runs_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "modeldeck.registry.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ") and "validate" in result.stdout and "serve" in result.stdout


def test_validate_counts_an_invalid_card_file_as_checked(run_cli, tmp_path, card_data):
    data = card_data("astrid-1b")
    data["architecture"]["colour"] = "blue"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert "1 card(s) checked: invalid (1 error(s), 0 warning(s))" in result.stdout
    several = run_cli("validate", str(path), "pythia-1.4b", "no-such-card")
    assert several.returncode == 1
    assert "3 card(s) checked: invalid (2 error(s), 0 warning(s))" in several.stdout
    assert "no-such-card: error: No card named 'no-such-card'." in several.stderr
    report = json.loads(run_cli("validate", str(path), "--format", "json").stdout)
    assert report["cards"] == [str(path)] and report["ok"] is False


# --- --revision on a card that lists no revisions --------------------------------------------------

NO_REVISIONS = (
    "error: card tiny-neox lists no revisions: only its own revision ('main') can be used, not 'foo'; leave out "
    "--revision foo (its weights ship in modeldeck.cards:tiny-neox)"
)


def test_a_revision_the_card_does_not_list_is_an_error_on_the_command_line(run_cli):
    refused = run_cli("download", "tiny-neox", "--revision", "foo")
    assert refused.returncode == 1 and refused.stdout == ""
    no_traceback(refused)
    assert NO_REVISIONS in refused.stderr
    assert run_cli("download", "tiny-neox", "--revision", "main").returncode == 0  # its own revision
    hub_card = run_cli("download", "aira-2-1b1", "--revision", "foo")
    assert hub_card.returncode == 1
    assert "error: card aira-2-1b1 lists no revisions: only its own revision ('main') can be used" in hub_card.stderr
    assert "to use another revision of nicholasKluge/Aira-2-1B1, list it in the card's source.revisions" in (
        hub_card.stderr
    )


def test_generate_with_a_revision_the_bundled_card_does_not_list(run_cli):
    pytest.importorskip("torch")
    result = run_cli("generate", "tiny-neox", "x", "--revision", "foo")
    assert result.returncode == 1 and result.stdout == ""
    no_traceback(result)
    assert NO_REVISIONS in result.stderr


# --- chat: Ctrl-C, /reset, /help -------------------------------------------------------------------


class FakeChatModel:
    """A multi-turn model whose first answer is stopped by Ctrl-C after "Hello"; it records what it was sent."""

    def __init__(self) -> None:
        self.card = types.SimpleNamespace(id="fake", name="fake chat", format=types.SimpleNamespace(multi_turn=True))
        self.sent: list[list[dict[str, str]]] = []

    def stream(self, conversation, system=None, **options):
        self.sent.append([dict(m) for m in conversation])
        yield "Hel"
        yield "lo"
        if len(self.sent) == 1:
            raise KeyboardInterrupt  # Ctrl-C while the first answer is written
        yield "!"


def test_chat_ctrl_c_stops_the_answer_and_keeps_the_session(monkeypatch):
    from click.testing import CliRunner

    from modeldeck.registry.cli import main

    model = FakeChatModel()
    monkeypatch.setattr("modeldeck.registry.cli.run.load_model", lambda name, options, **engine: model)
    typed = ["Hi", "/help", "More", "/reset", "Again", KeyboardInterrupt]  # then Ctrl-C at the prompt

    def fake_input(prompt: str = "") -> str:
        line = typed.pop(0)
        if line is KeyboardInterrupt:
            raise KeyboardInterrupt
        return line

    monkeypatch.setattr("builtins.input", fake_input)
    result = CliRunner().invoke(main, ["chat", "tiny-neox"])
    assert result.exit_code == 0 and result.exception is None, result.output
    assert not typed
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    assert model.sent == [
        [user("Hi")],
        [user("Hi"), {"role": "assistant", "content": "Hello"}, user("More")],  # the stopped answer stays
        [user("Again")],  # after /reset
    ]
    assert result.stdout == "Hello\nHello!\nHello!\n\n"
    assert "(answer stopped; what was written stays in the conversation (/reset forgets it))" in result.stderr
    assert "/reset         forget the conversation" in result.stderr and "/help          this list" in result.stderr
    assert "conversation forgotten: the next message starts a new one" in result.stderr
    assert "Traceback" not in result.stderr


SLOW_CHAT = """
import sys, time
from modeldeck.runtime import engine

answers = []
real_stream = engine.Model.stream


def stream(self, *args, **kwargs):
    answers.append(None)
    for piece in real_stream(self, *args, **kwargs):
        if len(answers) == 1:
            time.sleep(0.05)  # the first answer comes slowly: Ctrl-C arrives while it is written
        yield piece


engine.Model.stream = stream
from modeldeck.registry.cli import main

main(["chat", "tiny-neox"])
"""


def test_chat_ctrl_c_in_a_real_terminal_session(demo_text):
    """SIGINT to a real `modeldeck chat` process mid-answer stops the answer; the next message is answered; SIGINT
    at the prompt ends the chat without a traceback."""
    env = {k: v for k, v in os.environ.items() if k != "MODELDECK_DEBUG"}
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_CHAT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    out, err = bytearray(), bytearray()
    readers = [
        threading.Thread(target=lambda: _drain(process.stdout, out), daemon=True),
        threading.Thread(target=lambda: _drain(process.stderr, err), daemon=True),
    ]
    for reader in readers:
        reader.start()

    def wait_for(condition, what: str) -> None:
        deadline = time.monotonic() + 90
        while not condition():
            assert process.poll() is None and time.monotonic() < deadline, f"waiting for {what}: {bytes(err)!r}"
            time.sleep(0.05)

    try:
        process.stdin.write(b"The for statement\n")
        process.stdin.flush()
        wait_for(lambda: len(out) > len("> ") + 20, "the first answer")
        process.send_signal(signal.SIGINT)
        wait_for(lambda: b"(answer stopped" in err, "the stop note")
        process.stdin.write(b"The for statement\n")
        process.stdin.flush()
        wait_for(lambda: out.count(b"> ") >= 3 and out.endswith(b"> "), "the second answer and the prompt")
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    for reader in readers:
        reader.join(10)
    text, log = out.decode(), err.decode()
    assert code in (0, 130), log
    assert "Traceback" not in log and "internal error" not in log
    first, second = text.split("> ")[1:3]
    assert first.endswith("\n") and 20 <= len(first) - 1 < len(demo_text) and demo_text.startswith(first[:-1])
    assert second == demo_text + "\n"  # the session went on: the next message was answered in full


def _drain(stream, into: bytearray) -> None:
    while chunk := os.read(stream.fileno(), 4096):
        into += chunk
