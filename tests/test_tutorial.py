"""The tutorial cannot rot: every command in docs/tutorial/index.md is run here, in order, against the
real service (tests/live.py serves it as `make run` does), and every answer it shows is checked.

The tutorial's fenced blocks say what to do with them:

- ``sh``: commands, run in order by bash in one working directory (variables exported by one block
  are seen by the next), with the service's address ``127.0.0.1:8000`` replaced by the live
  server's and ``LOYALTY_DATABASE_URL`` naming its database;
- ``json title="answer"`` right after one: the last JSON document the commands printed must hold
  what it shows (objects may have more keys; ``"..."`` stands for any value, and as a list's last
  item for any further items);
- ``text title="output"`` right after one: each line it shows is a line the commands printed;
- ``shell title="terminal 1"``: ``make run`` alone, which the live server stands for.

The Chinese tutorial (docs/zh/tutorial.md) must show exactly the same blocks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.live import BIN, ROOT, LiveServer

TUTORIAL = ROOT / "docs" / "tutorial" / "index.md"
TUTORIAL_ZH = ROOT / "docs" / "zh" / "tutorial.md"
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.S | re.M)


def blocks(path: Path) -> list[tuple[str, str]]:
    """The page's fenced blocks, as (info string, body)."""
    return [(m["info"].strip(), m["body"]) for m in FENCE.finditer(path.read_text(encoding="utf-8"))]


def steps(path: Path) -> list[tuple[str, str | None, str | None]]:
    """(commands, what the answer must hold, its kind) for each ``sh`` block, in order."""
    out: list[tuple[str, str | None, str | None]] = []
    for info, body in blocks(path):
        if info == "sh":
            out.append((body, None, None))
        elif info in ('json title="answer"', 'text title="output"'):
            assert out and out[-1][1] is None, f"{path}: an answer that follows no command:\n{body}"
            out[-1] = (out[-1][0], body, info.split()[0])
        elif info == 'shell title="terminal 1"':
            assert body.strip() == "make run", f"{path}: the only command not run here is make run: {body}"
        else:
            raise AssertionError(f"{path}: a block the test would not run or check: ```{info}")
    return out


def holds(shown: Any, actual: Any, where: str = "$") -> None:
    """Fail unless ``actual`` holds what the tutorial shows."""
    if shown == "...":
        return
    if isinstance(shown, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, value in shown.items():
            assert key in actual, f"{where}: no {key!r} in {actual!r}"
            holds(value, actual[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {actual!r}"
        more = bool(shown) and shown[-1] == "..."
        items = shown[:-1] if more else shown
        assert len(actual) >= len(items) if more else len(actual) == len(items), f"{where}: {actual!r}"
        for i, (a, b) in enumerate(zip(items, actual, strict=False)):
            holds(a, b, f"{where}[{i}]")
    else:
        assert shown == actual, f"{where}: the tutorial shows {shown!r}, the service answered {actual!r}"


def last_json(text: str) -> Any:
    decoder, docs, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)
    assert docs, "the commands printed no JSON"
    return docs[-1]


def test_the_steps_are_read_as_the_tutorial_means_them() -> None:
    found = steps(TUTORIAL)
    assert len(found) >= 15
    assert sum(1 for _, answer, _ in found if answer) >= 14, "the steps show their answers"
    holds(json.loads('{"a": [1, "..."], "b": "..."}'), {"a": [1, 2, 3], "b": None, "c": 4})
    with pytest.raises(AssertionError):
        holds({"a": [1]}, {"a": [1, 2]})
    with pytest.raises(AssertionError):
        holds({"balance": 300}, {"balance": 301})


def test_the_chinese_tutorial_runs_the_same_commands() -> None:
    assert blocks(TUTORIAL_ZH) == blocks(TUTORIAL)


def test_every_command_of_the_tutorial_does_what_it_says(live: LiveServer, tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(BIN.parent)
    state = tmp_path / ".state"
    state.write_text("")
    address = live.url.removeprefix("http://")
    env = {**os.environ, "LOYALTY_DATABASE_URL": live.database_url}
    for number, (commands, answer, kind) in enumerate(steps(TUTORIAL), 1):
        script = "\n".join(
            [
                "set -euo pipefail",
                f"source {state}",
                commands.replace("127.0.0.1:8000", address),
                f"export -p > {state}",
            ]
        )
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False
        )
        context = f"step {number}:\n{commands}\nprinted:\n{done.stdout}\n{done.stderr}\nserver log:\n{live.log_tail()}"
        assert done.returncode == 0, context
        if kind == "json":
            try:
                holds(json.loads(answer or ""), last_json(done.stdout))
            except AssertionError as err:
                raise AssertionError(f"{err}\n{context}") from None
        elif kind == "text":
            printed = done.stdout.splitlines()
            for line in (answer or "").splitlines():
                assert line in printed, f"{line!r} was not printed\n{context}"
