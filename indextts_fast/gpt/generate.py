"""The GPT decode loop: one batch-1 prompt prefill, then one decode step per code, with the official sampling.

Replaces Hugging Face ``generate`` inside ``UnifiedVoice.inference_speech`` (greedy, multinomial sampling, beam
search, beam sampling; see ``sampling.py`` for the exact semantics). The official prefill runs ``num_beams``
identical rows; here the prompt is prefilled once into physical row 0 of a static KV cache and every beam reads it
through the row table. Beams are reordered by permuting that table, never by copying the cache.

Mel positions follow the default official path (``GPT2InferenceModel.forward``): the tokens after the conditioning
prefix in the prompt (the start token, then any ``input_tokens``) get mel positions 0, 1, ...; a token fed at step
``cur_len`` (the sequence length once it is appended) gets ``cur_len - prefix_len``, i.e. code k at ``k + 2``.

Per token on the device (``loop.py``): the processors, the draw and the beam bookkeeping, then the embedding, 24
blocks (each: LayerNorm + c_attn, attention, c_proj + residual, LayerNorm + c_fc + gelu_new, c_proj + residual)
and the head: one CUDA graph replay on CUDA. The host reads the stop flag every ``CHECK_EVERY`` tokens; with
sampling it then puts the generator back to its state after the last token's draw.
"""

from __future__ import annotations

import torch

from ..profiling import nvtx_range
from .engine import DecodeStep
from .loop import LoopState, position_error
from .model import FastGPT
from .sampling import GenerationArgs

__all__ = ["generate", "decode_loop", "new_engine", "CAPACITY_STEP"]

CAPACITY_STEP = 256  # positions: a new engine's KV cache and sequences are sized in multiples of this


def _check_position(fast: FastGPT, pos: int) -> None:
    n = fast.w.mel_pos.shape[0]
    if pos >= n:
        raise position_error(pos, n)


def new_engine(fast: FastGPT, rows: int, max_len: int, engine: DecodeStep | None = None, *,
               graphs: bool | None = None) -> DecodeStep:  # fmt: skip
    """A decode step for ``rows`` rows of ``max_len`` positions, reusing ``engine`` (its cache, its loop states and
    their captured graphs) when it fits; its cache reset for a new generation. A new one gets its capacity rounded
    up to ``CAPACITY_STEP`` positions, so that sentences of similar lengths share one engine and its graphs."""
    if engine is not None and engine.fits(fast, rows, max_len) and (graphs is None or engine.graphs == graphs):
        engine.cache.reset()
        return engine
    return DecodeStep(fast, rows, -(-max_len // CAPACITY_STEP) * CAPACITY_STEP, graphs=graphs)


def generate(
    fast: FastGPT,
    args: GenerationArgs,
    input_ids: torch.Tensor,
    prefix_emb: torch.Tensor,
    engine: DecodeStep | None = None,
    *,
    position_offset: int = 0,
    graphs: bool | None = None,
) -> tuple[torch.Tensor, DecodeStep]:
    """Generate from one prompt. ``input_ids`` [1, P] (the official fake ids, then the start token and any given
    tokens), ``prefix_emb`` [1, prefix_len, C] (the conditioning + text embeddings ``inference_speech`` stores).
    Returns (sequences [1, L] including the prompt, as the official generate, and the decode step for reuse: its
    cache, its loop states and, on CUDA, their captured graphs). ``graphs``: replay each token's tick as a CUDA
    graph (default: on CUDA).

    ``position_offset`` shifts the decode steps' mel positions: 0 is the official repository's convention (code k
    at k + 2). The transformers-5 refactor run with a transformers whose generate hands the cache over as
    ``cache`` (5.24, 5.25) finds no ``past_key_values``, recomputes the whole sequence every step without a cache and
    so gives code k position k + 1: -1 reproduces that (the tests use it to show it is the only difference).
    """
    prefix_len, P = prefix_emb.shape[1], input_ids.shape[1]
    dev = fast.device
    input_ids = input_ids.to(dev)
    tail = input_ids[:, prefix_len:]
    _check_position(fast, tail.shape[1] - 1)
    h = torch.cat([fast.to_stream(prefix_emb.to(dev)),
                   fast.embed_mel(tail, torch.arange(tail.shape[1], device=dev))], dim=1)  # fmt: skip
    engine = new_engine(fast, args.num_beams, max(args.max_length, P), engine, graphs=graphs)
    cache = engine.cache
    with nvtx_range("gpt.prefill"):
        h = fast.prefill(h, cache)
        cache.share_prompt(P)
        logits = fast.logits(h[:, -1])
    state = engine.loop(args, logits.shape[-1])
    state.reset(input_ids, logits, prefix_len=prefix_len, max_length=args.max_length, position_offset=position_offset)
    return state.run(engine.step, cache.reorder, graphs=engine.graphs), engine


def decode_loop(args: GenerationArgs, input_ids: torch.Tensor, logits: torch.Tensor, step, *, reorder=None,
                record=None) -> torch.Tensor:  # fmt: skip
    """The decode loop (eager) over a model given as ``logits`` of the prompt's last position [1, V] (fp32) and
    ``step(tokens [rows]) -> logits [rows, V]`` for the tokens just appended (never called after the stop, as in
    the official loop). ``reorder(rows)`` is told every beam reorder. ``record``, a list, receives per step
    ``(processed scores [rows, V], chosen tokens [rows], source rows [rows])``. Returns the sequences [1, L]."""
    P = input_ids.shape[1]
    state = LoopState(args, max(args.max_length, P), logits.shape[-1], logits.device, pos_limit=2**62)
    state.reset(input_ids, logits, prefix_len=0, max_length=args.max_length)
    # eager: the host may read ``active``, and the model is not asked for logits after the stop
    return state.run(lambda tokens, pos, active: step(tokens) if bool(active) else state.logits, reorder,
                     record=record)  # fmt: skip


def refactor_line_tokens(uv, fast: FastGPT, gen: dict, steps: int, seed: int, *, return_engine: bool = False):
    """The codes the transformers-5 refactor (indextts2-inference under transformers 5.24, 5.25) generates, from our
    decode loop: the prompt ``inference_speech`` last cached on ``uv.inference_model`` and ``gen`` (its generation
    arguments) under ``seed``, with that line's one different convention, code k at mel position k + 1
    (``position_offset=-1``). Used to show that convention is the only difference from that line. With
    ``return_engine``: (codes, the engine that ran them)."""
    from .sampling import resolve_generation_args

    prefix = uv.inference_model.cached_mel_emb
    P = prefix.shape[1] + 1
    ids = torch.ones((1, P), dtype=torch.long, device=prefix.device)
    ids[:, -1] = uv.start_mel_token
    kw = dict(gen, bos_token_id=uv.start_mel_token, pad_token_id=uv.stop_mel_token, eos_token_id=uv.stop_mel_token,
              max_length=P + steps)  # fmt: skip
    args, _ = resolve_generation_args(uv.inference_model.generation_config, kw, P)
    torch.manual_seed(seed)  # the conditioning encoders draw no random numbers: the same stream as the official run
    with torch.no_grad():
        seqs, engine = generate(fast, args, ids, prefix, position_offset=-1)
    return (seqs[:, P:], engine) if return_engine else seqs[:, P:]
