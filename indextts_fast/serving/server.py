"""An OpenAI-compatible speech server on the engine: ``python -m indextts_fast serve``.

    POST /v1/audio/speech   {"model", "input", "voice", "response_format", "speed", "stream_format", ...}
    GET  /v1/models         the model's id and the OpenAI names it answers to
    GET  /v1/voices         the registered voices
    GET  /health            state, queue, live requests, memory
    GET  /metrics           Prometheus text format

One process owns the model: ``create_app(served)`` wraps a ``Served`` (the engine, its voices, the limits) in a
FastAPI app; the engine's thread forms the batches. The audio streams as it is made (chunked transfer): a segment's
samples are sent when its round ends, so the time to first audio is one segment's.

The request body (OpenAI's fields):
- ``model`` (required): this server's model id or an OpenAI name (``tts-1``, ``tts-1-hd``, ``gpt-4o-mini-tts``);
  another name: 404 ``model_not_found``;
- ``input`` (required): the text, not empty, at most ``max_input_chars`` characters (OpenAI's 4096);
- ``voice`` (required): a registered voice's name (or ``{"id": name}``); another: 400;
- ``response_format``: ``wav`` (the default here; 16-bit PCM, its header's sizes 0xFFFFFFFF as the length is unknown
  when the stream starts), ``pcm`` (raw 16-bit little-endian mono), ``mp3`` (where the ``lameenc`` package is
  installed); all at the model's 22,050 Hz (the ``X-Sample-Rate`` header); another: 400;
- ``speed`` 0.25 to 4 (default 1: the official length; s: 1.72 / s mel frames per code);
- ``stream_format``: ``audio`` (the default: the bytes) or ``sse`` (events ``speech.audio.delta`` with base64 audio,
  then ``speech.audio.done``);
- ``instructions``: refused when not empty (IndexTTS2's emotion controls are not served).
Extensions: ``seed`` (an integer: the request's own generator, so the same request gives the same audio whatever runs
beside it; default: a fresh random seed per request, as the official unseeded ``infer``), ``do_sample`` (false: beam
search / greedy), ``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``, ``max_mel_tokens``. Unknown fields
are refused by name.

Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, one per request; a full queue is
429. A request whose synthesis fails before its first audio gets a 500 naming the failure; after its first audio
the stream ends early (the ``indextts_requests_total{status="failed"}`` metric counts it). A client that goes
away cancels its request (it leaves the batch at its next stop-flag read).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import math
import os
import random
import struct
import threading
import time
from collections import deque
from typing import Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .engine import Engine, QueueFull
from .pipeline import SAMPLE_RATE, Cancelled, Job

__all__ = ["Served", "create_app", "FORMATS", "OPENAI_MODELS", "wav_header"]

OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
MEDIA = {"wav": "audio/wav", "pcm": "audio/pcm", "mp3": "audio/mpeg"}
GENERATION_FIELDS = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "max_mel_tokens")
FIELDS = {"model", "input", "voice", "response_format", "speed", "stream_format", "instructions", "seed",
          *GENERATION_FIELDS}  # fmt: skip


def _mp3_available() -> bool:
    try:
        import lameenc  # noqa: F401
    except ImportError:
        return False
    return True


FORMATS = ("wav", "pcm", "mp3") if _mp3_available() else ("wav", "pcm")


@dataclasses.dataclass
class Served:
    """What a server serves: the engine (with its voices), the model's id and version, the limits and the
    per-request defaults (segment length and the longest generation the model's position table allows)."""

    engine: Engine
    model_id: str = "indextts-2"
    version: str = "2.0"
    max_input_chars: int = 4096
    max_text_tokens_per_segment: int = 120
    max_mel_tokens: int = 1500
    first_segment_tokens: Optional[int] = None
    kv: dict = dataclasses.field(default_factory=dict)  # the KV pool: slots, beams, positions, bytes
    backend: str = "indextts_fast"  # or "official" (the baseline: the official infer, one request at a time)


class BadRequest(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(message: str, *, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def wav_header(rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit mono PCM WAV header for a stream of unknown length: the RIFF and data sizes 0xFFFFFFFF."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + (struct.pack("<I", 0xFFFFFFFF))
    )


class _Encoder:
    def __init__(self, fmt: str):
        self.fmt, self._mp3 = fmt, None
        if fmt == "mp3":
            import lameenc

            self._mp3 = lameenc.Encoder()
            self._mp3.set_in_sample_rate(SAMPLE_RATE)
            self._mp3.set_channels(1)
            self._mp3.set_bit_rate(64)
            self._mp3.set_quality(2)

    def start(self) -> bytes:
        return wav_header() if self.fmt == "wav" else b""

    def encode(self, pcm: np.ndarray) -> bytes:
        raw = pcm.astype("<i2").tobytes()
        return bytes(self._mp3.encode(raw)) if self._mp3 is not None else raw

    def finish(self) -> bytes:
        return bytes(self._mp3.flush()) if self._mp3 is not None else b""


# --- the request body ---------------------------------------------------------------------------------------------
def _number(body: dict, name: str, lo: float, hi: float, *, integer: bool = False, lo_open: bool = False):
    v = body[name]
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or (not integer and not math.isfinite(v)):
        raise BadRequest(400, f"'{name}' must be {'an integer' if integer else 'a number'}, not {v!r}", name)
    if v < lo or v > hi or (lo_open and v == lo):
        lo_s = f"> {lo}" if lo_open else f">= {lo}"
        raise BadRequest(400, f"'{name}' must be {lo_s} and <= {hi}, not {v!r}", name)
    return v


def parse_speech(raw: bytes, served: Served) -> tuple[Job, str, str]:
    """The job, the response format and the stream format of a request body; ``BadRequest`` naming what is wrong."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest(400, f"the request body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise BadRequest(400, f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(map(repr, unknown))}",
                         unknown[0])  # fmt: skip
    for name in ("model", "input", "voice"):
        if name not in body:
            raise BadRequest(400, f"'{name}' is required", name)
    model = body["model"]
    if not isinstance(model, str) or model not in (served.model_id, *OPENAI_MODELS):
        raise BadRequest(404, f"the model {model!r} does not exist; this server serves {served.model_id!r} (also "
                         f"answering to {', '.join(OPENAI_MODELS)})", "model", "model_not_found")  # fmt: skip
    text = body["input"]
    if not isinstance(text, str):
        raise BadRequest(400, f"'input' must be a string, not {type(text).__name__}", "input")
    if not text.strip():
        raise BadRequest(400, "'input' is empty", "input")
    if len(text) > served.max_input_chars:
        raise BadRequest(400, f"'input' has {len(text)} characters; at most {served.max_input_chars}", "input")
    voice = body["voice"]
    if isinstance(voice, dict) and set(voice) == {"id"}:
        voice = voice["id"]
    if not isinstance(voice, str) or voice not in served.engine.voices:
        names = sorted(served.engine.voices)
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        raise BadRequest(400, f"unknown voice {voice!r}; the voices: {shown}", "voice")
    fmt = body.get("response_format", "wav")
    if fmt not in FORMATS:
        extra = "" if fmt != "mp3" else " (mp3 needs the lameenc package)"
        raise BadRequest(400, f"response_format {fmt!r} is not available; this server writes {', '.join(FORMATS)}"
                         f"{extra}", "response_format")  # fmt: skip
    stream_format = body.get("stream_format", "audio")
    if stream_format not in ("audio", "sse"):
        raise BadRequest(400, f"stream_format must be 'audio' or 'sse', not {stream_format!r}", "stream_format")
    if body.get("instructions"):
        raise BadRequest(400, "'instructions' are not supported by this server (IndexTTS2's emotion controls are not "
                         "served)", "instructions")  # fmt: skip
    speed = float(_number(body, "speed", 0.25, 4.0)) if "speed" in body else 1.0
    seed = _number(body, "seed", 0, 2**63 - 1, integer=True) if "seed" in body else random.getrandbits(63)
    gen = {}
    if "do_sample" in body:
        if not isinstance(body["do_sample"], bool):
            raise BadRequest(400, f"'do_sample' must be true or false, not {body['do_sample']!r}", "do_sample")
        gen["do_sample"] = body["do_sample"]
    if "temperature" in body:
        gen["temperature"] = float(_number(body, "temperature", 0.0, 100.0, lo_open=True))
    if "top_p" in body:
        gen["top_p"] = float(_number(body, "top_p", 0.0, 1.0, lo_open=True))
    if "top_k" in body:
        gen["top_k"] = int(_number(body, "top_k", 0, 1 << 20, integer=True))
    if "repetition_penalty" in body:
        gen["repetition_penalty"] = float(_number(body, "repetition_penalty", 0.0, 100.0, lo_open=True))
    gen["max_mel_tokens"] = served.max_mel_tokens
    if "max_mel_tokens" in body:
        gen["max_mel_tokens"] = int(_number(body, "max_mel_tokens", 1, served.max_mel_tokens, integer=True))
    job = Job(served.engine.voices[voice], text, seed=int(seed), generation=gen, speed=speed,
              max_text_tokens_per_segment=served.max_text_tokens_per_segment,
              first_segment_tokens=served.first_segment_tokens, cancel=threading.Event())  # fmt: skip
    return job, fmt, stream_format


# --- metrics -----------------------------------------------------------------------------------------------------
class Metrics:
    """Prometheus metrics in a registry of the app's own."""

    def __init__(self, engine: Engine):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("indextts_requests", "Speech requests by outcome", ["status"], registry=r)
        Gauge("indextts_queue_depth", "Requests waiting for the batch", registry=r).set_function(
            lambda: engine.stats()["waiting"]
        )
        Gauge("indextts_active_requests", "Requests in the batch", registry=r).set_function(
            lambda: engine.stats()["live"]
        )
        self.batch = Histogram("indextts_batch_size", "Requests per round (one segment each)", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))  # fmt: skip
        self.codes = Counter("indextts_generated_codes", "GPT codes generated (rate(): tokens per second)",
                             registry=r)  # fmt: skip
        self._recent: deque = deque()  # (time, codes) of the last 10 s
        self._lock = threading.Lock()
        Gauge("indextts_codes_per_second", "GPT codes generated per second over the last 10 s",
              registry=r).set_function(self.codes_per_second)  # fmt: skip
        self.audio = Counter("indextts_audio_seconds", "Seconds of audio sent", registry=r)
        buckets = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
        self.ttfa = Histogram("indextts_time_to_first_audio_seconds", "From the request to its first audio",
                              registry=r, buckets=buckets)  # fmt: skip
        self.latency = Histogram("indextts_request_duration_seconds", "From the request to its last audio",
                                 registry=r, buckets=buckets)  # fmt: skip

    def add_codes(self, n: int) -> None:
        now = time.monotonic()
        self.codes.inc(n)
        with self._lock:
            self._recent.append((now, n))

    def codes_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - 10.0:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / 10.0


def _memory() -> dict:
    out = {}
    try:
        with open("/proc/self/statm") as f:
            out["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        pass
    import torch

    if torch.cuda.is_available():
        out["cuda_allocated_bytes"] = int(torch.cuda.memory_allocated())
        out["cuda_reserved_bytes"] = int(torch.cuda.memory_reserved())
    return out


# --- the app -------------------------------------------------------------------------------------------------------
def create_app(served: Served) -> FastAPI:
    engine = served.engine
    metrics = Metrics(engine)
    engine.on_round = metrics.batch.observe

    def finished(ticket, err) -> None:  # the engine thread, once per request
        if err is None:
            metrics.add_codes(ticket.codes)
            metrics.latency.observe(time.perf_counter() - ticket.submitted)
        metrics.requests.labels("cancelled" if isinstance(err, Cancelled) else "failed" if err else "ok").inc()
        if ticket.first_audio is not None:
            metrics.ttfa.observe(ticket.first_audio)

    engine.on_finish = finished
    app = FastAPI(title="indextts_fast", version="0.1.0")
    app.state.served, app.state.metrics = served, metrics

    def refuse(e: BadRequest) -> JSONResponse:
        metrics.requests.labels("busy" if e.status == 429 else "rejected").inc()
        kind = "rate_limit_error" if e.status == 429 else "invalid_request_error"
        return JSONResponse(error_body(e.message, kind=kind, param=e.param, code=e.code), status_code=e.status)

    @app.get("/health")
    def health():
        return dict(status="ok", pid=os.getpid(), model=served.model_id, version=served.version, backend=served.backend,
                    voices=sorted(engine.voices),
                    **engine.stats(), max_batch=engine.max_batch, max_queue=engine.max_queue, kv=served.kv,
                    memory=_memory())  # fmt: skip

    @app.get("/v1/models")
    def models():
        ids = [served.model_id, *OPENAI_MODELS]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "indextts_fast"}
                                           for i in ids]}  # fmt: skip

    @app.get("/v1/voices")
    def voices():
        return {"object": "list", "data": [{"id": v, "object": "voice"} for v in sorted(engine.voices)]}

    @app.get("/metrics")
    def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/audio/speech")
    async def speech(request: Request):
        try:
            job, fmt, stream_format = parse_speech(await request.body(), served)
        except BadRequest as e:
            return refuse(e)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink(event):  # the engine thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            engine.submit(job, sink)
        except QueueFull as e:
            return refuse(BadRequest(429, f"the server is busy: {e}; retry later", code="server_busy"))
        # the first event before the response starts: a failure before any audio is still a status code
        first = asyncio.ensure_future(events.get())
        while True:
            done, _ = await asyncio.wait({first}, timeout=0.2)
            if done:
                break
            if await request.is_disconnected():
                first.cancel()
                job.cancel.set()
                return Response(status_code=499)
        event = first.result()
        if event[0] == "error":
            err = event[1]
            return JSONResponse(error_body(f"synthesis failed: {type(err).__name__}: {err}", kind="server_error"),
                                status_code=500)  # fmt: skip
        enc = _Encoder(fmt)

        async def audio_events():
            ev = event
            try:
                while True:
                    if ev[0] == "audio":
                        metrics.audio.inc(len(ev[1]) / SAMPLE_RATE)
                        yield "audio", ev[1]
                    elif ev[0] == "done":
                        return
                    else:  # failed after audio went out: the stream ends early (counted in the metrics)
                        yield "error", ev[1]
                        return
                    ev = await events.get()
            finally:
                job.cancel.set()  # a no-op once done; a client gone mid-stream cancels its request

        async def raw():
            head = enc.start()  # the wav header, with the first audio
            async for kind, x in audio_events():
                if kind == "audio":
                    yield head + enc.encode(x)
                    head = b""
            yield head + enc.finish()

        async def sse():
            head = enc.start()  # the wav header, in the first delta
            async for kind, x in audio_events():
                if kind == "audio":
                    data = {"type": "speech.audio.delta", "audio": base64.b64encode(head + enc.encode(x)).decode()}
                    head = b""
                else:
                    data = {"type": "error", "error": error_body(f"{type(x).__name__}: {x}", kind="server_error")}
                yield f"data: {json.dumps(data)}\n\n"
            tail = enc.finish()
            if tail:
                data = {"type": "speech.audio.delta", "audio": base64.b64encode(tail).decode()}
                yield f"data: {json.dumps(data)}\n\n"
            yield f"data: {json.dumps({'type': 'speech.audio.done'})}\n\n"

        headers = {"X-Sample-Rate": str(SAMPLE_RATE)}
        if stream_format == "sse":
            return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)
        return StreamingResponse(raw(), media_type=MEDIA[fmt], headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request, exc):  # never a traceback page: one JSON error
        return JSONResponse(error_body(f"{type(exc).__name__}: {exc}", kind="server_error"), status_code=500)

    return app
