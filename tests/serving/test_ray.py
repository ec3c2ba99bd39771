"""The Ray Serve deployment (``indextts_fast.serving.ray_app``) on a local Ray cluster of two tiny replicas, all of it
on 127.0.0.1: Ray's node address (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, set before ray is imported), no
dashboard, Serve's HTTP proxy, the replicas' gRPC servers (``INDEXTTS_FAST_RAY_LOOPBACK=1``). Both replicas answer;
speech streams through Ray's proxy; every socket the cluster's processes listen on is a loopback one."""

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: keep 127.0.0.1 as the node address

import concurrent.futures as cf
import ipaddress
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from indextts_fast.serving.local import free_port

from .test_server import TEXTS, samples


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray import serve

    from indextts_fast.serving import build_app

    env = {"INDEXTTS_FAST_BACKEND": "torch", "OMP_NUM_THREADS": "1", "INDEXTTS_FAST_RAY_LOOPBACK": "1",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # fmt: skip
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ray", dir="/tmp") as tmp:  # short: Ray's socket paths
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2, num_gpus=0, _temp_dir=tmp,
                 runtime_env={"env_vars": env}, log_to_driver=False, configure_logging=False)  # fmt: skip
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            app = build_app({"tiny": "1", "num_replicas": "2", "num_cpus": "0.5", "max_batch": "4"})
            serve.run(app, name="indextts", route_prefix="/", blocking=False)
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 240
            while True:
                try:
                    if httpx.get(url + "/health", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the deployment did not answer within 240 s"
                time.sleep(0.5)
            yield url
        finally:
            serve.shutdown()
            ray.shutdown()


def test_two_replicas_answer(cluster):
    pids = set()
    deadline = time.monotonic() + 60
    with cf.ThreadPoolExecutor(4) as ex:
        while len(pids) < 2 and time.monotonic() < deadline:
            pids |= {r.json()["pid"] for r in ex.map(lambda _: httpx.get(cluster + "/health", timeout=30), range(8))}
    assert len(pids) == 2, f"replicas answering: {pids}"
    ids = [m["id"] for m in httpx.get(cluster + "/v1/models", timeout=30).json()["data"]]
    assert ids[0] == "indextts-2-tiny"


def test_speech_streams_through_the_proxy(cluster):
    """Requests at once through Ray's proxy: valid WAVs, the same bytes from whichever replica (the same tiny
    weights, the same seed); a bad request is its 400."""
    body = dict(model="tts-1", input=" ".join(TEXTS[:3]), voice="default", seed=5)
    with cf.ThreadPoolExecutor(4) as ex:
        rs = list(ex.map(lambda _: httpx.post(cluster + "/v1/audio/speech", json=body, timeout=300), range(4)))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
    assert len({r.content for r in rs}) == 1
    samples(rs[0].content)
    bad = httpx.post(cluster + "/v1/audio/speech", json=dict(body, voice="nobody"), timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "voice"


def _listening() -> dict:
    """{socket inode: (local address, port)} of every listening TCP socket (IPv4 and IPv6) on the machine."""
    out = {}
    for name, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(name).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A":  # LISTEN
                continue
            addr, port = f[1].split(":")
            raw = bytes.fromhex(addr)
            if v6:  # four little-endian 32-bit words; an IPv4-mapped address as its IPv4 address
                ip = ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
                ip = ip.ipv4_mapped or ip
            else:
                ip = ipaddress.IPv4Address(raw[::-1])
            out[f[9]] = (ip, int(port, 16))
    return out


def _descendants(pid: int) -> set:
    children: dict = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def test_the_cluster_listens_on_loopback_only(cluster):
    listening = _listening()
    seen = {}
    for pid in _descendants(os.getpid()):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            inode = target[8:-1] if target.startswith("socket:[") else None
            if inode in listening:
                seen[listening[inode]] = pid
    assert seen, "no listening socket found among the cluster's processes"
    wide = {f"{ip}:{port}": pid for (ip, port), pid in seen.items() if not ip.is_loopback}
    assert not wide, f"listening beyond loopback: {wide}"


def test_build_app_refuses_bad_arguments(monkeypatch):
    """Before any replica starts: an unknown argument or a bad server option is named; ``app`` without its options
    says where they go."""
    import indextts_fast.serving as serving

    with pytest.raises(ValueError, match="unknown argument: bogus"):
        serving.build_app({"tiny": "1", "bogus": "1"})
    with pytest.raises(ValueError, match="--max-batch must be >= 1"):
        serving.build_app({"tiny": "1", "max_batch": "0"})
    monkeypatch.delenv("INDEXTTS_FAST_SERVE_ARGS", raising=False)
    with pytest.raises(RuntimeError, match="INDEXTTS_FAST_SERVE_ARGS"):
        serving.app  # noqa: B018 (reading it builds the application)
