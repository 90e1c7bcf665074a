"""A real ComfyUI server for the tests: temp base directory, this pack linked in, one random SD1.5 checkpoint.

ComfyUI is never part of this repository. It is found through the environment:

* ``COMFYUI_PATH``   -- a ComfyUI checkout (0.3.64 is what the tests were written against);
* ``COMFYUI_PYTHON`` -- its interpreter (default ``$COMFYUI_PATH/.venv/bin/python``);
* ``CARE_MODEL_CACHE`` -- where the random-weight checkpoint lives (default ``~/.cache/care-erasure/models``);
  it is generated with ComfyUI's own classes by ``make_random_model.py`` (``shared/testing``) when missing.

``tests/integration/setup_comfyui.sh`` builds all three. :func:`comfy_or_skip` gives the reason to skip when
something is absent. The server runs with ``--base-directory`` in a temporary folder that holds
``custom_nodes/<pack link>``, the test probe node, ``models/checkpoints/<link to the cached file>`` and an
empty ``models/loras``; stopping the server removes the folder (links included, never their targets).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHECKPOINT = "random_sd15.safetensors"
PACK_DIR_NAME = "CARE.erasure-pack"  # deliberately not a Python identifier: the pack must load under any name
PROBE_DIR = HERE / "care_test_probe"


@dataclass(frozen=True)
class ComfyEnv:
    root: Path
    python: Path
    checkpoint: Path


def _model_cache() -> Path:
    return Path(os.environ.get("CARE_MODEL_CACHE", Path.home() / ".cache" / "care-erasure" / "models"))


def _maker() -> Path | None:
    for candidate in (
        os.environ.get("MAKE_RANDOM_MODEL"),
        REPO.parent / "shared" / "testing" / "make_random_model.py",
        Path("/work/shared/testing/make_random_model.py"),
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def comfy_or_skip() -> tuple[ComfyEnv | None, str]:
    """The ComfyUI setup, or ``(None, reason)`` when the integration tests must skip."""
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        return None, "COMFYUI_PATH is not set (run tests/integration/setup_comfyui.sh, then export COMFYUI_PATH)"
    root_p = Path(root)
    if not (root_p / "main.py").is_file():
        return None, f"COMFYUI_PATH={root} has no main.py"
    python = Path(os.environ.get("COMFYUI_PYTHON") or root_p / ".venv" / "bin" / "python")
    if not python.exists():
        return None, f"no ComfyUI python at {python} (set COMFYUI_PYTHON)"
    ckpt = _model_cache() / "checkpoints" / CHECKPOINT
    if not ckpt.is_file():
        maker = _maker()
        if maker is None:
            return None, f"no random SD1.5 checkpoint at {ckpt} and no make_random_model.py to build it"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_name("tmp_" + ckpt.name)
        run = subprocess.run(
            [str(python), str(maker), "--family", "sd15", "--out", str(tmp), "--no-verify"],
            env={**os.environ, "COMFYUI_PATH": str(root_p)},
            capture_output=True,
            text=True,
            timeout=900,
        )
        if run.returncode != 0 or not tmp.is_file():
            return None, f"could not build the random SD1.5 checkpoint: {run.stderr[-500:]}"
        tmp.rename(ckpt)
    return ComfyEnv(root_p, python, ckpt), ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PromptFailed(AssertionError):
    pass


@dataclass
class ComfyServer:
    env: ComfyEnv
    base: Path = field(init=False)
    port: int = field(init=False)
    proc: subprocess.Popen | None = field(init=False, default=None)
    log_path: Path = field(init=False)
    _object_info: dict | None = field(init=False, default=None)

    # -- lifecycle
    def start(self, timeout: float = 240.0) -> ComfyServer:
        self.base = Path(tempfile.mkdtemp(prefix="care-comfy-"))
        for sub in ("custom_nodes", "models/checkpoints", "models/loras", "input", "output", "temp", "user"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "custom_nodes" / PACK_DIR_NAME).symlink_to(REPO, target_is_directory=True)
        (self.base / "custom_nodes" / "care_test_probe").symlink_to(PROBE_DIR, target_is_directory=True)
        (self.base / "models" / "checkpoints" / CHECKPOINT).symlink_to(self.env.checkpoint)
        self.port = free_port()
        self.log_path = self.base / "server.log"
        cmd = [
            str(self.env.python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base), "--disable-auto-launch",
            "--database-url", "sqlite:///:memory:",
        ]  # fmt: skip
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=self.env.root, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if getattr(self, "_log", None):
            self._log.close()
        if getattr(self, "base", None) and self.base.exists():
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- HTTP
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def post(self, path: str, payload: dict, timeout: float = 30):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as err:
            raise PromptFailed(f"POST {path} -> {err.code}: {err.read().decode(errors='replace')}") from err

    def object_info(self) -> dict:
        if self._object_info is None:
            self._object_info = self.get("/object_info", timeout=60)
        return self._object_info

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queue an API-format prompt and wait for its history entry; raise when it did not succeed."""
        queued = self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        if queued.get("node_errors"):
            raise PromptFailed(f"node errors: {queued['node_errors']}")
        pid = queued["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{pid}")
            if history and pid in history and history[pid].get("status", {}).get("completed") is not None:
                entry = history[pid]
                status = entry["status"]
                if status.get("status_str") != "success":
                    errors = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                    raise PromptFailed(f"prompt failed: {json.dumps(errors)[:4000]}")
                return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died:\n{self.log()[-3000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"prompt {pid} did not finish within {timeout}s")

    def output_file(self, item: dict) -> Path:
        """Path of an output file described by a history ``images`` item."""
        folder = {"output": "output", "temp": "temp", "input": "input"}[item.get("type", "output")]
        return self.base / folder / item.get("subfolder", "") / item["filename"]


# --------------------------------------------------------------------------------------------- UI -> API
SKIP_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def ui_to_api(workflow: dict, object_info: dict, overrides: dict[str, dict] | None = None) -> dict:
    """Convert a UI-format workflow (what the editor saves) to the API format ``/prompt`` takes.

    Widget values are matched to the node's widget inputs in ``input_order`` (required, then optional),
    skipping the extra 'control after generate' value that seed widgets store. ``overrides`` maps a
    class type to input values to replace (e.g. smaller images for a quick test run).
    """
    overrides = overrides or {}
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}

    def source(link_id):
        link = links[link_id]
        from_id, from_slot = link[1], link[2]
        from_node = nodes[from_id]
        if from_node["type"] == "Reroute":
            return source(from_node["inputs"][0]["link"])
        return [str(from_id), from_slot]

    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in SKIP_TYPES or node.get("mode", 0) in (2, 4):
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise KeyError(f"node type {node['type']!r} (node {node['id']}) is not known to the server")
        inputs = {}
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
        for section in ("required", "optional"):
            for name in order.get(section, []):
                spec = info["input"][section][name]
                kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
                is_widget = isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
                if is_widget and not opts.get("forceInput"):
                    value = values.pop(0) if values else opts.get("default")
                    if opts.get("control_after_generate") and values and isinstance(values[0], str):
                        values.pop(0)
                    inputs[name] = value
                if name in linked:
                    inputs[name] = source(linked[name])
        inputs.update(overrides.get(node["type"], {}))
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def load_workflow(path: Path) -> dict:
    return json.loads(Path(path).read_text())


if __name__ == "__main__":  # manual use: python comfy_harness.py -> start a server and wait
    env, reason = comfy_or_skip()
    if env is None:
        sys.exit(reason)
    with ComfyServer(env) as server:
        print(server.url, server.base, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
