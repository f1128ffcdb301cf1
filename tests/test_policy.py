"""Policy files: valid ones load, broken ones name the file, the line and the field."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from starlette.applications import Starlette

from guardrail import GuardrailMiddleware, PolicyError, load_policy

REPO = Path(__file__).resolve().parents[1]

VALID = """\
name: ok
routes:
  - path: /v1/chat/completions
judges:
  pii:
    type: pii
input:
  screens:
    - judge: pii
      timeout_s: 0.5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def only_issue(path: Path) -> tuple[int, str, str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert len(caught.value.issues) == 1, caught.value
    issue = caught.value.issues[0]
    assert issue.file == str(path)
    return issue.line, issue.field, issue.message


def test_shipped_policies_are_valid() -> None:
    for path in sorted((REPO / "policies").glob("*.yaml")):
        assert load_policy(path).name == path.stem


def test_embedded_default_is_the_shipped_default() -> None:
    assert load_policy() == load_policy(REPO / "policies" / "default.yaml")


@pytest.mark.parametrize(
    ("broken", "line", "field", "says"),
    [
        (
            VALID.replace("    type: pii", "    type: pii\n    colour: red"),
            7,
            "judges.pii.colour",
            "unknown key",
        ),
        (
            VALID.replace("timeout_s: 0.5", "timeout_s: soon"),
            10,
            "input.screens[0].timeout_s",
            "valid number",
        ),
        (
            VALID.replace("timeout_s: 0.5", "timeout_s: -1"),
            10,
            "input.screens[0].timeout_s",
            "greater than 0",
        ),
        (
            VALID.replace("- judge: pii", "- judge: pi"),
            9,
            "input.screens[0].judge",
            "unknown judge 'pi'",
        ),
        (
            VALID.replace("  - path: /v1/chat/completions", "").replace("routes:", "routes: []"),
            2,
            "routes",
            "at least 1",
        ),
        (VALID.replace("type: pii", "type: magic"), 5, "judges.pii", "does not match any"),
        (VALID.replace("name: ok", "name: ok\nname: again"), 2, "", "duplicate key 'name'"),
        (VALID.replace("routes:", "routes: ["), 3, "", "not valid YAML"),
        (VALID + "on_error: maybe\n", 11, "on_error", "'block', 'allow' or 'vote'"),
        (
            VALID.replace("    type: pii", "    type: keywords\n    patterns: ['(']"),
            7,
            "judges.pii.patterns",
            "not a valid regex",
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "negative-timeout",
        "unknown-judge",
        "empty-routes",
        "unknown-judge-type",
        "duplicate-key",
        "bad-yaml",
        "bad-enum",
        "bad-regex",
    ],
)
def test_broken_policy_names_file_line_and_field(
    tmp_path: Path, broken: str, line: int, field: str, says: str
) -> None:
    got_line, got_field, message = only_issue(write(tmp_path, broken))
    assert (got_line, got_field) == (line, field)
    assert says in message


def test_not_a_mapping(tmp_path: Path) -> None:
    assert only_issue(write(tmp_path, "- just\n- a list\n"))[2].startswith("a policy is")


def test_middleware_refuses_to_start_with_a_bad_policy(tmp_path: Path) -> None:
    with pytest.raises(PolicyError):
        GuardrailMiddleware(Starlette(), policy=write(tmp_path, VALID.replace("pii\n", "pi\n", 1)))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardrail.cli", *args], capture_output=True, text=True, cwd=REPO
    )


def test_cli_check_summarises_a_valid_policy() -> None:
    done = run_cli("check", "policies/default.yaml")
    assert done.returncode == 0, done.stderr
    assert "policy default: valid" in done.stdout
    assert "injection (injection" in done.stdout


def test_cli_check_summarises_the_panel_and_the_answer_screens(tmp_path: Path) -> None:
    path = write(tmp_path, PANEL + "output: {screens: [{judge: injection}], mode: optimistic}\n")
    done = run_cli("check", str(path))
    assert done.returncode == 0, done.stderr
    assert "panel:     a, b; majority, deadline 2.0s, no quorum: block" in done.stdout
    assert "answers:   optimistic, windows of 400 chars (overlap 64), screened by injection" in (
        done.stdout
    )


def test_cli_check_fails_with_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("timeout_s: 0.5", "timeout_s: -1"))
    done = run_cli("check", str(path))
    assert done.returncode == 2
    assert f"{path}:10: input.screens[0].timeout_s: Input should be greater than 0" in done.stderr


PANEL = """\
name: ok
routes:
  - path: /v1/chat/completions
judges:
  injection:
    type: injection
  a:
    type: llm
    model: openai/model-a
  b:
    type: llm
    model: anthropic/model-b
input:
  screens:
    - judge: injection
      timeout_s: 0.5
on_flag: vote
panel:
  judges:
    - judge: a
    - judge: b
  quorum: majority
  deadline_s: 2.0
"""


def test_panel_policy_is_valid(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, PANEL))
    assert policy.panel is not None and len(policy.panel.judges) == 2


@pytest.mark.parametrize(
    ("broken", "line", "field", "says"),
    [
        (
            PANEL.replace("  quorum: majority", "  quorum: at_least\n  k: 3"),
            23,
            "panel.k",
            "more than the panel's total weight",
        ),
        (PANEL.replace("  quorum: majority", "  quorum: at_least"), 18, "panel.k", "needs k"),
        (PANEL.replace("  quorum: majority", "  k: 1"), 22, "panel.k", "only by quorum: at_least"),
        (
            PANEL.replace("    - judge: a\n    - judge: b\n", "    []\n").replace(
                "  judges:\n    []", "  judges: []"
            ),
            19,
            "panel.judges",
            "at least 1",
        ),
        (
            PANEL.replace("    - judge: b", "    - judge: a"),
            21,
            "panel.judges[1].judge",
            "listed twice",
        ),
        (
            PANEL.replace("model: anthropic/model-b", "model: openai/model-a"),
            21,
            "panel.judges[1].judge",
            "same model",
        ),
        (
            PANEL.replace("deadline_s: 2.0", "deadline_s: 0.2"),
            23,
            "panel.deadline_s",
            "shorter than the slowest input screen",
        ),
        (
            PANEL.replace("    - judge: b", "    - judge: c"),
            21,
            "panel.judges[1].judge",
            "unknown judge 'c'",
        ),
        (
            PANEL.replace("    - judge: b", "    - judge: injection\n      samples: 2"),
            22,
            "panel.judges[1].samples",
            "answers the same every time",
        ),
        (
            PANEL.replace("    - judge: b", "    - judge: b\n      weight: 0"),
            22,
            "panel.judges[1].weight",
            "greater than 0",
        ),
        (PANEL + "  min_votes: 3\n", 24, "panel.min_votes", "more than the 2 seat"),
        (PANEL.split("panel:")[0], 17, "on_flag", "needs a panel"),
    ],
    ids=[
        "quorum-larger-than-panel",
        "at-least-without-k",
        "k-without-at-least",
        "empty-panel",
        "judge-twice",
        "same-model-twice",
        "deadline-shorter-than-screen",
        "unknown-judge",
        "samples-of-a-local-judge",
        "zero-weight",
        "min-votes-over-seats",
        "vote-without-panel",
    ],
)
def test_broken_panel_names_file_line_and_field(
    tmp_path: Path, broken: str, line: int, field: str, says: str
) -> None:
    got_line, got_field, message = only_issue(write(tmp_path, broken))
    assert says in message
    assert (got_line, got_field) == (line, field)
