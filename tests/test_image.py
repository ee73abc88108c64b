"""The Dockerfile stays consistent with the project, checked statically: the image name and tags
that scripts/image builds are the ones deploy/k8s, the CI workflow and the injection defaults use,
the runtime user is the sidecar uid that the iptables rules exempt, the entrypoint is the console
script, the runtime stage installs what `meshgate iptables` runs and no build tools, and the build
stage copies every package source. A real build is opt-in: MESHGATE_IMAGE_BUILD=1."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshgate.control import iptables
from meshgate.control.inject import PROXY_UID, InjectConfig, init_container, sidecar_container

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]

# Debian package that provides each binary control/iptables.py may run; a new binary there must be
# added here and to the runtime stage's apt-get install.
PACKAGE_OF = {"iptables": "iptables", "ip6tables": "iptables", "ip": "iproute2", "nft": "nftables"}
BUILD_TOOLS = {
    "build-essential",
    "gcc",
    "g++",
    "make",
    "cmake",
    "git",
    "python3-dev",
    "python3-pip",
    "python3-venv",
    "libc6-dev",
    "cargo",
    "rustc",
}


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per Dockerfile instruction: comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


STAGES: dict[str, list[tuple[str, str]]] = {}
for keyword, args in instructions((ROOT / "Dockerfile").read_text()):
    if keyword == "FROM":
        name = args.split()[-1] if " AS " in args.upper() else f"stage{len(STAGES)}"
        STAGES[name.lower()] = []
    elif STAGES:
        STAGES[list(STAGES)[-1]].append((keyword, args))
RUNTIME = list(STAGES.values())[-1]  # the last stage is the image


def values(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


def apt_packages(stage: list[tuple[str, str]]) -> set[str]:
    packages: set[str] = set()
    for run in values(stage, "RUN"):
        for command in re.split(r"&&|;|\|\|", run):
            words = shlex.split(command)
            if "apt-get" in words and "install" in words:
                after = words[words.index("install") + 1 :]
                packages |= {w for w in after if not w.startswith("-")}
    return packages


def split_image(ref: str) -> tuple[str, str]:
    name, _, tag = ref.rpartition(":")
    return (name, tag) if name and "/" not in tag else (ref, "latest")


def built_tags() -> list[str]:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "image"), "--print-tags"],
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "MESHGATE_IMAGE": ""},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def container_images(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        found = [obj["image"]] if isinstance(obj.get("image"), str) and "name" in obj else []
        return found + [i for v in obj.values() for i in container_images(v)]
    if isinstance(obj, list):
        return [i for v in obj for i in container_images(v)]
    return []


def test_scripts_image_tags_the_project_version_and_latest() -> None:
    tags = built_tags()
    repo = split_image(tags[0])[0]
    assert repo == "ghcr.io/meshgate/meshgate"
    assert tags == [f"{repo}:{VERSION}", f"{repo}:latest"]


def test_every_reference_to_the_image_is_one_that_scripts_image_builds() -> None:
    tags = set(built_tags())
    repo = split_image(sorted(tags)[0])[0]
    refs: list[tuple[str, str]] = []  # (reference, where)
    for path in sorted((ROOT / "deploy" / "k8s").rglob("*.yaml")):
        where = str(path.relative_to(ROOT))
        for doc in yaml.safe_load_all(path.read_text()):
            refs += [(image, where) for image in container_images(doc)]
            for entry in (doc or {}).get("images", []) if path.name == "kustomization.yaml" else []:
                if entry.get("name") == repo:
                    refs.append((f"{entry.get('newName', repo)}:{entry.get('newTag', 'latest')}", where))
    for path in sorted((ROOT / "control").glob("*.py")):
        for image in re.findall(r"[\"']([\w.-]+(?:/[\w.-]+)*/meshgate(?::[\w.-]+)?)[\"']", path.read_text()):
            refs.append((image, str(path.relative_to(ROOT))))
    refs.append((InjectConfig().image, "InjectConfig().image"))
    ours = [(ref, where) for ref, where in refs if split_image(ref)[0].rsplit("/", 1)[-1] == "meshgate"]
    # control, webhook and the example app in deploy/k8s; the inject, cli and webhook defaults
    assert len({where for _, where in ours}) >= 6, ours
    for ref, where in ours:
        assert ref in tags, f"{where}: {ref} is not built by scripts/image ({sorted(tags)})"

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "image.yml").read_text())
    assert workflow["env"]["IMAGE"] == repo
    push = next(s for s in workflow["jobs"]["image"]["steps"] if "build-push-action" in s.get("uses", ""))
    assert push["with"]["tags"].splitlines() == [
        "${{ env.IMAGE }}:${{ steps.version.outputs.version }}",
        "${{ env.IMAGE }}:latest",
    ]


def test_runtime_user_is_the_sidecar_uid_that_iptables_exempts() -> None:
    users = values(RUNTIME, "USER")
    assert users, "the runtime stage sets no USER"
    # numeric, so that the kubelet can check runAsNonRoot without a runAsUser
    assert users[-1] in (str(PROXY_UID), f"{PROXY_UID}:{PROXY_UID}")
    assert any(f"--uid {PROXY_UID}" in run and "useradd" in run for run in values(RUNTIME, "RUN"))
    assert sidecar_container(InjectConfig(), {})["securityContext"]["runAsUser"] == PROXY_UID
    args = init_container(InjectConfig(), [8080])["args"]
    assert args[args.index("--proxy-uid") + 1] == str(PROXY_UID)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert iptables.run(["--dry-run", "--app-port", "8080"]) == 0  # the default --proxy-uid
    assert f"--uid-owner {PROXY_UID} " in out.getvalue()


def test_entrypoint_is_the_console_script() -> None:
    assert "meshgate" in PYPROJECT["project"]["scripts"]
    entrypoints = values(RUNTIME, "ENTRYPOINT")
    assert entrypoints and json.loads(entrypoints[-1]) == ["meshgate"]
    assert any("/opt/meshgate/bin" in env for env in values(RUNTIME, "ENV"))


def iptables_binaries() -> set[str]:
    """Every binary control/iptables.py runs: the commands rules() builds and literal names it looks
    up with shutil.which or runs with subprocess."""
    found = {cmd[0] for cmd in iptables.rules([8080, 9090], 15001, PROXY_UID)}
    tree = ast.parse(Path(iptables.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            first = node.args[0]
            if node.func.attr == "which" and isinstance(first, ast.Constant):
                found.add(str(first.value))
            if node.func.attr in {"run", "call", "check_call", "check_output", "Popen"}:
                if isinstance(first, ast.List) and first.elts and isinstance(first.elts[0], ast.Constant):
                    found.add(str(first.elts[0].value))
    return found


def test_runtime_stage_installs_what_meshgate_iptables_runs() -> None:
    binaries = iptables_binaries()
    assert "iptables" in binaries
    unknown = binaries - PACKAGE_OF.keys()
    assert not unknown, f"control/iptables.py runs {unknown}: add their Debian packages to PACKAGE_OF"
    installed = apt_packages(RUNTIME)
    for binary in binaries:
        assert PACKAGE_OF[binary] in installed, (
            f"{binary}: the runtime stage does not install {PACKAGE_OF[binary]}"
        )
    assert "python3" in installed  # the venv's interpreter


def test_runtime_stage_has_no_build_tools() -> None:
    assert not apt_packages(RUNTIME) & BUILD_TOOLS
    assert not any("pip install" in run for run in values(RUNTIME, "RUN"))
    copies = values(RUNTIME, "COPY")
    assert copies and all(c.startswith("--from=") for c in copies), "only built artifacts go in"
    assert len(STAGES) >= 2


def test_build_stage_copies_every_package_source_and_dockerignore_keeps_them() -> None:
    build = next(iter(STAGES.values()))
    sources = {src for c in values(build, "COPY") for src in c.split()[:-1] if not src.startswith("--")}
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"]}
    needed |= set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert needed <= sources, needed - sources
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert not {p.split("/")[0] for p in needed} & ignored
    assert {".git", ".venv", ".pytest_cache", ".mypy_cache", ".ruff_cache", "bench"} <= ignored


def test_scripts_image_falls_back_from_docker_to_podman_to_buildah() -> None:
    text = (ROOT / "scripts" / "image").read_text()
    assert os.access(ROOT / "scripts" / "image", os.X_OK)
    order = [text.index(s) for s in ("docker info", "builder=podman", "builder=buildah")]
    assert order == sorted(order)
    assert "podman build" in text and "buildah bud" in text


@pytest.mark.skipif(os.environ.get("MESHGATE_IMAGE_BUILD") != "1", reason="set MESHGATE_IMAGE_BUILD=1")
@pytest.mark.timeout(900)
def test_real_build_runs_meshgate() -> None:
    """Builds with scripts/image, then runs the image with docker or podman. MESHGATE_IMAGE_BUILD_ARGS
    go to the builder (e.g. `-v /path/to/proxy-ca.pem:/usr/local/share/ca.pem:ro` behind a proxy)."""
    image = f"localhost/meshgate-test-{uuid.uuid4().hex[:8]}"
    extra = shlex.split(os.environ.get("MESHGATE_IMAGE_BUILD_ARGS", ""))
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "image"), "--", *extra],
        capture_output=True,
        text=True,
        timeout=840,
        env={**os.environ, "MESHGATE_IMAGE": image},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    built_with = re.search(r"with (docker|podman|buildah)", out.stderr)
    assert built_with
    engine = "podman" if built_with.group(1) == "buildah" else built_with.group(1)  # same storage
    tag = f"{image}:{VERSION}"

    def run(*args: str, entrypoint: str = "meshgate") -> str:
        cmd = [engine, "run", "--rm", "--entrypoint", entrypoint, tag, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        assert "sidecar" in run("--help")
        assert "--state-dir" in run("sidecar", "--help")
        assert f"--uid-owner {PROXY_UID} " in run("iptables", "--app-port", "8080", "--dry-run")
        assert run("-u", entrypoint="id").strip() == str(PROXY_UID)
        assert run("--version", entrypoint="iptables").startswith("iptables v")
        assert run("-c", "command -v pip gcc cc || echo none", entrypoint="sh").strip() == "none"
    finally:
        subprocess.run(
            [engine, "rmi", f"{image}:{VERSION}", f"{image}:latest"], capture_output=True, timeout=120
        )
