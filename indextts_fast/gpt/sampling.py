"""The official generation semantics of UnifiedVoice: generation arguments, logits processors, beam scorer.

IndexTTS2 generates mel codes with Hugging Face ``generate`` on its ``GPT2InferenceModel``. The official repository
vendors transformers' generation utilities (``indextts/gpt/transformers_generation_utils.py``, with transformers
4.52.1's logits processors and ``BeamSearchScorer``); that is the reference followed here. The transformers-5 line
(``indextts2-inference``) runs HF 5's vectorized beam search instead, which selects the same beams and draws the same
random numbers, but its early-stop heuristic compares the best *running* beam where the scorer compares the best
candidate of the step, and it counts hitting ``max_length`` as finishing a beam; outputs can differ there.

Everything below works on device tensors of static shape updated in place: one generation step needs no host
synchronization, so the whole step (model, processors, draw, beam bookkeeping) is captured in one CUDA graph
(``decode.py``); the host reads the stop flag every few steps (and rewinds the generator past the extra draws).

Processors (each the same torch ops in the same order as the official ones, so their results are bit-identical):
    repetition penalty  every id present in input_ids (the prompt's fake ids and the start token included):
                        s -> s * p if s < 0 else s / p   (official: gather, where, scatter; here a seen-id mask)
    minimum lengths     the stop token's score -inf while len < min_length or len - prompt < min_new_tokens
    custom processors   the ``logits_processor`` list the caller passed (e.g. typical sampling), in order
    temperature         s / T                                            (sampling only)
    top-k               s < (k-th largest) -> -inf, k = max(top_k, min_keep)   (sampling only)
    top-p               ascending sort, softmax, cumsum <= 1 - top_p -> -inf, the last min_keep kept (sampling only)
with min_keep = 2 under beams (one eos id + 1), else 1. Beam methods apply them to ``log_softmax(logits)``;
greedy and sampling to the raw logits.
Beam step: scores + beam scores, flattened over beams x vocab; ``2 * num_beams`` candidates by ``topk`` or, sampling,
by ``multinomial`` over the softmax (without replacement; ``draw``: its algorithm without its host checks),
gathered and sorted descending; the first ``num_beams`` non-eos candidates continue; an eos candidate within the
first ``num_beams`` ranks closes a hypothesis.
Hypotheses: at most num_beams kept; score = sum_logprobs / generated_len ** length_penalty (fp64, as the official
Python floats); a new one enters if there is room or it beats the worst, which then leaves (ties: the earliest).
Done when num_beams are kept and (early_stopping True) or the worst kept >= best candidate / cur_len ** lp
(early_stopping False; "never": the best attainable with max_length when lp > 0). At max_length every open beam
is offered as a hypothesis; the best kept (ties: the latest) is returned, eos appended where it fits.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

import torch

from indextts_kernels.reference import (
    ProcessConfig,
    SelectConfig,
    beam_step_ref,
    hypothesis_add_ref,
    hypothesis_worst_ref,
    multinomial_race_ref,
    penalty_min_length_ref,
    sampling_warpers_ref,
)

__all__ = [
    "GenerationArgs",
    "UnsupportedGeneration",
    "resolve_generation_args",
    "process_scores",
    "process_config",
    "draw",
    "length_powers",
    "BeamScorer",
]


class UnsupportedGeneration(ValueError):
    """A generation argument the fast decode loop does not implement; the message names it."""


@dataclasses.dataclass(frozen=True)
class GenerationArgs:
    do_sample: bool
    num_beams: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    length_penalty: float
    early_stopping: Union[bool, str]  # True, False or "never" (any other accepted value: the official's else branch)
    max_length: int
    eos_token_id: int
    pad_token_id: int
    custom_processors: tuple = ()
    min_length: int = 0
    min_new_tokens: int = 0
    use_cache: Optional[bool] = True  # what the official generate is told: it decides its mel positions

    @property
    def min_tokens_to_keep(self) -> int:
        return 2 if self.num_beams > 1 else 1


# The defaults generate() applies to fields nobody set (transformers 4.52's GenerationConfig defaults, which
# transformers 5 applies through GenerationConfig._get_default_generation_params to the model config's None fields).
_DEFAULTS = {
    "do_sample": False, "num_beams": 1, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0,
    "length_penalty": 1.0, "early_stopping": False, "num_return_sequences": 1, "max_length": 20, "use_cache": True,
    "min_length": 0, "min_new_tokens": None,
}  # fmt: skip
_HONOURED = set(_DEFAULTS) | {"max_new_tokens", "bos_token_id", "eos_token_id", "pad_token_id"}
# sampling-only warpers: without do_sample the official generate never builds them, whatever their values
_SAMPLING_ONLY = {"typical_p": (None, 1.0), "min_p": (None,), "top_h": (None,), "epsilon_cutoff": (None, 0.0),
                  "eta_cutoff": (None, 0.0)}  # fmt: skip
# fields whose neutral value is the only one implemented: anything else is refused with its name
_NEUTRAL = {
    **_SAMPLING_ONLY, "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0), "encoder_repetition_penalty": (None, 1.0),
    "bad_words_ids": (None,), "force_words_ids": (None,), "constraints": (None,), "sequence_bias": (None,),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "remove_invalid_values": (None, False),
    "exponential_decay_length_penalty": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
    "guidance_scale": (None, 1.0), "num_beam_groups": (None, 1), "diversity_penalty": (None, 0.0),
    "penalty_alpha": (None,), "dola_layers": (None,), "prompt_lookup_num_tokens": (None,),
    "watermarking_config": (None,), "token_healing": (None, False), "stop_strings": (None,), "max_time": (None,),
    "low_memory": (None, False), "return_dict_in_generate": (None, False), "renormalize_logits": (None, False),
    "is_assistant": (None, False), "speculation_type": (None,), "use_mtp": (None, False),
    "return_legacy_cache": (None, True),
}  # fmt: skip
# what the returned tensor does not show: outputs only a GenerateOutput (return_dict_in_generate) would carry
_OUTPUT_ONLY = {"output_scores", "output_logits", "output_attentions", "output_hidden_states"}
# fields without effect on the tokens of a decoder-only, non-assisted generation
_NO_EFFECT_PREFIXES = ("assistant_", "num_assistant_tokens", "_")
_NO_EFFECT = {
    "transformers_version", "cache_implementation", "cache_config", "compile_config", "disable_compile",
    "max_cache_len", "prefill_chunk_size", "continuous_batching_config", "decoder_start_token_id",
    "max_matching_ngram_size", "target_lookbehind", "generation_kwargs",
}  # fmt: skip
# generate()'s own parameters besides the config fields, at the values that change nothing
_GENERATE_PARAMS = {
    "prefix_allowed_tokens_fn": (None,), "synced_gpus": (None, False), "assistant_model": (None,),
    "streamer": (None,), "negative_prompt_ids": (None,), "negative_prompt_attention_mask": (None,),
    "tokenizer": (None,), "assistant_tokenizer": (None,), "custom_generate": (None,), "use_model_defaults": (None,),
}  # fmt: skip
# inputs the official model's forward would receive (the official repository's generate fails on some even at None)
_FORWARD_INPUTS = {"token_type_ids", "position_ids", "head_mask", "inputs_embeds", "encoder_hidden_states",
                   "encoder_attention_mask", "past_key_values", "labels"}  # fmt: skip


def _single_id(name: str, v) -> Optional[int]:
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        v = v.flatten().tolist()
    if isinstance(v, (list, tuple)):
        if len(v) != 1:
            raise UnsupportedGeneration(f"{name}={v!r}: the fast decode loop supports one id")
        v = v[0]
    return int(v)


def _transformers5_generate(model) -> bool:
    """Whether ``model.generate`` is transformers 5's (the refactor line), which reads a None in the model's
    generation config as the default; the official repository's vendored transformers-4.52 generate keeps it None."""
    import transformers

    module = getattr(getattr(type(model), "generate", None), "__module__", "") or ""
    return module.startswith("transformers.") and int(transformers.__version__.split(".")[0]) >= 5


def _is(v, *neutral) -> bool:
    return any(v is n or (type(v) is type(n) and v == n) for n in neutral)


def resolve_generation_args(model: Any, kwargs: dict, input_len: int, logits_processor=None) -> GenerationArgs:
    """The effective generation arguments of ``model.generate(inputs, **kwargs)`` (``model``: the official
    inference model, for its ``generation_config`` and its generate's line), resolved and validated as the official
    generate does: each value the official refuses is refused (a ValueError naming it, where the official raises),
    each value it ignores is ignored, and every value the fast loop does not implement is refused by name (never
    ignored).

    A call's ``generation_config`` replaces the model's; the call's other arguments override it, None included (an
    explicit ``top_k=None`` turns top-k off). A None left in the model's config is the default under transformers
    5's generate (the refactor line) and stays None under the official repository's vendored one. The warpers'
    arguments are validated only where the official builds them (a temperature of 1, a top_p of 1 build nothing;
    without do_sample no warper is built)."""
    base_config = getattr(model, "generation_config", None)
    config_none_is_default = _transformers5_generate(model)
    kwargs = dict(kwargs)
    call_config = kwargs.pop("generation_config", None)
    if call_config is not None:
        base_config = call_config
    if base_config is None:
        raise UnsupportedGeneration("the inference model's generation_config is None (the official generate fails)")
    cfg = base_config.to_dict()
    explicit, bad, refused = {}, [], []
    for k, v in kwargs.items():
        if (k in cfg or k in _HONOURED or k in _NEUTRAL or k in _OUTPUT_ONLY) and not k.startswith("_"):
            explicit[k] = v
        elif k in _GENERATE_PARAMS:
            if not _is(v, *_GENERATE_PARAMS[k]):
                bad.append(f"{k}={v!r}")
        elif k in _FORWARD_INPUTS or v is not None:  # the official ignores unknown keyword arguments that are None
            bad.append(f"{k}={v!r}")

    def get(k):
        if k in explicit:
            return explicit[k]
        v = cfg.get(k)
        return _DEFAULTS.get(k) if v is None and (config_none_is_default or k not in cfg) else v

    do_sample = bool(get("do_sample"))
    values = {**cfg, **explicit}
    for k in values:
        if k in _HONOURED or k in _NO_EFFECT or k in _OUTPUT_ONLY or k.startswith(_NO_EFFECT_PREFIXES):
            continue
        if k in _SAMPLING_ONLY and not do_sample:
            continue
        if not _is(get(k), *_NEUTRAL.get(k, (None, False))):
            bad.append(f"{k}={get(k)!r}")
    if bad:
        raise UnsupportedGeneration("generation arguments the fast decode loop does not implement: " +
                                    ", ".join(sorted(bad)))  # fmt: skip

    num_beams = get("num_beams")
    if isinstance(num_beams, float) and num_beams == 1.0:
        num_beams = 1  # the official compares it, never uses it as a size
    if not isinstance(num_beams, int) or num_beams < 1:
        refused.append(f"num_beams={num_beams!r}: a positive integer is required")
    num_return = get("num_return_sequences")
    if num_return not in (None, 1):
        refused.append(f"num_return_sequences={num_return!r}: the fast decode loop returns one sequence (only 1)")
    early = get("early_stopping")
    if early is None and not config_none_is_default:
        refused.append("`early_stopping` must be a boolean or 'never', but is None.")
    elif early is not None and early not in (True, False, "never"):
        refused.append(f"`early_stopping` must be a boolean or 'never', but is {early!r}.")
    # the official scorer tests ``is True`` / ``is False`` and takes its "never" branch for anything else (1, 0)
    early = True if early is True else False if early is False or early is None else "never"
    lp = get("length_penalty")
    if isinstance(num_beams, int) and num_beams > 1 and not isinstance(lp, (int, float)):
        refused.append(f"length_penalty={lp!r}: a number is required with beams")
    rp = get("repetition_penalty")
    if rp is not None and rp != 1.0 and (not isinstance(rp, float) or not rp > 0):
        refused.append(f"`penalty` has to be a strictly positive float, but is {rp}")
    temperature, top_k, top_p = get("temperature"), get("top_k"), get("top_p")
    if do_sample:  # the official warpers validate their arguments when they are built
        if (
            temperature is not None
            and temperature != 1.0
            and (not isinstance(temperature, float) or not 0 < temperature < float("inf"))
        ):
            refused.append(f"temperature={temperature!r}: a strictly positive, finite float is required")
        if (
            top_k is not None
            and top_k != 0
            and (not isinstance(top_k, int) or top_k <= 0 or (isinstance(top_k, bool) and num_beams == 1))
        ):
            refused.append(f"top_k={top_k!r}: a strictly positive integer is required")
        if top_p is not None and top_p < 1.0 and not 0 <= float(top_p) <= 1:
            refused.append(f"top_p={top_p!r}: a float in [0, 1] is required")
    max_length, max_new = get("max_length"), explicit.get("max_new_tokens", cfg.get("max_new_tokens"))
    if max_new is not None:
        if max_new <= 0:
            refused.append(f"`max_new_tokens` must be greater than 0, but is {max_new}.")
        max_length = input_len + int(max_new)
    min_length, min_new = get("min_length") or 0, get("min_new_tokens") or 0
    eos = _single_id("eos_token_id", values.get("eos_token_id"))
    pad = _single_id("pad_token_id", values.get("pad_token_id"))
    if eos is None:
        refused.append("eos_token_id is required (the stop mel token)")
    if not refused and input_len >= max_length:
        refused.append(f"Input length of input_ids is {input_len}, but `max_length` is set to {max_length}. This can "
                       "lead to unexpected behavior. You should consider increasing `max_length` or, better yet, "
                       "setting `max_new_tokens`.")  # fmt: skip
    if refused:
        raise UnsupportedGeneration("; ".join(refused))
    return GenerationArgs(
        do_sample=do_sample, num_beams=int(num_beams), temperature=float(1.0 if temperature is None else temperature),
        top_k=int(top_k or 0), top_p=float(1.0 if top_p is None else top_p),
        repetition_penalty=float(1.0 if rp is None else rp), length_penalty=float(lp if num_beams > 1 else lp or 0.0),
        early_stopping=early, max_length=int(max_length), eos_token_id=eos, pad_token_id=eos if pad is None else pad,
        custom_processors=tuple(logits_processor or ()), min_length=int(min_length), min_new_tokens=int(min_new),
        use_cache=get("use_cache"),
    )  # fmt: skip


def process_scores(args: GenerationArgs, seen: Optional[torch.Tensor], scores: torch.Tensor,
                   input_ids: Optional[torch.Tensor] = None, cur: Optional[torch.Tensor] = None,
                   prompt_len: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
    """The official logits-processor chain on ``scores`` [rows, V] (fp32).

    ``seen`` [rows, V] bool marks the ids present in each row's prefix (needed when a repetition penalty is set):
    the official processor gathers the scores of the prefix ids, penalizes them and scatters them back; every id
    present gets the same value however often it occurs, so ``where(seen, penalized, scores)`` is the same result
    at a shape that does not grow (a CUDA graph replays it). ``input_ids`` [rows, L], the prefixes themselves, are
    needed only by custom processors; ``cur`` and ``prompt_len`` (device scalars: the sequences' length and the
    prompt's) only by the minimum lengths, which set the stop token's score to -inf while the length is short."""
    cfg = process_config(args)
    scores = penalty_min_length_ref(scores, cfg, seen, cur, prompt_len)
    for proc in args.custom_processors:
        scores = proc(input_ids, scores)
    return sampling_warpers_ref(scores, cfg)


def process_config(args: GenerationArgs, *, log_softmax: bool = False) -> ProcessConfig:
    """The processor chain's settings of ``args`` (the fused kernels' and the references' ``ProcessConfig``)."""
    return ProcessConfig(log_softmax=log_softmax, penalty=args.repetition_penalty, min_length=args.min_length,
                         min_new_tokens=args.min_new_tokens, eos=args.eos_token_id, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, min_keep=args.min_tokens_to_keep,
                         do_sample=args.do_sample)  # fmt: skip


def draw(probs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.multinomial(probs, n)`` (n = 1, or without replacement) without its host-side checks: the same
    algorithm on the same random numbers (the exponential race its fast path runs: argmax / top-n of
    probs / Exp(1)), so the same samples from the same generator state, at no host sync (a CUDA graph replays
    it). Returns (samples [rows, n], valid: the multinomial's own validity condition as a device bool)."""
    return multinomial_race_ref(probs, torch.empty_like(probs).exponential_(1), n)


def length_powers(length_penalty: float, n: int, device) -> torch.Tensor:
    """fp64 [n + 1]: ``float(g ** length_penalty)`` for g = 0..n computed on the host as the official Python
    floats (index 0, never a generated length, holds 1.0), looked up on the device by the beam scorer."""
    vals = [1.0] + [float(g**length_penalty) for g in range(1, n + 1)]
    return torch.tensor(vals, dtype=torch.float64, device=device)


class BeamScorer:
    """The official beam-search bookkeeping for one prompt (batch 1), as device tensors updated in place.

    ``step`` takes the flattened, beam-score-added scores [1, num_beams * V] and returns the next beams (scores,
    tokens, source rows) while recording finished hypotheses; it changes nothing where ``run`` (a device bool) is
    false. ``done`` is a device bool; ``finalize`` returns the best sequence. Hypothesis sequences are stored by
    value ([num_beams, capacity] buffer). The step length and the prompt length are device scalars of the caller
    (``cur``, ``prompt_len``) and ``reset`` takes a generation's prompt length and max_length, so the same state
    serves generation after generation.
    """

    def __init__(self, args: GenerationArgs, capacity: int, device):
        K = args.num_beams
        self.args, self.K = args, K
        self.hyp_scores = torch.empty((K,), dtype=torch.float64, device=device)
        self.hyp_seq = torch.empty((K,), dtype=torch.int64, device=device)  # insertion order (-1: empty)
        self.hyp_len = torch.empty((K,), dtype=torch.int64, device=device)
        self.hyp_ids = torch.empty((K, capacity), dtype=torch.int64, device=device)
        self.count = torch.empty((), dtype=torch.int64, device=device)
        self.inserted = torch.empty((), dtype=torch.int64, device=device)  # the seq number of the next insertion
        self.done = torch.empty((), dtype=torch.bool, device=device)
        self.powers = length_powers(args.length_penalty, capacity, device)
        # early_stopping="never": float((max_length - prompt_len) ** length_penalty), one value per generation
        self.never_power = torch.ones((), dtype=torch.float64, device=device)
        self.select = SelectConfig(num_beams=K, do_sample=args.do_sample, eos=args.eos_token_id,
                                   early_stopping=args.early_stopping, length_penalty=args.length_penalty)  # fmt: skip
        self.reset(0, 0)

    def reset(self, prompt_len: int, max_length: int) -> None:
        if self.args.early_stopping == "never" and self.args.length_penalty > 0.0:
            self.never_power.fill_(float((max_length - prompt_len) ** self.args.length_penalty))
        self.hyp_scores.fill_(float("inf"))  # +inf: an empty slot
        self.hyp_seq.fill_(-1)
        self.hyp_len.zero_()
        self.hyp_ids.fill_(self.args.pad_token_id)
        self.count.zero_()
        self.inserted.zero_()
        self.done.zero_()

    def _hyps(self) -> dict:
        return dict(hyp_scores=self.hyp_scores, hyp_seq=self.hyp_seq, hyp_len=self.hyp_len, hyp_ids=self.hyp_ids,
                    count=self.count, inserted=self.inserted)  # fmt: skip

    def _worst(self) -> torch.Tensor:
        return hypothesis_worst_ref(self._hyps())

    def _add(self, seq: torch.Tensor, seq_len: torch.Tensor, score: torch.Tensor, allowed: torch.Tensor) -> None:
        """Offer hypothesis ``seq`` [capacity] (its first ``seq_len`` tokens) with fp64 ``score`` when ``allowed``:
        kept if there is room or it beats the worst kept (which then leaves: the lowest score, then the earliest
        inserted)."""
        hypothesis_add_ref(self._hyps(), seq, seq_len, score, allowed)

    def step(
        self,
        scores: torch.Tensor,
        input_ids: torch.Tensor,
        cur: torch.Tensor,
        prompt_len: torch.Tensor,
        run: torch.Tensor,
    ):
        """One beam step. ``scores`` [1, K * V] (processed log-probs + beam scores); ``input_ids`` [K, capacity]
        holding the K running sequences (first ``cur`` tokens valid). Returns (beam_scores [K] fp32, tokens [K],
        source rows [K], the draw's validity (a device bool; True without sampling))."""
        args = self.args
        noise = torch.empty_like(scores).exponential_(1) if args.do_sample else None  # torch.multinomial's draw
        t = dict(self._hyps(), ids=input_ids, cur=cur, prompt_len=prompt_len, done=self.done, powers=self.powers,
                 never_power=self.never_power)  # fmt: skip
        return beam_step_ref(scores, noise, t, self.select, run)

    def finalize(self, beam_scores: torch.Tensor, input_ids: torch.Tensor, cur_len: int, prompt_len: int,
                 max_length: int) -> torch.Tensor:  # fmt: skip
        """The best sequence [1, len] (prompt included, eos appended if it fits max_length)."""
        if not bool(self.done):
            denom = float((cur_len - prompt_len) ** self.args.length_penalty)
            allowed = torch.ones((), dtype=torch.bool, device=beam_scores.device)
            n = torch.full((), cur_len, dtype=torch.int64, device=beam_scores.device)
            for i in range(self.K):
                self._add(input_ids[i], n, beam_scores[i].double() / denom, allowed)
        filled = self.hyp_seq >= 0
        key = torch.where(filled, self.hyp_scores, -float("inf"))
        top = key.max()
        tied = filled & (key == top)
        best = int(torch.argmax(torch.where(tied, self.hyp_seq, -1)))
        n = int(self.hyp_len[best])
        seq = self.hyp_ids[best, :n].clone()  # a copy: the next generation rewrites hyp_ids in place
        if n < max_length:
            seq = torch.cat([seq, seq.new_full((1,), self.args.eos_token_id)])
        return seq[None, :]
