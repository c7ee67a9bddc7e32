"""The dev container (Codespaces, VS Code) sets the project up with the README's own command."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVCONTAINER = ROOT / ".devcontainer" / "devcontainer.json"


def load_jsonc(text: str) -> dict:
    """devcontainer.json is JSON with comments and trailing commas: drop both, keep strings."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        else:
            out.append(c)
            i += 1
    return json.loads(re.sub(r",(\s*[}\]])", r"\1", "".join(out)))


def test_load_jsonc_reads_comments_and_trailing_commas():
    text = '{\n  // a comment\n  "a": "http://x//y", /* more */ "b": [1, 2,],\n}'
    assert load_jsonc(text) == {"a": "http://x//y", "b": [1, 2]}


@pytest.fixture(scope="module")
def devcontainer() -> dict:
    return load_jsonc(DEVCONTAINER.read_text())


def readme_commands() -> set[str]:
    """Every command the README shows as code: fenced block lines and inline code spans."""
    text = (ROOT / "README.md").read_text()
    commands = set()
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                commands.add(" ".join(line.split()))
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    commands |= {" ".join(span.split()) for span in re.findall(r"`([^`\n]+)`", prose)}
    return commands


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M))


def post_create_command(devcontainer: dict) -> str:
    command = devcontainer["postCreateCommand"]
    if isinstance(command, list):  # the spec's array form: one command, no shell
        command = shlex.join(command)
    assert isinstance(command, str), "postCreateCommand should be the README's one command"
    return " ".join(command.split())


def test_post_create_command_is_the_readmes_set_up_command(devcontainer):
    command = post_create_command(devcontainer)
    assert command in readme_commands(), (
        f"postCreateCommand {command!r} is not a command the README shows; "
        "the dev container must set up the way the README tells a learner to"
    )
    argv = shlex.split(command)
    assert argv[0] == "make" and len(argv) == 2, f"expected `make <target>`, got {command!r}"
    assert argv[1] in make_targets(), f"the Makefile has no target {argv[1]!r}"
    if shutil.which("make"):  # make itself agrees the target exists (a dry run changes nothing)
        dry = subprocess.run(["make", "-n", argv[1]], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr


def test_the_set_up_target_builds_the_venv_the_editor_uses(devcontainer):
    makefile = (ROOT / "Makefile").read_text()
    venv = re.search(r"^VENV\s*\?=\s*(\S+)", makefile, flags=re.M).group(1)
    target = shlex.split(post_create_command(devcontainer))[1]
    rule = re.search(rf"^{re.escape(target)}\s*:(.*)$", makefile, flags=re.M)
    assert rule, f"the Makefile has no target {target!r}"
    assert "$(VENV)" in rule.group(1), f"`make {target}` does not build $(VENV)"
    settings = devcontainer["customizations"]["vscode"]["settings"]
    interpreter = settings["python.defaultInterpreterPath"]
    wanted = f"${{containerWorkspaceFolder}}/{venv}/bin/python"
    assert interpreter == wanted, f"VS Code should use {wanted}, the venv `make {target}` builds"


def test_the_image_is_the_locks_python(devcontainer):
    lock = (ROOT / "requirements.lock").read_text()
    python = re.search(r"--python-version[ =](\d+\.\d+)", lock).group(1)
    image = devcontainer["image"]
    assert image.startswith("mcr.microsoft.com/devcontainers/python:"), image
    tag = image.rsplit(":", 1)[1]
    assert re.search(rf"(^|-){re.escape(python)}(-|$)", tag), (
        f"{image} is not Python {python}, the lock's Python"
    )


def test_jupyterlabs_port_is_forwarded(devcontainer):
    from jupyter_server.serverapp import ServerApp

    lab_recipe = re.search(r"^lab\s*:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), flags=re.M)
    port = re.search(r"--(?:ServerApp\.)?port[ =](\d+)", lab_recipe.group(1))
    port = int(port.group(1)) if port else ServerApp.port_default_value  # 8888
    assert port in devcontainer["forwardPorts"], f"`make lab` listens on {port}: forward it"
    assert str(port) in devcontainer.get("portsAttributes", {})
