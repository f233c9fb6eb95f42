"""The image's Dockerfile, read without building it: a pinned base, a non-root user, the product only.

A tag such as `python:3.11-slim` moves whenever upstream pushes; only a digest names the bytes that were
reviewed. The Dockerfile is parsed the way BuildKit reads it for these questions: continuation lines
joined, comments dropped, global `ARG` defaults substituted into `FROM`, stages split at each `FROM`.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
DEV_ONLY = ("local-dev", "dropgate_local")


@dataclass
class Stage:
    image: str  # the FROM reference with the global ARG defaults substituted
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, `\\` continuations joined."""
    found, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # a comment line inside a continued instruction is not part of it
        pending = f"{pending} {line.strip()}" if pending else line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        found.append((keyword.upper(), arguments.strip()))
        pending = ""
    return found


def substitute(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), ""), value)


def stages(text: str) -> list[Stage]:
    global_args: dict[str, str] = {}
    found: list[Stage] = []
    for keyword, arguments in instructions(text):
        if keyword == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(substitute(words[0], global_args), name))
        elif not found:
            if keyword == "ARG":  # before the first FROM: the global scope FROM lines may use
                arg_name, _, default = arguments.partition("=")
                global_args[arg_name.strip()] = default.strip().strip('"')
        else:
            found[-1].instructions.append((keyword, arguments))
    return found


def copy_sources(arguments: str) -> tuple[str | None, list[str]]:
    """(the --from of a COPY/ADD or None for the build context, its source paths)."""
    words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    origin = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
    return origin, paths[:-1]


DOCKERFILE = (REPO / "Dockerfile").read_text()
STAGES = stages(DOCKERFILE)


def test_the_parser_sees_what_buildkit_sees() -> None:
    """The check itself can fail: an unpinned base, an ARG-built reference and a late COPY are read right."""
    parsed = stages("ARG BASE=python:3.11-slim@sha256:" + "a" * 64 + "\n# note\n"
                    "FROM $BASE AS build\nRUN a \\\n  # inside\n  b\nFROM python:3.11-slim\n"
                    "COPY --from=build /app /app\nCOPY local-dev/x ./x\nUSER 10001\n")
    assert [(s.image, s.name) for s in parsed] == [("python:3.11-slim@sha256:" + "a" * 64, "build"),
                                                    ("python:3.11-slim", None)]
    assert parsed[0].instructions == [("RUN", "a b")]
    assert copy_sources(parsed[1].instructions[0][1]) == ("build", ["/app"])
    assert not DIGEST.search(parsed[1].image)


def test_every_base_image_is_pinned_by_digest() -> None:
    names = {stage.name for stage in STAGES if stage.name}
    external = [stage.image for stage in STAGES if stage.image not in names]
    assert external, "the Dockerfile has no FROM"
    unpinned = [image for image in external if not DIGEST.search(image)]
    assert not unpinned, f"pin these by digest (docker buildx imagetools inspect <tag>): {unpinned}"
    assert len(set(external)) == 1, f"every stage builds on the same pinned base (one ARG): {set(external)}"
    # An image COPY --from names directly is a base image too.
    for stage in STAGES:
        for keyword, arguments in stage.instructions:
            if keyword in ("COPY", "ADD"):
                origin, _ = copy_sources(arguments)
                assert origin is None or origin in names or DIGEST.search(origin), f"unpinned COPY --from={origin}"


def test_the_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = [arguments for keyword, arguments in STAGES[-1].instructions if keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, "a numeric UID, so Kubernetes' runAsNonRoot can check it"
    assert not group or (group.isdigit() and int(group) != 0)


@pytest.mark.parametrize("stage", range(len(STAGES)))
def test_nothing_from_local_dev_is_copied_into_the_image(stage: int) -> None:
    """The local stack and dev auth (dropgate_local, local-dev/) are development tools, never the product."""
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    context_excludes_dev = "*" in ignored and not any(line.startswith("!") and any(d in line for d in DEV_ONLY)
                                                      for line in ignored)
    for keyword, arguments in STAGES[stage].instructions:
        if keyword not in ("COPY", "ADD"):
            continue
        origin, sources = copy_sources(arguments)
        if origin is not None:
            continue  # from an earlier stage, which the same rule covers
        for source in sources:
            assert not any(d in source for d in DEV_ONLY), f"{keyword} {arguments}"
            if source.rstrip("/") in (".", "") or any(c in source for c in "*?["):
                assert context_excludes_dev, f"{keyword} {arguments} copies local-dev/: .dockerignore must leave it out"
