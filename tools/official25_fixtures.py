"""Golden facts of the official IndexTTS-2.5 GPT, for tests/gpt/test_indextts25.py.

No package on the index carries the official 2.5 GPT code (``indextts/gpt/model_v2.py`` with
``spk_cond_mode="campplus"``), so the tests read what this script saw it do. It imports the ``indextts`` package of
a checkout of github.com/index-tts/index-tts (commit ee40fa7 or later), builds a tiny 2.5 UnifiedVoice with weights
drawn by name (``indextts_fast.official.seeded_by_name``: the test rebuilds the same GPT-2 stack, mel tables and
heads in a 2.0 UnifiedVoice), and runs ``inference_speech`` as ``infer_v2_5.infer_generator`` calls it (the
emotion vector from ``merge_emovec``, the CAMPPlus style as ``campplus_embedding``, the language index, the text
with its appended stop id). For each case it keeps what reached ``inference_model.generate``: the stored prefix
(with its masked pad rows), the prompt ids, the attention mask, the generation arguments and the seed, and what
generate returned; for the first case also the prompt's last hidden state and logits, in fp32 and, where the
official bf16 path runs here, in bf16.

Run it in the environment with the transformers the official repository pins (4.52.1: .venv-tf452):

    .venv-tf452/bin/python tools/official25_fixtures.py --official /path/to/index-tts [--out tests/fixtures/official25]
    .venv-tf452/bin/python tools/official25_fixtures.py --official /path/to/index-tts --check

``--check`` writes nothing: it runs every case on the official 2.5 UnifiedVoice itself, then again after
``indextts_fast.enable`` on it, and exits 1 unless the sequences are identical.

The checkout's ``indextts.utils.tokenizer`` imports ``whisper`` (and ``tiktoken``) for the text tokenizer, which the
GPT does not use: where they are not installed, empty stand-in modules take their place (the GPT module only reads
``LANGUAGE_DICT`` from it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import io
import json
import subprocess
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indextts_fast.official import prompt_pass, seeded_by_name  # noqa: E402

# head_dim 64 (the fast GPT's attention kernels take 64 and 128), vocabularies of a few dozen codes
CONFIG = dict(layers=2, model_dim=128, heads=2, max_text_tokens=32, max_mel_tokens=48, number_text_tokens=100,
              number_mel_codes=130, start_mel_token=128, stop_mel_token=129, start_text_token=0,
              stop_text_token=1)  # fmt: skip
EMO = dict(output_size=64, linear_units=128, attention_heads=4, num_blocks=1, input_layer="conv2d2", perceiver_mult=2)
SEED, STOP_BIAS, W2V_FRAMES = 5, 0.0, 37
MAX_CODES = 24
CASES = (
    # name, generation kwargs, text ids (before the appended stop id), language index (None: langs=None), seed
    ("greedy_pad3", dict(do_sample=False, num_beams=1), [44, 0, 57, 12, 1, 90, 33], 1, 3),
    ("beam_langs_none", dict(do_sample=False, num_beams=3), [61, 7, 15, 80, 23, 9], None, 4),
    (
        "beam_sample_defaults",
        dict(do_sample=True, num_beams=3, top_k=30, top_p=0.8, temperature=0.8),
        [70, 0, 31, 8],
        105,
        7,
    ),  # fmt: skip
    ("sample", dict(do_sample=True, num_beams=1, top_k=30, top_p=0.8, temperature=0.8), [19, 52, 4, 88, 66], 0, 11),
)
OFFICIAL = dict(repetition_penalty=10.0, length_penalty=0.0, num_return_sequences=1)


def _stand_ins() -> None:
    """Empty modules where missing: the text tokenizer's imports (the GPT does not tokenize) and torchaudio
    (imported by indextts.utils.common, whose make_pad_mask the conformer reads; no torchaudio call runs)."""
    for name in ("whisper", "whisper.tokenizer", "tiktoken", "torchaudio"):
        try:
            __import__(name)
        except ImportError:
            mod = types.ModuleType(name)
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
            mod.Tokenizer = type("Tokenizer", (), {})
            sys.modules[name] = mod


def _import_official(checkout: Path):
    import transformers  # noqa: F401  (before the stand-ins: it probes which packages are installed)

    sys.path.insert(0, str(checkout))
    _stand_ins()
    for name in [n for n in sys.modules if n == "indextts" or n.startswith("indextts.")]:
        del sys.modules[name]
    import indextts.gpt.model_v2 as mv

    if not str(Path(mv.__file__).resolve()).startswith(str(checkout.resolve())):
        sys.exit(f"imported {mv.__file__}, not the checkout's indextts")
    return mv


def build(mv):
    torch.manual_seed(SEED)
    uv = mv.UnifiedVoice(**CONFIG, condition_type="conformer_perceiver", condition_module=EMO,
                         emo_condition_module=EMO, spk_cond_mode="campplus").eval()  # fmt: skip
    seeded_by_name(uv, SEED, stop_bias=STOP_BIAS, stop_token=CONFIG["stop_mel_token"])
    return uv


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    spk = torch.randn(1, W2V_FRAMES, 1024, generator=g)  # w2v-BERT features of the speaker reference
    style = torch.randn(1, 192, generator=g)  # CAMPPlus style
    return spk, style


def run_case(uv, gen: dict, text: list, lang, seed: int) -> dict:
    """inference_speech as infer_v2_5 calls it; what reached generate and what it returned."""
    seen = {}
    official_generate = uv.inference_model.generate

    def spy(inputs, **kwargs):
        seen.update(inputs=inputs.clone(), kwargs=dict(kwargs), prefix=uv.inference_model.cached_mel_emb.clone())
        out = official_generate(inputs, **kwargs)
        seen["out"] = out.clone()
        return out

    spk, style = _inputs(seed)
    ids = torch.nn.functional.pad(torch.tensor([text], dtype=torch.int32), (0, 1), value=1)
    langs = None if lang is None else torch.tensor([lang])
    lens = torch.tensor([spk.shape[-1]])
    uv.inference_model.generate = spy
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            emovec = uv.merge_emovec(spk, spk, lens, lens, alpha=1.0)
            torch.manual_seed(seed)
            uv.inference_speech(spk, ids, langs, spk, cond_lengths=lens, emo_cond_lengths=lens, emo_vec=emovec,
                                campplus_embedding=style, max_generate_length=MAX_CODES, **gen, **OFFICIAL)  # fmt: skip
    finally:
        del uv.inference_model.generate
    return seen


def prompt_outputs(uv, seen: dict, dtype=None) -> dict:
    """The official inference model's first forward on the stored prompt (``official.prompt_pass``), under CPU
    autocast at ``dtype`` (None: none): its last hidden state and logits, as fp32."""
    with contextlib.ExitStack() as stack:
        if dtype is not None:
            stack.enter_context(torch.autocast("cpu", dtype=dtype))
        hidden, logits = prompt_pass(uv, seen["prefix"], seen["inputs"], seen["kwargs"]["attention_mask"])
    return {"hidden": hidden.float(), "logits": logits.float()}


def check(mv) -> int:
    import indextts_fast

    uv = build(mv)
    uv.post_init_gpt2_config(use_deepspeed=False, kv_cache=True, half=False)
    bad = 0
    for name, gen, text, lang, seed in CASES:
        official = run_case(uv, gen, text, lang, seed)["out"]
        with indextts_fast.enabled(uv) as h:
            ours = run_case(uv, gen, text, lang, seed)["out"]
            calls = h.parts[0].patch.calls["generate"]
        same = torch.equal(official, ours) and calls == 1
        bad += not same
        print(f"{name}: {'identical' if same else 'DIFFERENT'} ({official.shape[1]} positions, fast calls {calls})")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", type=Path, required=True, help="checkout of github.com/index-tts/index-tts")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "official25")
    ap.add_argument("--check", action="store_true", help="compare enable() on the official model; write nothing")
    a = ap.parse_args()
    mv = _import_official(a.official)
    if a.check:
        return check(mv)
    import transformers

    try:
        commit = subprocess.run(["git", "-C", str(a.official), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
    except (subprocess.CalledProcessError, FileNotFoundError):
        commit = (a.official / "COMMIT").read_text().strip() if (a.official / "COMMIT").exists() else "unknown"
    uv = build(mv)
    uv.post_init_gpt2_config(use_deepspeed=False, kv_cache=True, half=False)
    tensors, cases = {}, []
    for name, gen, text, lang, seed in CASES:
        seen = run_case(uv, gen, text, lang, seed)
        kw = {k: v for k, v in seen["kwargs"].items() if k not in ("attention_mask", "logits_processor")}
        tensors[f"{name}.prefix"] = seen["prefix"].contiguous()
        cases.append(dict(name=name, seed=seed, lang=lang, text=text, kwargs=kw,
                          input_ids=seen["inputs"].tolist(), attention_mask=seen["kwargs"]["attention_mask"].tolist(),
                          masked_rows=int((seen["kwargs"]["attention_mask"][0] == 0).sum()),
                          sequences=seen["out"].tolist()))  # fmt: skip
        print(f"{name}: {cases[-1]['masked_rows']} masked rows, {seen['out'].shape[1] - seen['inputs'].shape[1]} "
              f"codes: {seen['out'][0, seen['inputs'].shape[1]:].tolist()}")  # fmt: skip
    first = run_case(uv, CASES[0][1], CASES[0][2], CASES[0][3], CASES[0][4])
    for k, v in prompt_outputs(uv, first).items():
        tensors[f"prompt.fp32.{k}"] = v.contiguous()
    # use_bf16: the model halved, post_init_gpt2_config(half=True), run under bf16 autocast. CPU autocast has no
    # fp32 LayerNorm (the official bf16 GPT raises "mixed dtype (CPU)" there); tests/autocast_ref.py adds CUDA
    # autocast's fp32 list, the numerics of the official run on a GPU
    half = build(mv).bfloat16()
    half.post_init_gpt2_config(use_deepspeed=False, kv_cache=True, half=True)
    try:
        prompt_outputs(half, first, torch.bfloat16)
        bf16 = "CPU autocast"
    except RuntimeError as e:
        bf16 = f"CPU autocast raises {str(e).splitlines()[0][:120]}; run under tests/autocast_ref.official_autocast"
        from tests.autocast_ref import official_autocast

        with official_autocast("cpu", torch.bfloat16):
            outs = prompt_outputs(half, first, None)
        for k, v in outs.items():
            tensors[f"prompt.bf16.{k}"] = v.contiguous()
    print(f"bf16 prompt pass: {bf16}")
    a.out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(tensors, str(a.out / "gpt_tiny.safetensors"))
    meta = dict(official_commit=commit, transformers=transformers.__version__, torch=torch.__version__,
                config=CONFIG, emo_condition_module=EMO, seed=SEED, stop_bias=STOP_BIAS, weights="seeded_by_name",
                official_kwargs=OFFICIAL, max_codes=MAX_CODES, prompt_case=CASES[0][0], bf16_prompt_pass=bf16,
                cases=cases)  # fmt: skip
    (a.out / "gpt_tiny.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {a.out}/gpt_tiny.json and gpt_tiny.safetensors (official {commit[:7]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
