"""Past one GPU: the speech server as a Ray Serve deployment, one replica per GPU, the same HTTP API.

    serve run indextts_fast.serving:build_app model_dir=checkpoints voices=voices max_replicas=4
    INDEXTTS_FAST_SERVE_ARGS="--model-dir checkpoints --voices voices" serve run indextts_fast.serving:app

Each replica builds its own model, engine and FastAPI app (``cli.build`` / ``server.create_app``: the app is made
in the replica, after its engine, through Ray Serve's ``__serve_build_asgi_app__``), so a replica is exactly the
single-process server; Ray's proxy routes each request to a replica and streams its chunks back. ``build_app`` args
(strings, as ``serve run`` passes them): the server's options (``model_dir`` or ``tiny``, ``voices``, ``max_batch``,
``max_queue``, ``kv_budget``, ``fp16``, ``first_segment_tokens``), and the deployment's: ``num_replicas`` (default
1), or autoscaling on the requests a replica holds (Ray's ongoing requests: running and queued) with
``max_replicas`` (and ``min_replicas``, default 1; ``target_ongoing_requests``, default ``max_batch``;
``upscale_delay_s``, default Ray's 30), ``num_gpus`` per replica (default 1 where torch sees CUDA, else 0),
``num_cpus`` (default 1). A replica takes at most ``max_batch + max_queue`` requests; past that Ray's router queues
them.

On one machine, for tests: ``ray.init(_node_ip_address="127.0.0.1", include_dashboard=False)`` with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the environment before ray is imported (on Linux Ray otherwise swaps
127.0.0.1 for the machine's address), and ``serve.start(http_options={"host": "127.0.0.1", "port": ...})``. Ray
2.60 still binds each replica's gRPC server to ``[::]`` with no option for it; ``INDEXTTS_FAST_RAY_LOOPBACK=1`` in
the replicas' environment binds it to 127.0.0.1 instead (through a function of Ray's private module
``ray.serve._private.replica``; where that is missing the replica says so and leaves it).
"""

from __future__ import annotations

import os
import shlex
import sys

from ray import serve

from . import cli
from .server import create_app

__all__ = ["SpeechServer", "build_app", "app_from_env"]

ARGS_ENV = "INDEXTTS_FAST_SERVE_ARGS"
SERVER_KEYS = ("model_dir", "voices", "max_batch", "max_queue", "kv_budget", "first_segment_tokens", "seed")
FLAGS = ("tiny", "fp16")
DEPLOY_KEYS = ("num_replicas", "min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s",
               "num_gpus", "num_cpus")  # fmt: skip


def _replica_grpc_on_loopback() -> None:
    try:
        import ray.serve._private.replica as replica

        add = replica.add_port_to_grpc_server
    except (ImportError, AttributeError):
        print("indextts_fast: INDEXTTS_FAST_RAY_LOOPBACK: this Ray has no replica gRPC hook; left as it is",
              file=sys.stderr)  # fmt: skip
        return
    if getattr(add, "_loopback", False):
        return

    def on_loopback(server, address):
        if address.startswith(("[::]:", "0.0.0.0:")):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return add(server, address)

    on_loopback._loopback = True
    replica.add_port_to_grpc_server = on_loopback


@serve.deployment
@serve.ingress()
class SpeechServer:
    """One replica: the model, its engine and the FastAPI app of ``python -m indextts_fast serve``."""

    def __init__(self, argv: list):
        if os.environ.get("INDEXTTS_FAST_RAY_LOOPBACK") == "1":
            _replica_grpc_on_loopback()
        args = cli.parser().parse_args(["--port", "1", *argv])  # Ray's proxy listens; the port is not used
        cli.check(args)
        log = lambda m: print(m, file=sys.stderr, flush=True)
        self.served, self.handle = cli.build(args, log)

    def __serve_build_asgi_app__(self):
        return create_app(self.served)

    def __del__(self):
        served = getattr(self, "served", None)
        if served is not None:
            served.engine.close()


def _argv(args: dict) -> list:
    unknown = sorted(set(args) - set(SERVER_KEYS) - set(FLAGS) - set(DEPLOY_KEYS))
    if unknown:
        raise ValueError(f"build_app: unknown argument{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}; "
                         f"known: {', '.join(SERVER_KEYS + FLAGS + DEPLOY_KEYS)}")  # fmt: skip
    argv = []
    for k in SERVER_KEYS:
        if args.get(k) not in (None, ""):
            argv += ["--" + k.replace("_", "-"), str(args[k])]
    for k in FLAGS:
        if str(args.get(k, "")).lower() in ("1", "true", "yes"):
            argv.append("--" + k)
    return argv


def build_app(args: dict):
    """The application ``serve run indextts_fast.serving:build_app key=value ...`` deploys (see the module's text)."""
    argv = _argv(args)
    parsed = cli.parser().parse_args(["--port", "1", *argv])  # the options checked here, before any replica starts
    cli.check(parsed)
    try:
        import torch

        gpus = 1.0 if torch.cuda.is_available() else 0.0
    except ImportError:
        gpus = 0.0
    gpus = float(args.get("num_gpus", gpus))
    actor = {"num_cpus": float(args.get("num_cpus", 1)), **({"num_gpus": gpus} if gpus else {})}
    opts = dict(ray_actor_options=actor, max_ongoing_requests=parsed.max_batch + parsed.max_queue)
    if "max_replicas" in args:
        opts["num_replicas"] = "auto"
        opts["autoscaling_config"] = dict(
            min_replicas=int(args.get("min_replicas", 1)),
            max_replicas=int(args["max_replicas"]),
            target_ongoing_requests=float(args.get("target_ongoing_requests", parsed.max_batch)),
            **({"upscale_delay_s": float(args["upscale_delay_s"])} if "upscale_delay_s" in args else {}),
        )
    else:
        opts["num_replicas"] = int(args.get("num_replicas", 1))
    return SpeechServer.options(**opts).bind(argv)


def app_from_env():
    """``indextts_fast.serving:app``: ``build_app`` of the server options in ``INDEXTTS_FAST_SERVE_ARGS`` (the
    command line of ``python -m indextts_fast serve``, e.g. "--model-dir checkpoints --voices voices"), one
    replica; the deployment's own options through ``serve run``'s config file or ``build_app``."""
    line = os.environ.get(ARGS_ENV)
    if not line:
        raise RuntimeError(f"indextts_fast.serving:app reads the server's options from {ARGS_ENV} (e.g. "
                           f"'--model-dir checkpoints --voices voices'); or: serve run indextts_fast.serving:build_app "
                           "model_dir=checkpoints voices=voices")  # fmt: skip
    parsed = cli.parser().parse_args(["--port", "1", *shlex.split(line)])
    args = {k: getattr(parsed, k) for k in SERVER_KEYS if getattr(parsed, k) is not None}
    args.update({k: "1" for k in FLAGS if getattr(parsed, k)})
    return build_app(args)
