"""A download when the Hub cannot be reached (refused connection, an address that accepts and never
answers, offline mode) fails at once with the one-line message; a slow Hub that does answer still
downloads. Never the network: every "Hub" here is a socket on 127.0.0.1.

About the time bounds: the tests do not set speed goals. Before :func:`hub.hub_unreachable`,
huggingface_hub retried an unreachable Hub for 24 s (refused, DNS failure) up to minutes (silence);
now it takes well under a second (refused) or :data:`hub.REACH_TIMEOUT` = 2 s (silence). A bound of
10 s tells the two behaviours apart however loaded the test machine is, so it checks "does not
retry / hang", not how fast. The measured time is printed (``pytest -s``) for the record.
"""

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from birefnet_core import checkpoint, hub
from birefnet_core.hub import ModelNotAvailableError

REPO = Path(__file__).resolve().parents[1]
#: "does not retry or hang" (see the module docstring), not a speed goal
NO_RETRY_BOUND_S = 10.0


@pytest.fixture(autouse=True)
def online(monkeypatch, tmp_path):
    """Offline mode off, an empty HF cache, no token sent, HF_HUB_ETAG_TIMEOUT unset; the endpoint
    is set by each test to a local socket."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent-harnesses.json"), raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True, raising=False)
    monkeypatch.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv(checkpoint.MODELS_DIR_ENV, str(tmp_path / "default-models"))


def use_endpoint(monkeypatch, url):
    """What HF_ENDPOINT=url does when set before huggingface_hub is imported."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def black_hole():
    """A socket that listens and never accepts: the kernel completes the connection, nothing ever
    answers (a Hub behind a broken proxy or firewall)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def timed_failure(folder, name="BiRefNet_lite"):
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as caught:
        hub.download(name, folder, progress=False)
    return str(caught.value), time.perf_counter() - start


def assert_one_line_failure(message, folder, name="BiRefNet_lite"):
    assert "\n" not in message
    assert f"'{name}.safetensors'" in message and str(folder) in message
    assert f"https://huggingface.co/ZhengPeng7/{name}/resolve/main/model.safetensors" in message
    assert not list(Path(folder).rglob("*.safetensors")) and not (Path(folder) / hub.STAGING).exists()


def test_a_refused_connection_fails_at_once_with_one_line(tmp_path, monkeypatch):
    use_endpoint(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    folder = tmp_path / "models"
    message, took = timed_failure(folder)
    print(f"\nrefused connection: failed after {took:.2f} s")
    assert took < NO_RETRY_BOUND_S, took
    assert_one_line_failure(message, folder)
    assert "cannot be reached" in message


def test_a_hub_that_never_answers_fails_after_the_reach_timeout(tmp_path, monkeypatch, black_hole):
    use_endpoint(monkeypatch, black_hole)
    folder = tmp_path / "models"
    message, took = timed_failure(folder)
    print(f"\nsilent Hub: failed after {took:.2f} s (REACH_TIMEOUT {hub.REACH_TIMEOUT} s)")
    assert hub.REACH_TIMEOUT * 0.9 <= took < NO_RETRY_BOUND_S, took
    assert_one_line_failure(message, folder)
    assert f"gave no answer within {hub.REACH_TIMEOUT:g} s" in message and "HF_HUB_ETAG_TIMEOUT" in message


def test_hf_hub_etag_timeout_gives_a_slow_hub_more_time(monkeypatch, black_hole):
    use_endpoint(monkeypatch, black_hole)
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "0.5")
    assert hub.reach_timeout() == 0.5
    assert "within 0.5 s" in hub.hub_unreachable()
    for value in ("", "0", "-3", "soon"):
        monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", value)
        assert hub.reach_timeout() == hub.REACH_TIMEOUT


def test_offline_mode_fails_at_once_without_asking_the_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "hub_unreachable", lambda *a, **k: pytest.fail("asked the Hub while offline"))
    folder = tmp_path / "models"
    message, took = timed_failure(folder)
    print(f"\noffline mode: failed after {took:.2f} s")
    assert took < NO_RETRY_BOUND_S, took
    assert_one_line_failure(message, folder)
    assert "offline mode is on (HF_HUB_OFFLINE)" in message


def test_a_file_in_the_cache_needs_no_hub(tmp_path, monkeypatch, black_hole):
    """The cache lookup reads the cache folder only: with a silent Hub it is immediate."""
    use_endpoint(monkeypatch, black_hole)
    monkeypatch.setattr(hub, "hub_unreachable", lambda *a, **k: pytest.fail("asked the Hub"))
    snapshot = tmp_path / "cache" / "models--ZhengPeng7--BiRefNet_lite" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    save_file({"w": torch.ones(3)}, snapshot / "model.safetensors")
    start = time.perf_counter()
    got = hub.download("BiRefNet_lite", tmp_path / "models", cache_dir=tmp_path / "cache")
    assert time.perf_counter() - start < NO_RETRY_BOUND_S and hub.safetensors_problem(got) is None


class SlowHub(BaseHTTPRequestHandler):
    """A Hub that answers every request after ``latency`` seconds and sends the file in small pieces
    over ``trickle`` seconds: slow, but working."""

    latency = 0.5
    trickle = 3.0
    body = save({"w": torch.arange(6, dtype=torch.float32)})
    commit = "c" * 40
    requests: list = []

    def log_message(self, *args):  # quiet
        pass

    def _head(self, with_body):
        self.requests.append((self.command, self.path))
        time.sleep(self.latency)
        if not self.path.endswith("/resolve/main/model.safetensors"):
            self.send_response(404 if self.path.startswith("/api/") else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("ETag", '"slow-etag"')
        self.send_header("X-Repo-Commit", self.commit)
        self.end_headers()
        if with_body:
            pieces = [self.body[i:i + 64] for i in range(0, len(self.body), 64)]
            for piece in pieces:
                time.sleep(self.trickle / len(pieces))
                self.wfile.write(piece)
                self.wfile.flush()

    def do_HEAD(self):
        self._head(False)

    def do_GET(self):
        self._head(True)


def test_a_slow_hub_that_answers_still_downloads(tmp_path, monkeypatch):
    """Each answer comes 0.5 s late and the file takes 3 s to arrive (longer than REACH_TIMEOUT in
    all): the download is unaffected by the reachability check."""
    SlowHub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowHub)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        use_endpoint(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
        start = time.perf_counter()
        got = hub.download("BiRefNet_lite", tmp_path / "models", progress=False)
        took = time.perf_counter() - start
    finally:
        server.shutdown()
        server.server_close()
    print(f"\nslow Hub: downloaded in {took:.2f} s; requests: {SlowHub.requests}")
    assert got == tmp_path / "models" / "BiRefNet_lite.safetensors" and got.read_bytes() == SlowHub.body
    assert took > SlowHub.trickle > hub.REACH_TIMEOUT
    assert ("GET", "/ZhengPeng7/BiRefNet_lite/resolve/main/model.safetensors") in SlowHub.requests
    assert sorted(p.name for p in (tmp_path / "models").rglob("*")) == ["BiRefNet_lite.safetensors"]


def test_the_first_command_offline_says_where_to_put_the_file(tmp_path):
    """The README's first command with the Hub unreachable (HF_ENDPOINT on a closed port, as a user
    would set it): exit status 1, one line naming the file and the folder, none of huggingface_hub's
    retries ("Retrying in 1s ..."). The time includes starting Python and importing torch, so only
    the absence of retries is asserted; the time is printed."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf"),
           "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "PYTHONPATH": str(REPO)}
    models = tmp_path / "models"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "birefnet_core", "predict", "example_workflows/input_example.jpg",
                             "--model", "BiRefNet_lite", "--out", str(tmp_path / "cutouts"), "--models-dir",
                             str(models)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    print(f"\nfirst command, Hub unreachable: exit {result.returncode} after {time.perf_counter() - start:.2f} s "
          "(with interpreter start and imports)")
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "cannot be reached" in lines[0] and str(models / "BiRefNet_lite.safetensors") in lines[0]
    assert "Retrying" not in result.stderr + result.stdout
    assert not (tmp_path / "cutouts").exists() or not list((tmp_path / "cutouts").iterdir())


def test_the_probe_changes_nothing_process_wide(monkeypatch):
    """No environment variable, huggingface_hub constant or session factory is left changed."""
    import os

    import huggingface_hub.constants as constants
    from huggingface_hub.utils import _http

    use_endpoint(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    before = (dict(os.environ), {k: v for k, v in vars(constants).items() if k.isupper()},
              getattr(_http, "_GLOBAL_CLIENT_FACTORY", None))
    assert "cannot be reached" in hub.hub_unreachable()
    after = (dict(os.environ), {k: v for k, v in vars(constants).items() if k.isupper()},
             getattr(_http, "_GLOBAL_CLIENT_FACTORY", None))
    assert json.dumps(before[:2], default=str, sort_keys=True) == json.dumps(after[:2], default=str, sort_keys=True)
    assert before[2] is after[2]
