"""Triton Inference Server, run from the `tritonserver` binary inside the nvidia-pytriton wheel.

No Docker and no pytriton import: the wheel's server folder is copied once into a cache dir
(with the python-backend stub for this interpreter) and the binary is started directly.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from stack.ports import free_ports
from stack.process import ManagedProcess, ServiceStartError
from stack.service import Service

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
_PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
_HTTP_TIMEOUT_S = 5.0


def cache_dir() -> Path:
    return Path(os.environ.get("RECSYS_CACHE_DIR", Path.home() / ".cache" / "recsys"))


def _pytriton_dir() -> Path:
    """The installed `pytriton` package folder, found without importing it (importing pytriton
    pulls in its whole runtime, which we do not need)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceStartError(
            "nvidia-pytriton is not installed in this environment (it carries the tritonserver "
            "binary): run scripts/setup.sh"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def triton_unavailable_reason() -> str | None:
    """Why Triton cannot run here, or None if the wheel's server and stub are present."""
    try:
        wheel = _pytriton_dir()
    except ServiceStartError as e:
        return str(e)
    server = wheel / "tritonserver" / "bin" / "tritonserver"
    if not server.is_file():
        return f"{server} is missing"
    if not _stub_source(wheel).is_file():
        return f"no python-backend stub for Python {_PY_VERSION} in {wheel}"
    return None


def _stub_source(wheel: Path) -> Path:
    return wheel / "tritonserver" / "python_backend_stubs" / _PY_VERSION / "triton_python_backend_stub"


def prepare_server_dir() -> Path:
    """Return a writable copy of the wheel's tritonserver folder, with the python-backend stub
    for this interpreter in backends/python/. Created once per pytriton and Python version.

    Built in a temporary sibling and renamed into place, so concurrent callers (parallel test
    workers, two shells) never see a half-copied folder; the loser of the race discards its copy.
    """
    wheel = _pytriton_dir()
    version = importlib.metadata.version("nvidia-pytriton")
    target = cache_dir() / f"tritonserver-{version}-py{_PY_VERSION}"
    if (target / "bin" / "tritonserver").is_file():
        return target

    reason = triton_unavailable_reason()
    if reason:
        raise ServiceStartError(reason)
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("preparing Triton server folder %s (one-time copy from the pytriton wheel)", target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        staged = tmp / "server"
        shutil.copytree(wheel / "tritonserver", staged, symlinks=True)
        stub_dest = staged / "backends" / "python" / "triton_python_backend_stub"
        shutil.copy2(_stub_source(wheel), stub_dest)
        stub_dest.chmod(0o755)
        try:
            os.rename(staged, target)
        except OSError:
            if not (target / "bin" / "tritonserver").is_file():
                raise
            # Another process finished first; its copy is identical.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _server_env() -> dict[str, str]:
    """Environment for tritonserver and, through it, the python-backend stubs.

    The stub embeds Python in *isolated* mode (pybind11's default): it ignores PYTHONPATH and
    finds its prefix by looking up `python3` on PATH. So this interpreter's bin/ goes first on
    PATH, which makes the stub use this virtualenv's site-packages (torch, numpy); the repo
    root is reached through the stub's '' (current directory) path entry, see `start()`.
    """
    wheel = _pytriton_dir()
    env = dict(os.environ)
    lib_dirs = [str(wheel.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR")]
    if env.get("LD_LIBRARY_PATH"):
        lib_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Not read by the isolated stub, but by anything else Triton may start (and harmless).
    env["PYTHONPATH"] = os.pathsep.join(
        dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                       str(REPO_ROOT)])
    )
    return env


class TritonServer(Service):
    """A Triton server on free ports serving `model_repository`.

    With model_control_mode="explicit" (the default) models load at start-up only if named in
    `load_models` (None = every model in the repository) and later via load_model/unload_model.
    Start-up fails with ServiceStartError, naming the model and Triton's reason, if a model that
    should load does not.
    """

    name = "Triton"
    stop_timeout_s = 30

    def __init__(
        self,
        model_repository: Path,
        *,
        log_path: Path | None = None,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        model_control_mode: str = "explicit",
        load_models: list[str] | None = None,
        startup_timeout_s: float = 180,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        spare = free_ports(3)
        self.http_port = http_port or spare[0]
        self.grpc_port = grpc_port or spare[1]
        self.metrics_port = metrics_port or spare[2]
        self.model_control_mode = model_control_mode
        self.load_models = list(load_models) if load_models is not None else None
        super().__init__(log_path=log_path or Path(tempfile.mkdtemp(prefix="tritonserver-"))
                         / "tritonserver.log", startup_timeout_s=startup_timeout_s)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _argv(self, server_dir: Path) -> list[str]:
        argv = [
            str(server_dir / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={server_dir / 'backends'}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            f"--model-control-mode={self.model_control_mode}",
            # Keep serving when a model fails, so readiness can report *why* from the
            # repository index instead of a bare "exited with code 1".
            "--exit-on-error=false",
        ]
        if self.model_control_mode == "explicit":
            for name in self.load_models if self.load_models is not None else ["*"]:
                argv.append(f"--load-model={name}")
        return argv

    def _new_process(self) -> ManagedProcess:
        if not self.model_repository.is_dir():
            raise ServiceStartError(f"model repository {self.model_repository} does not exist")
        server_dir = prepare_server_dir()
        return ManagedProcess(
            "tritonserver",
            self._argv(server_dir),
            self.log_path,
            env=_server_env(),
            # The stubs' sys.path starts with '' (the working directory): running from the
            # repo root lets python models import the project's packages (features, export).
            cwd=REPO_ROOT,
            stop_signal=signal.SIGINT,  # Triton shuts down gracefully on SIGINT
        )

    def _where(self) -> str:
        return f"at {self.http_url} (grpc {self.grpc_url}, metrics port {self.metrics_port})"

    # --- HTTP API ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 timeout_s: float = _HTTP_TIMEOUT_S) -> tuple[int, Any]:
        """(status, decoded JSON or None). HTTP error statuses are returned, not raised."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.http_url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            payload = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            payload = raw.decode(errors="replace")
        return status, payload

    def repository_index(self) -> list[dict[str, Any]]:
        """Triton's repository index: [{"name", "version", "state", "reason"}, ...]."""
        status, payload = self._request("POST", "/v2/repository/index", {})
        if status != 200:
            raise RuntimeError(f"repository index failed: HTTP {status} {payload}")
        return list(payload or [])

    def is_model_ready(self, name: str, version: str = "") -> bool:
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/ready"
        return self._request("GET", path)[0] == 200

    def load_model(self, name: str, timeout_s: float = 120) -> None:
        """Load (or reload, picking up new versions) a model; raise with Triton's reason if it
        fails. Blocks until Triton has finished loading."""
        status, payload = self._request(
            "POST", f"/v2/repository/models/{name}/load", timeout_s=timeout_s
        )
        if status != 200:
            raise RuntimeError(f"loading model {name!r} failed: HTTP {status}: {_error(payload)}")

    def unload_model(self, name: str, timeout_s: float = 60) -> None:
        status, payload = self._request(
            "POST", f"/v2/repository/models/{name}/unload", timeout_s=timeout_s
        )
        if status != 200:
            raise RuntimeError(f"unloading model {name!r} failed: HTTP {status}: {_error(payload)}")

    def _is_ready(self) -> bool:
        # Raises URLError / ConnectionError while the server is still coming up: not ready yet.
        if self._request("GET", "/v2/health/live", timeout_s=1)[0] != 200:
            return False
        if not self._models_ready(self.repository_index()):
            return False
        return self._request("GET", "/v2/health/ready", timeout_s=1)[0] == 200

    def _models_ready(self, index: list[dict[str, Any]]) -> bool:
        """True when every model that should load is READY; raises if one failed to load."""
        if self.model_control_mode == "explicit" and self.load_models is not None:
            expected = self.load_models
        else:
            expected = sorted({m["name"] for m in index})
        all_ready = True
        for name in expected:
            entries = [m for m in index if m.get("name") == name]
            if any(m.get("state") == "READY" for m in entries):
                continue
            failed = [m for m in entries if m.get("state") == "UNAVAILABLE"]
            if failed:
                reasons = "; ".join(
                    f"version {m.get('version', '?')}: {m.get('reason') or 'no reason given'}"
                    for m in failed
                )
                raise ServiceStartError(f"model {name!r} failed to load: {reasons}")
            if not entries:
                raise ServiceStartError(
                    f"model {name!r} is not in the repository {self.model_repository}"
                )
            all_ready = False  # still loading
        return all_ready


def _error(payload: Any) -> str:
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return str(payload)
