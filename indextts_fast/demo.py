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
    print(f"{'op':<46} {'backend':<10} {'max err':>10} {'torch err':>10} {'ok':>3} {'us':>9} {'torch us':>9}")
    failures = 0
    with torch.inference_mode():
        for name, ours, eager, high in _cases(args.small, device):
            t0 = time.perf_counter()
            out = ours()
            wall = time.perf_counter() - t0
            hi = high()
            err = float((out.double() - hi).abs().max())
            torch_err = float((eager().double() - hi).abs().max())
            floor = torch.finfo(out.dtype).eps * max(1.0, float(hi.abs().max()))
            ok = err <= 2 * torch_err + floor
            failures += not ok
            t_ours = t_eager = "-"
            if device == "cuda":
                t_ours, t_eager = f"{1000 * _time_ms(ours):.1f}", f"{1000 * _time_ms(eager):.1f}"
            print(f"{name:<46} {backend:<10} {err:>10.2e} {torch_err:>10.2e} {'yes' if ok else 'NO':>3} "
                  f"{t_ours:>9} {t_eager:>9}")  # fmt: skip
            if device != "cuda" and backend == "interpret":
                print(f"{'':<46} (interpreted in {wall:.2f} s: a correctness run, not a timing)")
    if device != "cuda":
        print("timings need a GPU; on CPU the ops ran for correctness only")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
