"""The README's two set-up commands and CI stay in sync."""

from __future__ import annotations

import re

from conftest import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()
CI = (PROJECT_ROOT / ".ci" / "run").read_text()


def _readme_commands() -> list[str]:
    block = re.search(r"```(?:bash|sh)\n(.*?)```", README, re.S)
    assert block, "README needs a code block with the set-up commands"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_first_block_has_exactly_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert "napari-covid-attention demo" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = _readme_commands()[1]
    assert test_command in CI.splitlines()


def test_ci_installs_xvfb_for_viewer_tests():
    assert "xvfb" in CI
