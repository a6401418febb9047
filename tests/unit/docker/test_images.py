"""The gateway and feature-service images, without Docker: what their Dockerfiles copy exists and
survives the build-context filter, the code they run imports nothing the image does not have, and
their dependency pins are the repository's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.unit.docker._support import (
    DOCKER,
    REPO,
    DockerIgnore,
    copied_files,
    copy_instructions,
    parse_dockerfile,
)

# image -> (Dockerfile, requirements file, modules its processes import at start-up)
IMAGES = {
    "gateway": ("gateway.Dockerfile", "requirements-gateway.txt",
                # gateway.grpc_server is imported inside the lifespan when the gRPC port is on
                ["gateway.__main__", "gateway.app", "gateway.grpc_server"]),
    "feature_service": ("feature_service.Dockerfile", "requirements-features.txt",
                        ["feature_service.__main__"]),
}
# Imported by grpcio only if installed (a try/except inside grpc), not needed at run time.
OPTIONAL_IMPORTS = {"grpc_tools"}
# What the slim images exist to leave out.
HEAVY = {"torch", "nvidia", "faiss", "pandas", "pytriton", "matplotlib", "pyarrow"}

image_names = pytest.mark.parametrize("image", sorted(IMAGES))


def _instructions(image: str):
    return parse_dockerfile(DOCKER / IMAGES[image][0])


def _requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


@image_names
def test_the_image_is_a_slim_python_running_as_a_user(image):
    instructions = _instructions(image)
    args = dict(i.arguments.split("=", 1) for i in instructions if i.keyword == "ARG" and "=" in i.arguments)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)],
                  next(i.arguments for i in instructions if i.keyword == "FROM"))
    assert base.startswith("python:3.11-slim")
    user = [i.arguments for i in instructions if i.keyword == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    keywords = {i.keyword for i in instructions}
    assert {"HEALTHCHECK", "EXPOSE", "CMD"} <= keywords
    cmd = json.loads(next(i.arguments for i in instructions if i.keyword == "CMD"))
    assert cmd == ["python", "-m", image]  # exec form: python gets SIGTERM
    healthcheck = next(i.arguments for i in instructions if i.keyword == "HEALTHCHECK")
    probe = json.loads(healthcheck[healthcheck.index("CMD") + 3:].strip())
    assert probe[1] in copied_files(copy_instructions(instructions))
    assert probe[2] == image


@image_names
def test_every_copy_source_exists_and_reaches_the_build_context(image):
    dockerfile = DOCKER / IMAGES[image][0]
    ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
    ignore = DockerIgnore(ignore_file.read_text())
    copies = copy_instructions(parse_dockerfile(dockerfile))
    assert copies
    for sources, _ in copies:
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
    files = copied_files(copies)
    kept_out = sorted(path for path in files.values() if ignore.excluded(path))
    assert kept_out == [], f"{ignore_file.name} drops files the Dockerfile copies: {kept_out}"
    for heavy in (".venv", "model_repository/x", "build/x", "tests/unit/conftest.py",
                  "export/__init__.py", "export/model/towers.py",
                  "gateway/__pycache__/app.cpython-311.pyc", ".git/HEAD"):
        assert ignore.excluded(heavy), heavy


@image_names
def test_the_pins_are_the_repositorys(image):
    pinned = {canonicalize_name(r.name): r.specifier for r in _requirements(REPO / "requirements.txt")}
    for requirement in _requirements(DOCKER / IMAGES[image][1]):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is not in requirements.txt"
        assert str(requirement.specifier).startswith("==")
        assert requirement.specifier == pinned[name], requirement.name


def _closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution the requirements install, extras included (from installed metadata)."""
    seen: set[str] = set()
    todo = [(r.name, frozenset(r.extras)) for r in requirements]
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), extras)
        if key in seen:
            continue
        seen.add(key)
        for line in requires(name) or []:
            dep = Requirement(line)
            environments = [{"extra": e} for e in extras] or [{"extra": ""}]
            if dep.marker is None or any(dep.marker.evaluate(env) for env in environments):
                todo.append((dep.name, frozenset(dep.extras)))
    return {name for name, _ in seen}


def _imports(modules: list[str]) -> dict:
    """Import ``modules`` in a fresh interpreter: first-party files and third-party top levels."""
    script = f"""
import importlib, json, sys
from pathlib import Path
before = set(sys.modules)
for name in {modules!r}:
    importlib.import_module(name)
root = Path.cwd().resolve()
first, third = set(), set()
for name, module in list(sys.modules.items()):
    if name in before:
        continue
    file = getattr(module, "__file__", None)
    if file and Path(file).resolve().is_file() and Path(file).resolve().is_relative_to(root):
        first.add(Path(file).resolve().relative_to(root).as_posix())
    elif name.split(".")[0] not in sys.stdlib_module_names:
        third.add(name.split(".")[0])
print(json.dumps({{"first": sorted(first), "third": sorted(third)}}))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


@image_names
def test_what_the_service_imports_is_in_the_image(image):
    """First-party modules come from the COPY instructions, third-party ones from the requirements
    file (and what it pulls in): an import added to gateway/ that needs torch fails here, not in
    production."""
    dockerfile, requirements_file, modules = IMAGES[image]
    imported = _imports(modules)
    copied = set(copied_files(copy_instructions(parse_dockerfile(DOCKER / dockerfile))).values())
    missing = sorted(set(imported["first"]) - copied)
    assert missing == [], f"imported but not copied into the {image} image: {missing}"
    installed = _closure(_requirements(DOCKER / requirements_file))
    distributions = packages_distributions()
    for top in imported["third"]:
        if top in OPTIONAL_IMPORTS or top not in distributions:
            continue  # optional, or not from a distribution (e.g. cython_runtime)
        providers = {canonicalize_name(d) for d in distributions[top]}
        assert providers & installed, f"{image} imports {top} ({providers}): not in {requirements_file}"
    assert not HEAVY & set(imported["third"]), f"{image} pulls in {HEAVY & set(imported['third'])}"


def test_serving_contract_stays_light():
    """The gateway image has no export/: the serving contract it shares with the exporter lives
    in features/contract.py, which must import nothing heavy (torch) and no other project module."""
    imported = _imports(["features.contract"])
    assert set(imported["first"]) == {"features/__init__.py", "features/contract.py"}
    assert imported["third"] == []


# --- docker/healthcheck.py -----------------------------------------------------------------------

def _load_healthcheck():
    import importlib.util

    spec = importlib.util.spec_from_file_location("recsys_healthcheck", DOCKER / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def server():
    statuses = {"/healthz": 200, "/metrics": 200, "/broken": 503}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(statuses.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_the_healthcheck_probes_the_services_own_ports(server, monkeypatch):
    hc = _load_healthcheck()
    assert hc.url_for("gateway", {}) == "http://127.0.0.1:8080/healthz"
    assert hc.url_for("feature_service", {"RECSYS_FEATURES_METRICS_PORT": "9200"}) == \
        "http://127.0.0.1:9200/metrics"
    monkeypatch.setenv("RECSYS_GATEWAY_PORT", str(server))
    assert hc.main(["gateway"]) == 0
    monkeypatch.setenv("RECSYS_FEATURES_METRICS_PORT", str(server))
    assert hc.main(["feature_service"]) == 0
    assert hc.main([f"http://127.0.0.1:{server}/broken"]) == 1
    assert hc.main([f"http://127.0.0.1:{server}/nowhere"]) == 1
    assert hc.main(["http://127.0.0.1:1/healthz"]) == 1  # refused
    assert hc.main([]) == 1  # usage (never 2: Docker reserves it)
