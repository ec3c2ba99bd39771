"""Kernel demo: every op through the backend dispatch, at IndexTTS2 shapes.

For each op prints the backend that ran it, its max error against the fp64 torch reference next to
PyTorch's own error at the same dtype (the tolerance rule's yardstick), and, on a GPU, its device time
next to torch eager's.

    python -m indextts_fast.demo            # uses CUDA when present, else the torch reference
    TRITON_INTERPRET=1 python -m indextts_fast.demo --small   # the Triton kernels in the CPU interpreter
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .tolerance import judge


def _cases(small: bool, device: str):
    import indextts_fast as F
    from indextts_kernels import reference as ref

    g = torch.Generator().manual_seed(0)

    def rn(*shape, dtype=torch.float32, mean=0.0):
        return (torch.randn(*shape, generator=g) + mean).to(device=device, dtype=dtype)

    T_dit, T_gpt = (37, 19) if small else (1721, 600)
    cases = []
    # GPT-2 ln_2 with the fused residual add, fp16 stream, fp32 output (autocast)
    x, r = rn(1, T_gpt, 1280, dtype=torch.float16), rn(1, T_gpt, 1280, dtype=torch.float16)
    w, b = rn(1280, dtype=torch.float16, mean=1.0), rn(1280, dtype=torch.float16)
    cases.append((
        f"layer_norm+residual  GPT 1x{T_gpt}x1280 fp16->fp32",
        lambda: F.layer_norm(x, w, b, residual=r, out_dtype=torch.float32)[0],
        lambda: ref.layer_norm_ref(x, w, b, residual=r, out_dtype=torch.float32)[0],
        lambda: ref.layer_norm_ref((x + r).double(), w.double(), b.double()),
    ))  # fmt: skip
    # DiT AdaLN, per batch row, fp32 as the official s2mel runs
    xd, gd = rn(2, T_dit, 512, mean=0.2), rn(512, mean=1.0)
    scale, shift = rn(2, 1, 1024, mean=0.5).split(512, dim=-1)
    cases.append((
        f"adaptive_rms_norm    DiT 2x{T_dit}x512 fp32",
        lambda: F.adaptive_rms_norm(xd, gd, scale, shift),
        lambda: ref.adaptive_rms_norm_ref(xd, gd, scale, shift),
        lambda: ref.adaptive_rms_norm_ref(xd.double(), gd.double(), scale.double(), shift.double()),
    ))  # fmt: skip
    sh, sc = rn(2, 1024).chunk(2, dim=1)
    cases.append((
        f"final_layer_modulate DiT 2x{T_dit}x512 fp32",
        lambda: F.final_layer_modulate(xd, sh, sc),
        lambda: ref.final_layer_modulate_ref(xd, sh, sc),
        lambda: ref.final_layer_modulate_ref(xd.double(), sh.double(), sc.double()),
    ))  # fmt: skip
    xh = xd.half()
    cases.append((
        f"adaptive_rms_norm    DiT 2x{T_dit}x512 fp16",
        lambda: F.adaptive_rms_norm(xh, gd.half(), scale.half(), shift.half()),
        lambda: ref.adaptive_rms_norm_ref(xh, gd.half(), scale.half(), shift.half()),
        lambda: ref.adaptive_rms_norm_ref(xh.double(), gd.half().double(), scale.half().double(),
                                          shift.half().double()),
    ))  # fmt: skip
    # DiT attention, RoPE fused, reading the wqkv output; fp32 as the official s2mel
    qkv = rn(2, T_dit, 1536, mean=0.1)
    cases.append((
        f"dit_attention        DiT 2x8x{T_dit}x64 fp32",
        lambda: F.dit_attention(qkv, 8),
        lambda: ref.dit_attention_ref(qkv, 8),
        lambda: ref.dit_attention_ref(qkv.double(), 8),
    ))  # fmt: skip
    # GPT-2 causal prefill filling a static KV cache, fp16
    qkv_g = rn(1, T_gpt, 3840, dtype=torch.float16)
    S = T_gpt + 8
    kc, vc = (torch.zeros(1, 20, S, 64, dtype=torch.float16, device=device) for _ in range(2))
    kc64, vc64 = (torch.zeros(1, 20, S, 64, dtype=torch.float64, device=device) for _ in range(2))
    cases.append((
        f"gpt_prefill_attention GPT 1x20x{T_gpt}x64 fp16",
        lambda: F.gpt_prefill_attention(qkv_g, 20, kc, vc),
        lambda: ref.gpt_prefill_attention_ref(qkv_g, 20, kc.clone(), vc.clone()),
        lambda: ref.gpt_prefill_attention_ref(qkv_g.double(), 20, kc64, vc64),
    ))  # fmt: skip
    # DiT SwiGLU feed-forward with the residual, packed w13, fp32
    w13, w2 = rn(3072, 512) * 0.05, rn(512, 1536) * 0.05
    cases.append((
        f"swiglu_feed_forward  DiT 2x{T_dit}x512->1536 fp32",
        lambda: F.swiglu_feed_forward(xd, w13, w2, residual=xd),
        lambda: ref.swiglu_feed_forward_ref(xd, w13, w2, residual=xd),
        lambda: ref.swiglu_feed_forward_ref(xd.double(), w13.double(), w2.double(), residual=xd.double()),
    ))  # fmt: skip
    # GPT-2 MLP (c_fc + gelu_new, c_proj + residual), weights [out, in], fp16, prefill and 3-beam decode
    fc_w, fc_b = rn(5120, 1280, dtype=torch.float16) * 0.03, rn(5120, dtype=torch.float16) * 0.1
    pr_w, pr_b = rn(1280, 5120, dtype=torch.float16) * 0.02, rn(1280, dtype=torch.float16) * 0.1
    ws = (fc_w, fc_b, pr_w, pr_b)
    for name, hx in (("prefill", x), ("decode", x[:, :3].transpose(0, 1).contiguous())):
        cases.append((
            f"gpt2_mlp             GPT {name} {'x'.join(map(str, hx.shape))} fp16",
            lambda hx=hx: F.gpt2_mlp(hx, *ws, residual=hx),
            lambda hx=hx: ref.gpt2_mlp_ref(hx, *ws, residual=hx),
            lambda hx=hx: ref.gpt2_mlp_ref(hx.double(), *(w.double() for w in ws), residual=hx.double()),
        ))  # fmt: skip
    return cases


def _time_ms(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="small shapes (for the CPU interpreter)")
    args = ap.parse_args(argv)

    import indextts_fast as F

    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = F.backend_for(torch.device(device))
    print(f"indextts_fast {F.__version__}  torch {torch.__version__}  device {device}  backend {backend}")
    if device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")
    print(f"{'op':<50} {'backend':<10} {'max err':>10} {'torch err':>10} {'ok':>3} {'us':>9} {'torch us':>9}")
    failures = 0
    with torch.inference_mode():
        for name, ours, eager, high in _cases(args.small, device):
            t0 = time.perf_counter()
            out = ours()
            wall = time.perf_counter() - t0
            v = judge(out, eager(), high())
            err, torch_err, ok = v.err, v.torch_err, v.ok
            failures += not ok
            t_ours = t_eager = "-"
            if device == "cuda":
                t_ours, t_eager = f"{1000 * _time_ms(ours):.1f}", f"{1000 * _time_ms(eager):.1f}"
            print(f"{name:<50} {backend:<10} {err:>10.2e} {torch_err:>10.2e} {'yes' if ok else 'NO':>3} "
                  f"{t_ours:>9} {t_eager:>9}")  # fmt: skip
            if device != "cuda" and backend == "interpret":
                print(f"{'':<50} (interpreted in {wall:.2f} s: a correctness run, not a timing)")
    if device != "cuda":
        print("timings need a GPU; on CPU the ops ran for correctness only")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
