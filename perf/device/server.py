"""The bundle on the machine that runs it: unpack, library paths, and a tritonserver with
explicit model control. Standard library only (the GPU machine has nothing of ours installed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from perf.device import plan as P


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (pack.py writes it into the manifest, ``unpack`` checks it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unpack(bundle: Path, work: Path) -> dict:
    """Check the manifest's checksums and unpack both tarballs into ``work``; returns the manifest."""
    manifest = json.loads((bundle / P.MANIFEST).read_text())
    work.mkdir(parents=True, exist_ok=True)
    for name, meta in manifest["files"].items():
        path = bundle / name
        if sha256(path) != meta["sha256"]:
            raise RuntimeError(f"{path}: checksum differs from the manifest (a partial copy?)")
        if shutil.which("tar") and shutil.which("xz"):
            subprocess.run(["tar", "-C", str(work), "-xJf", str(path)], check=True,
                           env={**os.environ, "XZ_OPT": "-T0"})
        else:
            with tarfile.open(path, "r:xz") as tar:
                tar.extractall(work, filter="tar")
    return manifest


def python_libdir() -> str | None:
    """Where this interpreter's libpython lives (the python-backend stub links it)."""
    return sysconfig.get_config_var("LIBDIR")


def library_env(triton: Path) -> dict[str, str]:
    """Environment for tritonserver, its python-backend stubs and perf_analyzer.

    The stub embeds Python in isolated mode and finds its prefix from ``python3`` on PATH, so this
    interpreter's bin/ goes first: the stubs then import this interpreter's torch and numpy.
    """
    env = dict(os.environ)
    dirs = [str(triton / "lib"), str(triton / "nvidia_pytriton.libs"), python_libdir()]
    if env.get("LD_LIBRARY_PATH"):
        dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in dirs if d)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def missing_libraries(binary: Path, env: dict[str, str]) -> list[str]:
    """Sonames ``ldd`` cannot resolve for ``binary`` under ``env`` (empty if ldd is absent)."""
    if not shutil.which("ldd"):
        return []
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env, timeout=30)
    return sorted({line.split("=>")[0].strip() for line in proc.stdout.splitlines()
                   if "not found" in line})


LIBPYTHON_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/local/lib", "/usr/lib", "/opt/*/lib",
                  "/opt/*/*/lib", "/root/.local/share/uv/python/*/lib", "/opt/conda/lib")


def find_library(soname: str, patterns: tuple[str, ...] = LIBPYTHON_DIRS) -> Path | None:
    """The first folder among ``patterns`` (globs) that holds ``soname``."""
    import glob

    for pattern in patterns:
        for folder in sorted(glob.glob(pattern)):
            if (Path(folder) / soname).exists():
                return Path(folder)
    return None


def with_fallback(env: dict[str, str], triton: Path, binaries: list[Path]) -> tuple[dict, dict]:
    """Add ``triton/fallback`` (the wheel's OpenSSL) to the library path only if a binary lacks a
    library it holds, and the folder of a libpython the stub lacks if one is found on the machine.
    Returns (env, {binary: still missing})."""
    missing = {b.name: missing_libraries(b, env) for b in binaries}
    fallback = triton / "fallback"
    held = {p.name for p in fallback.iterdir()} if fallback.is_dir() else set()
    extra = [str(fallback)] if any(set(m) & held for m in missing.values()) else []
    for soname in sorted({s for m in missing.values() for s in m if s.startswith("libpython")}):
        folder = find_library(soname)
        if folder is not None:
            extra.append(str(folder))
    if extra:
        env = {**env, "LD_LIBRARY_PATH": os.pathsep.join([env["LD_LIBRARY_PATH"], *extra])}
        missing = {b.name: missing_libraries(b, env) for b in binaries}
    return env, missing


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Triton:
    """tritonserver with ``--model-control-mode=explicit``: nothing loads until ``load``."""

    def __init__(self, server_dir: Path, repository: Path, env: dict[str, str], log_path: Path,
                 cwd: Path) -> None:
        self.server_dir, self.repository, self.env = server_dir, repository, env
        self.log_path, self.cwd = log_path, cwd
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.proc: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def argv(self) -> list[str]:
        return [str(self.server_dir / "bin" / "tritonserver"),
                f"--model-repository={self.repository}",
                f"--backend-directory={self.server_dir / 'backends'}",
                f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                f"--metrics-port={self.metrics_port}", "--http-address=127.0.0.1",
                "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                "--model-control-mode=explicit", "--exit-on-error=false"]

    def start(self, timeout_s: float = 60) -> float:
        """Start and wait until live; returns the seconds it took."""
        started = time.perf_counter()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        # The stubs' sys.path starts with '' (their working directory): the repository root, so
        # python models could import the project's packages as they do in stack/triton.py.
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.cwd, start_new_session=True)
        log.close()
        while time.perf_counter() - started < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            try:
                if self._request("GET", "/v2/health/live", timeout_s=1)[0] == 200:
                    return time.perf_counter() - started
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"tritonserver not live after {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def _request(self, method: str, path: str, timeout_s: float = 10) -> tuple[int, object]:
        body = b"{}" if method == "POST" else None
        req = urllib.request.Request(self.http_url + path, data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return status, raw.decode(errors="replace")

    def load(self, name: str, timeout_s: float) -> float:
        """Load ``name`` (blocks until loaded); raises with Triton's reason. Returns seconds."""
        started = time.perf_counter()
        status, payload = self._request("POST", f"/v2/repository/models/{name}/load", timeout_s)
        if status != 200:
            raise RuntimeError(f"loading {name} failed: HTTP {status}: {payload} | {self.log_tail(3)}")
        return time.perf_counter() - started

    def unload(self, name: str) -> None:
        self._request("POST", f"/v2/repository/models/{name}/unload", timeout_s=60)

    def stats(self, name: str) -> dict:
        """Cumulative inference and execution counts of ``name`` (mean batch = their ratio)."""
        status, payload = self._request("GET", f"/v2/models/{name}/stats")
        if status != 200 or not isinstance(payload, dict):
            return {}
        stats = payload["model_stats"][0]
        return {"inference_count": int(stats.get("inference_count", 0)),
                "execution_count": int(stats.get("execution_count", 0))}

    def stop(self, timeout_s: float = 30) -> str:
        """SIGINT (Triton's graceful stop), SIGKILL of the whole group if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return "not running"
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout_s)
            return f"stopped (exit {self.proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            return "killed after SIGINT timed out"
