"""The serving engine: one thread owns the model and forms the batches; requests come and go between rounds.

    engine = Engine(Pipeline(tts), voices={"default": voice}, max_batch=8, max_queue=64)
    ticket = engine.submit(Job(voice, "Hello there.", seed=1), sink)   # sink(event) is called from the engine thread
    ...
    engine.close()

A request is a ``pipeline.Job``. The engine thread loops: admit waiting jobs into the live set (at most
``max_batch`` live), then one round of ``pipeline.Rounds`` (every live job's next segment: the GPT generations
decoded together in the KV pool, the waves in one vocoder call), then each job's events to its sink:

- ``("audio", pcm)``: a segment's samples as 16-bit integers (``numpy.int16``, 22,050 Hz, mono; what infer writes:
  ``clamp(32767 x)`` truncated to int16), preceded by the job's ``interval_silence`` of zeros from its second
  segment on, so that the concatenation of a job's audio events is the official file's samples;
- then ``("done", result)`` or ``("error", exception)`` (the job's own failure; ``Cancelled`` once its ``cancel``
  event is set), nothing after it.

Back-pressure: at most ``max_queue`` jobs wait; ``submit`` beyond that raises ``QueueFull`` (the server's 429).
A failure of a round that is no single job's (a bug, the device) fails the live jobs with it, and the engine goes
on with the next ones. Thread-safe: ``submit``, ``cancel`` and ``stats`` from any thread.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Optional

import numpy as np
import torch

from .pipeline import SAMPLE_RATE, Cancelled, Job, Pipeline

__all__ = ["Engine", "QueueFull", "Ticket", "pcm16"]


class QueueFull(RuntimeError):
    """More jobs waiting than the engine's queue holds."""


def pcm16(wave: torch.Tensor) -> np.ndarray:
    """A segment's wave (before x 32767) as the 16-bit samples infer writes: clamp(32767 x) truncated to int16."""
    return torch.clamp(32767 * wave.reshape(-1).float().cpu(), -32767.0, 32767.0).to(torch.int16).numpy()


@dataclasses.dataclass
class Ticket:
    job: Job
    sink: Callable[[tuple], None]
    submitted: float = dataclasses.field(default_factory=time.perf_counter)
    first_audio: Optional[float] = None  # seconds from submit to its first audio event
    segments: int = 0
    codes: int = 0  # GPT codes generated for it (each generation's stop token included)
    entry: object = None
    finished: bool = False


class Engine:
    def __init__(self, pipe: Pipeline, voices: dict, *, max_batch: int = 8, max_queue: int = 64,
                 on_round: Optional[Callable] = None, on_finish: Optional[Callable] = None):  # fmt: skip
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"engine: max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.pipe, self.voices = pipe, dict(voices)
        self.max_batch, self.max_queue = int(max_batch), int(max_queue)
        self.on_round, self.on_finish = on_round, on_finish  # metrics hooks: on_round(batch), on_finish(ticket, err)
        self._waiting: deque = deque()
        self._live: list = []
        self._cv = threading.Condition()
        self._closed = False
        self.rounds_run = 0
        self._thread = threading.Thread(target=self._loop, name="indextts-fast-engine", daemon=True)
        self._thread.start()

    # --- any thread ----------------------------------------------------------------------------------------------
    def submit(self, job: Job, sink: Callable[[tuple], None]) -> Ticket:
        if job.cancel is None:
            job.cancel = threading.Event()
        t = Ticket(job, sink)
        with self._cv:
            if self._closed:
                raise RuntimeError("engine: closed")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (the queue holds {self.max_queue})")
            self._waiting.append(t)
            self._cv.notify()
        return t

    def stats(self) -> dict:
        with self._cv:
            return dict(waiting=len(self._waiting), live=len(self._live), rounds=self.rounds_run)

    def close(self, timeout: float = 30.0) -> None:
        """Cancel every job, stop the thread."""
        with self._cv:
            self._closed = True
            for t in list(self._waiting) + list(self._live):
                t.job.cancel.set()
            self._cv.notify()
        self._thread.join(timeout)

    # --- the engine thread ---------------------------------------------------------------------------------------
    def _emit(self, t: Ticket, event: tuple) -> None:
        try:
            t.sink(event)
        except Exception:  # a sink whose consumer went away (its loop closed): the job is of no use any more
            t.job.cancel.set()

    def _finish(self, t: Ticket, err) -> None:
        if t.finished:
            return
        t.finished = True
        self._emit(t, ("error", err) if err is not None else ("done", t.entry.result))
        if self.on_finish is not None:
            self.on_finish(t, err)

    def _admit(self, rounds) -> None:
        with self._cv:
            while not self._closed and not self._waiting and not self._live:
                self._cv.wait()
            while self._waiting and len(self._live) < self.max_batch:
                t = self._waiting.popleft()
                if t.job.cancel.is_set():
                    self._finish(t, Cancelled("the request was cancelled while it waited"))
                    continue
                self._live.append(t)
                t.entry = None
        for t in self._live:
            if t.entry is None:
                try:
                    t.entry = rounds.add(t.job)
                except Exception as e:  # its text (tokenizer) or settings: its own error
                    t.entry = e
        for t in [t for t in self._live if isinstance(t.entry, BaseException)]:
            self._live.remove(t)
            err, t.entry = t.entry, None
            self._finish(t, err)
        for t in [t for t in self._live if not t.entry.segments]:  # nothing to say: an empty wave
            self._live.remove(t)
            self._finish(t, None)

    def _loop(self) -> None:
        rounds = self.pipe.rounds(keep=False)  # each segment goes to its sink; nothing kept
        while True:
            self._admit(rounds)
            with self._cv:
                if self._closed and not self._live:
                    for t in list(self._waiting):
                        self._waiting.remove(t)
                        self._finish(t, RuntimeError("engine: closed"))
                    return
            if not self._live:
                continue
            batch = len(rounds.live)
            try:
                with self.pipe.lock, torch.no_grad():
                    out = rounds.step()
            except Exception as e:  # no single job's failure: every live job fails with it, the engine goes on
                for t in self._live:
                    self._finish(t, e)
                with self._cv:
                    self._live.clear()
                rounds = self.pipe.rounds(keep=False)
                continue
            self.rounds_run += 1
            if self.on_round is not None:
                self.on_round(batch)
            by_entry = {id(t.entry): t for t in self._live}
            for e, w in out:
                t = by_entry[id(e)]
                pcm = pcm16(w)
                if t.segments and e.job.interval_silence > 0:
                    gap = np.zeros(int(SAMPLE_RATE * e.job.interval_silence / 1000.0), dtype=np.int16)
                    pcm = np.concatenate([gap, pcm])
                if t.first_audio is None:
                    t.first_audio = time.perf_counter() - t.submitted
                t.segments += 1
                t.codes = e.codes_made
                self._emit(t, ("audio", pcm))
            live_entries = {id(e) for e in rounds.live}
            for t in [t for t in self._live if id(t.entry) not in live_entries]:
                with self._cv:
                    self._live.remove(t)
                self._finish(t, t.entry.result.error)


class OfficialEngine:
    """The baseline: the official ``IndexTTS2.infer`` (never enabled) behind a lock, one request at a time (the
    official object's only safe mode), each under ``torch.manual_seed(job.seed)`` with ``stream_return=True`` (its
    own streaming: a segment's wave as soon as it is made, the silence after it). The engine's contract (``submit``,
    the sink's events, ``stats``, ``close``); ``voices``: name -> the reference audio's path (infer caches its
    conditioning per path)."""

    max_batch = 1

    def __init__(self, tts, voices: dict, *, max_queue: int = 64, on_round=None, on_finish=None):
        self.tts, self.voices, self.max_queue = tts, dict(voices), int(max_queue)
        self.on_round, self.on_finish = on_round, on_finish
        self._waiting: deque = deque()
        self._busy = 0
        self._cv = threading.Condition()
        self._closed = False
        self.rounds_run = 0
        self._thread = threading.Thread(target=self._loop, name="indextts-fast-official", daemon=True)
        self._thread.start()

    submit = Engine.submit
    close = Engine.close
    _emit = Engine._emit

    @property
    def _live(self) -> list:
        return []

    def stats(self) -> dict:
        with self._cv:
            return dict(waiting=len(self._waiting), live=self._busy, rounds=self.rounds_run)

    def _finish(self, t: Ticket, err) -> None:
        t.finished = True
        self._emit(t, ("error", err) if err is not None else ("done", None))
        if self.on_finish is not None:
            self.on_finish(t, err)

    def _run(self, t: Ticket) -> None:
        from .pipeline import DEFAULTS

        job = t.job
        if job.speed != 1.0:
            raise ValueError("the official infer has no speed; send speed 1")
        torch.manual_seed(int(job.seed))
        pieces = self.tts.infer(spk_audio_prompt=str(job.voice), text=job.text, output_path=None,
                                interval_silence=job.interval_silence, stream_return=True,
                                max_text_tokens_per_segment=job.max_text_tokens_per_segment,
                                **dict(DEFAULTS, **job.generation))  # fmt: skip
        for wav in pieces:
            if job.cancel.is_set():
                pieces.close()
                raise Cancelled("the request was cancelled")
            if wav is None or not torch.is_tensor(wav):
                continue
            pcm = pcm16(wav)
            if t.first_audio is None:
                t.first_audio = time.perf_counter() - t.submitted
            self._emit(t, ("audio", pcm))

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._waiting:
                    self._cv.wait()
                if not self._waiting:
                    return
                t = self._waiting.popleft()
                self._busy = 1
            try:
                if t.job.cancel.is_set():
                    raise Cancelled("the request was cancelled while it waited")
                with torch.no_grad():
                    self._run(t)
                err = None
            except Exception as e:  # the request's own failure: the next one goes on
                err = e
            self.rounds_run += 1
            if self.on_round is not None:
                self.on_round(1)
            with self._cv:
                self._busy = 0
            self._finish(t, err)
