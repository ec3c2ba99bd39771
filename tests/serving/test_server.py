"""The speech server (``python -m indextts_fast serve --tiny``) as a subprocess on 127.0.0.1, driven by httpx clients.

One server for the module: a round of at most 4 requests, 8 more waiting, and a KV budget of two requests' slots
(``--kv-budget 0.003`` GB: the tiny model's slot is 1.5 MiB), so that a round of 4 has two of its generations
waiting for a slot in the pool. Requests that fix their draws (``seed``; ``do_sample: false``) must give the same
bytes however many requests run beside them; bad input gets one JSON error and leaves the others alone.
"""

import base64
import concurrent.futures as cf
import io
import json
import time
import wave

import httpx
import pytest

from indextts_fast.serving.local import LocalServer

ARGS = ["--tiny", "--max-batch", "4", "--max-queue", "8", "--kv-budget", "0.003"]
TEXTS = (
    "The fox runs away. A dog sleeps here!",
    "A bird sings in the tree.",
    "Then the cat comes back, and the sun is up now.",
    "Rain falls on the old stone bridge.",
    "We walk home slowly; the night is cold.",
    "Five boats sail out to sea at dawn.",
    "Where is the key? It was on the table.",
    "Music plays softly in the next room.",
)
LONG = " ".join(TEXTS)  # several segments (30 text tokens each on the tiny model)


@pytest.fixture(scope="module")
def server():
    with LocalServer(ARGS) as url:
        yield url


def post(url, text, *, timeout=300.0, **fields):
    body = dict(model="tts-1", input=text, voice="default", **fields)
    return httpx.post(url + "/v1/audio/speech", json=body, timeout=timeout)


def samples(wav_bytes: bytes) -> bytes:
    """The PCM bytes of a streamed WAV (its header's sizes unknown: 0xFFFFFFFF), read by Python's wave module."""
    with wave.open(io.BytesIO(wav_bytes)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        data = w.readframes(w.getnframes())
    assert len(data) > 0 and any(data), "no audio"
    return data


def health(url) -> dict:
    return httpx.get(url + "/health", timeout=10).json()


def metric(url, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def idle(url, within: float = 120.0) -> dict:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        h = health(url)
        if h["live"] == 0 and h["waiting"] == 0:
            return h
        time.sleep(0.2)
    raise AssertionError(f"the server is still busy after {within} s: {h}")


def test_models_health_and_the_kv_plan(server):
    ids = [m["id"] for m in httpx.get(server + "/v1/models").json()["data"]]
    assert ids[0] == "indextts-2-tiny" and "tts-1" in ids
    h = health(server)
    assert h["status"] == "ok" and h["voices"] == ["default"] and h["max_batch"] == 4
    assert h["kv"]["slots"] == 2 and h["kv"]["beams"] == 3 and h["kv"]["bytes"] <= h["kv"]["budget_bytes"]


def test_eight_concurrent_clients_get_the_audio_they_get_alone(server):
    """8 clients at once (at most 4 in a round, the others waiting; 2 generations of a round in the KV pool, 2
    waiting for a slot): each a valid WAV, the same bytes as the same request alone: greedy (beam search) and seeded
    sampling."""
    fields = [dict(seed=n, **({"do_sample": False} if n % 2 == 0 else {})) for n in range(8)]
    before = metric(server, "indextts_batch_size_sum"), metric(server, "indextts_batch_size_count")
    with cf.ThreadPoolExecutor(8) as ex:
        together = list(ex.map(lambda n: post(server, TEXTS[n], **fields[n]), range(8)))
    for n, r in enumerate(together):
        assert r.status_code == 200, (n, r.text)
        assert r.headers["content-type"] == "audio/wav" and r.headers["x-sample-rate"] == "22050"
        samples(r.content)
    rounds = metric(server, "indextts_batch_size_count") - before[1]
    batched = metric(server, "indextts_batch_size_sum") - before[0]
    assert batched > rounds, f"no round ran more than one request ({batched} requests in {rounds} rounds)"
    for n in range(8):
        alone = post(server, TEXTS[n], **fields[n])
        assert alone.status_code == 200
        assert alone.content == together[n].content, f"request {n} ({fields[n]}): other audio alone than together"
    assert len({r.content for r in together}) == 8


def test_streaming_formats_and_speed(server):
    """The long text streams segment by segment (more than one chunk, the first long before the end); pcm is the
    wav's samples; sse's deltas decode to the same bytes; mp3 is MPEG audio; speed 2 halves the length."""
    t0 = time.perf_counter()
    chunks = []
    with httpx.stream("POST", server + "/v1/audio/speech", timeout=300,
                      json=dict(model="tts-1", input=LONG, voice="default", seed=7)) as r:  # fmt: skip
        assert r.status_code == 200
        for c in r.iter_bytes():
            chunks.append((time.perf_counter() - t0, c))
    whole = b"".join(c for _, c in chunks)
    pcm = samples(whole)
    assert len(chunks) >= 2 and chunks[0][0] < chunks[-1][0], [t for t, _ in chunks]
    raw = post(server, LONG, seed=7, response_format="pcm")
    assert raw.headers["content-type"] == "audio/pcm" and raw.content == pcm
    sse = post(server, LONG, seed=7, response_format="pcm", stream_format="sse")
    events = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done"
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == pcm
    mp3 = post(server, TEXTS[1], seed=1, response_format="mp3")
    assert mp3.status_code == 200 and mp3.headers["content-type"] == "audio/mpeg"
    assert mp3.content[:3] == b"ID3" or (mp3.content[0] == 0xFF and mp3.content[1] & 0xE0 == 0xE0)
    one = len(samples(post(server, TEXTS[2], do_sample=False).content))
    two = len(samples(post(server, TEXTS[2], do_sample=False, speed=2.0).content))
    assert 0.4 * one < two < 0.6 * one, (one, two)


BAD = [  # (raw body, status, the param the error names, words of its message)
    (b'{"model": "tts-1", "input": "", "voice": "default"}', 400, "input", "empty"),
    (b'{"model": "tts-1", "input": " \\n\\t ", "voice": "default"}', 400, "input", "empty"),
    (json.dumps(dict(model="tts-1", input="a" * 4097, voice="default")).encode(), 400, "input", "4097 characters"),
    (b'{"model": "tts-1", "input": "Hi.", "voice": "nobody"}', 400, "voice", "unknown voice"),
    (b'{"model": "tts-9", "input": "Hi.", "voice": "default"}', 404, "model", "does not exist"),
    (
        b'{"model": "tts-1", "input": "Hi.", "voice": "default", "response_format": "opus"}',
        400,
        "response_format",
        "not available",
    ),  # fmt: skip
    (b'{"model": "tts-1", "input": "Hi.", ', 400, None, "not valid JSON"),
    (b'["tts-1", "Hi."]', 400, None, "JSON object"),
    (b'{"model": "tts-1", "voice": "default"}', 400, "input", "required"),
    (b'{"model": "tts-1", "input": 5, "voice": "default"}', 400, "input", "string"),
    (b'{"model": "tts-1", "input": "Hi.", "voice": "default", "speed": 0}', 400, "speed", ">= 0.25"),
    (b'{"model": "tts-1", "input": "Hi.", "voice": "default", "speed": "fast"}', 400, "speed", "number"),
    (b'{"model": "tts-1", "input": "Hi.", "voice": "default", "seed": -1}', 400, "seed", ">= 0"),
    (b'{"model": "tts-1", "input": "Hi.", "voice": "default", "top_p": 0}', 400, "top_p", "> 0"),
    (b'{"model": "tts-1", "input": "Hi.", "voice": "default", "stream": true}', 400, "stream", "unknown field"),
    (
        b'{"model": "tts-1", "input": "Hi.", "voice": "default", "instructions": "sad"}',
        400,
        "instructions",
        "not supported",
    ),  # fmt: skip
]


def test_bad_input_gets_one_json_error_and_the_server_goes_on(server):
    for body, status, param, words in BAD:
        r = httpx.post(server + "/v1/audio/speech", content=body, headers={"content-type": "application/json"},
                       timeout=30)  # fmt: skip
        assert r.status_code == status, (body[:80], r.status_code, r.text)
        err = r.json()["error"]
        assert err["param"] == param and words in err["message"], (body[:80], err)
    assert post(server, TEXTS[0], seed=1).status_code == 200
    assert metric(server, 'indextts_requests_total{status="rejected"}') >= len(BAD)


def test_a_full_queue_is_429_and_the_others_are_served(server):
    """16 at once on 4 in a round and 8 waiting: the excess refused with 429 (OpenAI's rate-limit shape), every
    other request served."""
    with cf.ThreadPoolExecutor(16) as ex:
        rs = list(ex.map(lambda n: post(server, TEXTS[n % 8], seed=n), range(16)))
    busy = [r for r in rs if r.status_code == 429]
    assert busy and all(r.json()["error"]["code"] == "server_busy" for r in busy)
    for r in rs:
        if r.status_code != 429:
            assert r.status_code == 200, r.text
            samples(r.content)
    idle(server)


def _stream_then_leave(url, seed: int) -> int:
    """A client that reads the first audio of the long text and closes the connection."""
    body = dict(model="tts-1", input=LONG, voice="default", seed=seed)
    with httpx.Client(timeout=300) as c, c.stream("POST", url + "/v1/audio/speech", json=body) as r:
        assert r.status_code == 200
        return len(next(r.iter_bytes()))


def test_clients_gone_mid_stream_are_cancelled_and_the_batch_goes_on(server):
    """Two requests of the long text run beside a client that leaves after its first audio: its request leaves the
    batch (counted cancelled), theirs are the bytes they get alone, the server goes idle, and memory stays where it
    was after the first such round (no growth per cancelled request)."""
    alone = [post(server, LONG, seed=s).content for s in (11, 12)]
    rss = []
    for _ in range(3):
        cancelled = metric(server, 'indextts_requests_total{status="cancelled"}')
        with cf.ThreadPoolExecutor(3) as ex:
            gone = ex.submit(_stream_then_leave, server, 13)
            stay = [ex.submit(post, server, LONG, seed=s) for s in (11, 12)]
            assert gone.result() > 44
            assert [f.result().content for f in stay] == alone
        h = idle(server)
        deadline = time.monotonic() + 30
        while metric(server, 'indextts_requests_total{status="cancelled"}') <= cancelled:
            assert time.monotonic() < deadline, "the request of the client that left was not cancelled"
            time.sleep(0.2)
        rss.append(h["memory"]["rss_bytes"])
    assert rss[2] <= rss[0] + 16 * 2**20, f"resident memory grew by {(rss[2] - rss[0]) / 2**20:.1f} MiB"
    assert post(server, TEXTS[3], seed=3).status_code == 200
