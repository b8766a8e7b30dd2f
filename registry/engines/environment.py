"""The virtual environment another engine runs in (vLLM, llama.cpp), without torch: where it is, whether it is
finished, and how `modeldeck engine install NAME` creates it, all or nothing.

    find_python(spec)                   $<ENGINE>_PYTHON, else the environment `install` made (finished, marked)
    install(spec, env, steps, say)      run the steps; the last one is the probe, whose output is the mark

An engine's environment is separate from modeldeck's own because its pins clash with ours (vLLM's transformers
range, llama.cpp's converter's transformers 4.57) and because it is big; modeldeck talks to it through a process.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modeldeck.registry.diagnostics import ModeldeckError

__all__ = ["INSTALLED", "EngineError", "EngineNotInstalledError", "Environment", "find_python", "install"]

INSTALLED = ".modeldeck-installed"
"""Written into the environment as `install`'s last step: an environment without it is unfinished (an install that
was killed, which no `except` can clean up after), not one to run the engine from."""

Step = list[str]


class EngineError(ModeldeckError):
    """A card, option or environment an engine cannot run with."""


class EngineNotInstalledError(EngineError):
    """No environment with the engine was found."""


@dataclass(frozen=True)
class Environment:
    """What names one engine's environment: `title` in messages (vLLM), `command` as in `modeldeck engine install
    COMMAND`, the variables that point elsewhere, the folder under the user data folder, and `probe`: Python that
    prints the engine's version and exits 0 when the environment works."""

    title: str
    command: str
    python_var: str
    home_var: str
    folder: str
    probe: str

    def default(self) -> Path:
        """Where `install` creates it: $<home_var>, else the user data folder."""
        if os.environ.get(self.home_var):
            return Path(os.environ[self.home_var]).expanduser()
        data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        return data / "modeldeck" / self.folder

    def install_hint(self) -> str:
        return f"`modeldeck engine install {self.command}`"


def python_of(env: Path) -> Path:
    return env / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def works(spec: Environment, env: Path) -> str | None:
    """The engine's version when its probe succeeds in the environment at `env`, else None."""
    done = subprocess.run([str(python_of(env)), "-c", spec.probe], capture_output=True, text=True)
    return done.stdout.strip() or "unknown" if done.returncode == 0 else None


def find_python(spec: Environment) -> Path:
    """The python of the environment the engine runs in: $<python_var>, else the one `install` made."""
    given = os.environ.get(spec.python_var)
    if given:
        path = Path(given).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise EngineNotInstalledError(
                f"{spec.python_var}={given} is not an executable python; point it at the python of an environment "
                f"with {spec.title}, or unset it and run {spec.install_hint()}"
            )
        return path
    env = spec.default()
    python = python_of(env)
    if not python.is_file():
        raise EngineNotInstalledError(
            f"{spec.title}'s environment is not installed (no {python}); create it with {spec.install_hint()} "
            f"(a virtual environment with {spec.title}), or set {spec.python_var} to the python of one"
        )
    if not (env / INSTALLED).is_file():
        raise EngineNotInstalledError(
            f"{spec.title}'s environment in {env} is unfinished (an install was interrupted): run "
            f"{spec.install_hint()} to finish it (it keeps an environment that works, and rebuilds one that does not)"
        )
    return python


def install(
    spec: Environment,
    env: Path,
    steps: Callable[[], list[Step]],
    say: Callable[[str], None] = print,
    force: bool = False,
    may_fail: Callable[[Step], bool] = lambda step: False,
) -> Path:
    """Create the environment at `env` by running `steps()` (computed once the folder is clear; the last step is
    the probe, whose output becomes the INSTALLED mark). All or nothing: a failed install removes what it made;
    one that was killed leaves no mark, and the next install rebuilds it unless the probe passes there. A step for
    which `may_fail` is true may exit non-zero. Returns the environment's python."""
    if (env / INSTALLED).is_file() and not force:
        raise EngineError(f"{env} already holds an environment; pass --force to build it again")
    if env.exists() and not force and python_of(env).is_file() and (version := works(spec, env)) is not None:
        say(f"{env} holds a working environment ({spec.command} {version}) without modeldeck's mark: kept")
        (env / INSTALLED).write_text(f"{spec.command} {version}\n", encoding="utf-8")
        return python_of(env)
    if env.exists():
        say(f"removing {env} (" + ("--force" if force else "an unfinished environment") + ")")
        shutil.rmtree(env)
    try:
        output = ""
        for step in steps():
            say("$ " + shlex.join(step))
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode and not may_fail(step):
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
                raise EngineError(
                    f"installing {spec.title} failed at `{shlex.join(step)}` (exit {done.returncode}):\n{tail}"
                )
            output = done.stdout.strip()
        say(output)
        (env / INSTALLED).write_text(output + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(env, ignore_errors=True)
        raise
    return python_of(env)
