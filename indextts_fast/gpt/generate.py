"""The GPT decode loop: one batch-1 prompt prefill, then one decode step per code, with the official sampling.

Replaces Hugging Face ``generate`` inside ``UnifiedVoice.inference_speech`` (greedy, multinomial sampling, beam
search, beam sampling; see ``sampling.py`` for the exact semantics). The official prefill runs ``num_beams``
identical rows; here the prompt is prefilled once into physical row 0 of a static KV cache and every beam reads it
through the row table. Beams are reordered by permuting that table, never by copying the cache.

Mel positions follow the default official path (``GPT2InferenceModel.forward``): the tokens after the conditioning
prefix in the prompt (the start token, then any ``input_tokens``) get mel positions 0, 1, ...; a token fed at step
``cur_len`` (the sequence length once it is appended) gets ``cur_len - prefix_len``, i.e. code k at ``k + 2``.

Per step on the device: the embedding, 24 blocks (each: LayerNorm + c_attn, attention, c_proj + residual,
LayerNorm + c_fc + gelu_new, c_proj + residual) and the head, as one CUDA graph replay on CUDA (``engine.py``);
then the processors, the candidate draw and the beam bookkeeping; the host reads one flag per step (stop?).
"""

from __future__ import annotations

import torch

from ..profiling import nvtx_range
from .engine import DecodeStep
from .model import FastGPT
from .sampling import BeamScorer, GenerationArgs, process_scores

__all__ = ["generate", "decode_loop", "new_engine"]


def _check_position(fast: FastGPT, pos: int) -> None:
    n = fast.w.mel_pos.shape[0]
    if pos >= n:
        raise IndexError(f"mel position {pos} is beyond the mel position table ({n} rows): max_length is too large")


def new_engine(fast: FastGPT, rows: int, max_len: int, engine: DecodeStep | None = None, *,
               graphs: bool | None = None) -> DecodeStep:  # fmt: skip
    """A decode step for ``rows`` rows of ``max_len`` positions, reusing ``engine`` (its cache and its captured
    graph) when it fits; its cache reset for a new generation."""
    if engine is not None and engine.fits(fast, rows, max_len) and (graphs is None or engine.graphs == graphs):
        engine.cache.reset()
        return engine
    return DecodeStep(fast, rows, max_len, graphs=graphs)


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
    cache and, on CUDA, its captured graph). ``graphs``: replay the decode step as a CUDA graph (default: on CUDA).

    ``position_offset`` shifts the decode steps' mel positions: 0 is the official repository's convention (code k
    at k + 2). The transformers-5 refactor run with a transformers whose generate hands the cache over as
    ``cache`` (5.24) finds no ``past_key_values``, recomputes the whole sequence every step without a cache and
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

    def step(tokens: torch.Tensor, cur: int) -> torch.Tensor:
        pos = cur - prefix_len + position_offset
        _check_position(fast, pos)
        return engine(tokens, pos)

    return decode_loop(args, input_ids, logits, step, reorder=cache.reorder), engine


def decode_loop(args: GenerationArgs, input_ids: torch.Tensor, logits: torch.Tensor, step, *, reorder=None,
                record=None) -> torch.Tensor:  # fmt: skip
    """The official generation loop over a model given as ``logits`` of the prompt's last position [1, V] (fp32)
    and ``step(tokens [rows], cur_len) -> logits [rows, V]`` for the tokens just appended (cur_len: the sequence
    length with them). ``reorder(rows)`` is told every beam reorder. ``record``, a list, receives per step
    ``(processed scores [rows, V], chosen tokens [rows], source rows [rows])``. Returns the sequences [1, L]."""
    dev = logits.device
    K, P = args.num_beams, input_ids.shape[1]
    ids = torch.full((K, max(args.max_length, P)), args.pad_token_id, dtype=torch.int64, device=dev)
    ids[:, :P] = input_ids
    cur = P
    if cur >= args.max_length:  # nothing to generate: the official loop does not run
        return ids[:1, :cur]
    if K == 1:
        while True:
            scores = process_scores(args, ids[:, :cur], logits)
            if args.do_sample:
                tok = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                tok = torch.argmax(scores, dim=-1)
            if record is not None:
                record.append((scores, tok, torch.zeros_like(tok)))
            ids[:, cur] = tok
            cur += 1
            if cur >= args.max_length or bool(tok[0] == args.eos_token_id):
                return ids[:, :cur]
            logits = step(tok, cur)

    scorer = BeamScorer(args, P, dev)
    beam_scores = torch.zeros((K,), dtype=torch.float32, device=dev)
    beam_scores[1:] = -1e9  # only the first (identical) beam's candidates count at the first step
    logits = logits.expand(K, -1)
    while True:
        processed = process_scores(args, ids[:, :cur], torch.log_softmax(logits, dim=-1))
        scores = processed + beam_scores[:, None]
        beam_scores, tokens, rows = scorer.step(scores.view(1, -1), ids, cur)
        if record is not None:
            record.append((processed, tokens, rows))
        ids = ids.index_select(0, rows)
        ids[:, cur] = tokens
        cur += 1
        if reorder is not None:
            reorder(rows)
        if cur >= args.max_length or bool(scorer.done):
            break
        logits = step(tokens, cur)
    return scorer.finalize(beam_scores, ids, cur)


def refactor_line_tokens(uv, fast: FastGPT, gen: dict, steps: int, seed: int) -> torch.Tensor:
    """The codes the transformers-5 refactor (indextts2-inference under transformers 5.24) generates, from our decode
    loop: the prompt ``inference_speech`` last cached on ``uv.inference_model`` and ``gen`` (its generation
    arguments) under ``seed``, with that line's one different convention, code k at mel position k + 1
    (``position_offset=-1``). Used to show that convention is the only difference from that line."""
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
        seqs, _ = generate(fast, args, ids, prefix, position_offset=-1)
    return seqs[:, P:]
