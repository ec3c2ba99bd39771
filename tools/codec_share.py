"""IndexTTS-2.5's codec decoder against the rest of the s2mel stage: ATen ops and FLOPs, counted on the CPU.

2.5 turns the GPT's 25 Hz codes into the s2mel's 50 Hz content with ``EnhancedCodec.decode`` (codebook, a 1x1
conv, a 12-block ConvNeXt, a Linear, x2 nearest, a k3 conv; fp32), once per segment, before the length regulator
and the 25-step CFM. This counts, for one segment of ``--codes`` codes (251: ~10 s of speech) and a
``--reference`` frame prompt, the ops and FLOPs of each part of the official s2mel stage at the released sizes
(random weights; the tensors are fake: nothing is computed, so it runs in seconds):

    .venv/bin/python tools/codec_share.py [--codes 251] [--reference 861] [--df 1.0]

The estimator is counted once and multiplied by the steps (25; each step is one batch-2 call). Time on a GPU is
bench_e2e's business; this gives the op counts a launch-bound stage is made of and the FLOPs a compute-bound one is.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indextts_fast.official import build_s2mel  # noqa: E402

_FREE = ("view", "_unsafe_view", "t", "transpose", "unsqueeze", "squeeze", "expand", "permute", "slice", "select",
         "alias", "detach", "reshape", "as_strided", "split", "chunk", "unbind", "lift_fresh")  # fmt: skip


class OpCount(TorchDispatchMode):
    """ATen ops that launch work (views and other metadata-only ops not counted)."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in _FREE:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def count(fn):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), FlopCounterMode(display=False) as flops, OpCount() as ops:
        fn()
    return sum(ops.ops.values()), flops.get_total_flops()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--codes", type=int, default=251)
    ap.add_argument("--reference", type=int, default=861, help="prompt mel frames (T_ref)")
    ap.add_argument("--df", type=float, default=1.0, help="duration_factor")
    ap.add_argument("--steps", type=int, default=25)
    a = ap.parse_args()
    import indextts25.codec.models as cm

    codec = cm.EnhancedCodec().eval()
    s2mel = build_s2mel("full", 0, version="2.5", setup_caches=False)
    dit = s2mel.models["cfm"].estimator
    dit.setup_caches(max_batch_size=1, max_seq_length=8192)
    lr = s2mel.models["length_regulator"]
    M = a.codes
    t_gen = int(2 * M * 1.72 * a.df)
    T = a.reference + t_gen
    codes = torch.randint(0, 8192, (1, M))
    feats = torch.randn(1, 2 * M, 1024)
    x, prompt_x = torch.randn(2, 80, T), torch.randn(2, 80, T)
    t, style, cond = torch.rand(2), torch.randn(2, 192), torch.randn(2, T, 512)
    x_lens = torch.tensor([T, T])
    rows = []
    with torch.no_grad():
        rows.append(("codec decode", *count(lambda: codec.decode(codes))))
        rows.append(("length regulator", *count(lambda: lr(feats, ylens=torch.tensor([t_gen])))))
        ops, flops = count(lambda: dit(x, prompt_x, x_lens, t, style, cond))
        rows.append((f"DiT estimator x {a.steps}", ops * a.steps, flops * a.steps))
    total_ops, total_flops = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"s2mel stage of one segment: {M} codes -> {2 * M} codec frames -> T_gen {t_gen}, DiT T = {T} at batch 2")
    print(f"{'part':24} {'ATen ops':>10} {'share':>7} {'GFLOP':>10} {'share':>7}")
    for name, ops, flops in rows:
        print(f"{name:24} {ops:10d} {ops / total_ops:7.1%} {flops / 1e9:10.1f} {flops / total_flops:7.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
