"""BigVGAN v2 (the vocoder) on the fast backend: the official forward with every anti-aliased activation on one
fused kernel, and on CUDA one CUDA graph per length bucket.

The official forward (``indextts/s2mel/modules/bigvgan/bigvgan.py``, BigVGAN.forward with AMPBlock1):

    x = conv_pre(mel)
    per stage i:  x = ups[i](x)                                  ConvTranspose1d
                  per AMP block j (kernel sizes 3, 7, 11):       r_j = x, then per dilation d (1, 3, 5):
                      r_j = c2(act2(c1(act1(r_j)))) + r_j        act = Activation1d(SnakeBeta): up x2, snake, down x2
                  x = ((r_0 + r_1) + r_2) / num_kernels
    x = conv_post(activation_post(x));  tanh(x) or clamp(x, -1, 1)

``FastBigVGAN`` runs the same sequence: the convolutions are the official modules' own ``F.conv1d`` /
``F.conv_transpose1d`` calls on their weights (cuDNN; weight norm resolved where it is still attached), every
Activation1d is ``ops.anti_alias_snake`` (one launch, the upsampled signal never in memory, no CUDA extension), the
residual adds are in place on the convolution's output (``xt + x``, the same sum), the stage merge is
``ops.amp_merge`` (one launch, the official order of the adds and an IEEE division).

Padding (``lengths``): a batch padded to a bucket of frames, with each row's valid length per stage, gives in the
kept samples what the unpadded batch gives: every activation clamps its reads at the valid length (its replicate
pads land where the unpadded row's do) and writes zeros beyond it; the pre-convolution's output and each stage's
merge are zeroed beyond it too. So every convolution reads zeros past the valid end, exactly the zero padding it
applies to the unpadded row, and the transposed convolutions (which need the stride to divide the length
exactly: out = in * stride) map valid lengths to valid lengths. Only the convolutions' summation order may differ
with the length (cuDNN picks its algorithm per shape), within the tolerance rule.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .._graphs import Graphed, MemoryPool, bucket_length, graphs_wanted
from ..profiling import nvtx_range

__all__ = ["is_bigvgan", "unsupported_reason", "FastBigVGAN", "VocoderLoop", "bucket_frames"]

_PARTS = ("conv_pre", "ups", "resblocks", "activation_post", "conv_post")


def is_bigvgan(m) -> bool:
    return isinstance(m, nn.Module) and all(hasattr(m, a) for a in _PARTS)


def bucket_frames(T: int, granule: int = 32) -> int:
    """The padded frame count of a T-frame mel (``_graphs.bucket_length``, in steps of at least 32 frames)."""
    return bucket_length(T, granule)


def _activations(net) -> list:
    acts = [net.activation_post]
    for rb in net.resblocks:
        acts.extend(getattr(rb, "activations", []))
    return acts


def _activation_reason(a, where: str) -> Optional[str]:
    act, up, down = getattr(a, "act", None), getattr(a, "upsample", None), getattr(a, "downsample", None)
    low = getattr(down, "lowpass", None)
    if act is None or up is None or low is None or not hasattr(act, "alpha"):
        return f"{where} is a {type(a).__name__}, not an anti-aliased Snake/SnakeBeta Activation1d"
    fu, fd = getattr(up, "filter", None), getattr(low, "filter", None)
    if not isinstance(fu, torch.Tensor) or not isinstance(fd, torch.Tensor):
        return f"{where}: no FIR filter buffers"
    K = fu.numel()
    H = K // 2
    if getattr(up, "ratio", None) != 2 or getattr(down, "ratio", 2) != 2 or getattr(low, "stride", None) != 2:
        return f"{where}: resampling ratio other than 2 (the fused kernel implements 2)"
    if K < 2 or K % 2 or fd.numel() != K:
        return f"{where}: filters of {K} and {fd.numel()} taps (the fused kernel takes one even size for both)"
    if (up.pad, up.pad_left, up.pad_right) != (H - 1, 3 * H - 3, 3 * H - 3):
        return f"{where}: upsampling pads {(up.pad, up.pad_left, up.pad_right)} differ from a {K}-tap ratio-2 filter's"
    if not low.padding or low.padding_mode != "replicate" or (low.pad_left, low.pad_right) != (H - 1, H):
        return f"{where}: the low-pass filter's padding is not the replicate ({H - 1}, {H}) the kernel implements"
    return None


def _conv_reason(m, where: str, transposed: bool) -> Optional[str]:
    cls = nn.ConvTranspose1d if transposed else nn.Conv1d
    if not isinstance(m, cls):
        return f"{where} is a {type(m).__name__}, not an nn.{cls.__name__}"
    if m.padding_mode != "zeros":
        return f"{where} pads with {m.padding_mode!r} (the official BigVGAN pads with zeros)"
    return None


def unsupported_reason(net) -> Optional[str]:
    """Why the fast vocoder cannot run ``net`` (None: it can)."""
    if not is_bigvgan(net):
        return f"{type(net).__name__} is not a BigVGAN (conv_pre, ups, resblocks, activation_post, conv_post)"
    if net.training:
        return "the vocoder is in training mode (the fast vocoder is inference-only); call .eval()"
    for name, p in list(net.named_parameters()) + list(net.named_buffers()):
        if p.is_floating_point() and p.dtype != torch.float32:
            return f"{name} is {str(p.dtype).replace('torch.', '')} (the official vocoder runs fp32; so does ours)"
    for i, rb in enumerate(net.resblocks):
        if not (hasattr(rb, "convs1") and hasattr(rb, "convs2")):
            return (f"resblocks.{i} is a {type(rb).__name__} (resblock '2' / AMPBlock2, whose official forward "
                    "returns None); the fast vocoder implements AMPBlock1")  # fmt: skip
        if not len(rb.convs1) or len(rb.activations) != 2 * len(rb.convs1) or len(rb.convs2) != len(rb.convs1):
            return f"resblocks.{i}: {len(rb.activations)} activations for {len(rb.convs1)} conv pairs"
        for j, c in enumerate(list(rb.convs1) + list(rb.convs2)):
            if (why := _conv_reason(c, f"resblocks.{i} conv {j}", False)) is not None:
                return why
    for i, acts in enumerate(_activations(net)):
        if (why := _activation_reason(acts, "activation_post" if i == 0 else f"activation {i}")) is not None:
            return why
    for i, ups in enumerate(net.ups):
        for j, u in enumerate(ups):
            if (why := _conv_reason(u, f"ups.{i}.{j}", True)) is not None:
                return why
    for name in ("conv_pre", "conv_post"):
        if (why := _conv_reason(getattr(net, name), name, False)) is not None:
            return why
    nk = getattr(net, "num_kernels", None)
    if nk is None or len(net.resblocks) != nk * len(net.ups):
        return f"{len(net.resblocks)} resblocks for {len(net.ups)} upsampling stages and num_kernels={nk}"
    return None


def conv_weight(m: nn.Module) -> torch.Tensor:
    """The weight a conv module's forward uses: weight norm resolved where it is still attached (the old-style
    hook recomputes ``weight`` only inside forward; a parametrization computes it on access)."""
    for hook in m._forward_pre_hooks.values():
        if type(hook).__name__ == "WeightNorm" and hasattr(hook, "compute_weight"):
            return hook.compute_weight(m).detach()
    return m.weight.detach()


class _Conv:
    """One official conv module's forward as F.conv1d / F.conv_transpose1d on its (resolved) weight."""

    def __init__(self, m: nn.Module):
        self.transposed = isinstance(m, nn.ConvTranspose1d)
        self.weight = conv_weight(m)
        self.bias = None if m.bias is None else m.bias.detach()
        self.stride, self.padding, self.dilation, self.groups = m.stride, m.padding, m.dilation, m.groups
        self.output_padding = getattr(m, "output_padding", (0,))
        k = self.weight.shape[-1]
        # out = in * stride for every length (the transposed convs of BigVGAN: k - stride = 2 * padding)
        self.exact = (not self.transposed or self.dilation[0] * (k - 1) + 1 + self.output_padding[0]
                      == self.stride[0] + 2 * self.padding[0])  # fmt: skip

    def __call__(self, x):
        if self.transposed:
            return F.conv_transpose1d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                      self.groups, self.dilation)  # fmt: skip
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _Act:
    """One Activation1d's operands: the filters (views of its buffers) and the per-channel alpha and 1/(beta+eps)."""

    def __init__(self, a: nn.Module):
        from indextts_kernels import reference

        self.up = a.upsample.filter.detach().reshape(-1)
        self.down = a.downsample.lowpass.filter.detach().reshape(-1)
        act = a.act
        beta = getattr(act, "beta", None)  # Snake: alpha for both
        self.alpha, self.inv_beta = reference.snake_params(act.alpha, beta, bool(act.alpha_logscale))

    def __call__(self, x, lengths=None, out=None):
        return ops.anti_alias_snake(x, self.up, self.down, self.alpha, self.inv_beta, lengths=lengths, out=out)


class FastBigVGAN:
    """The official BigVGAN forward on our kernels (see the module docstring), from a live BigVGAN module."""

    def __init__(self, net: nn.Module):
        self.num_mels = net.conv_pre.in_channels
        self.device = net.conv_pre.weight.device
        self.num_kernels = int(net.num_kernels)
        self.conv_pre, self.conv_post = _Conv(net.conv_pre), _Conv(net.conv_post)
        self.ups = [[_Conv(u) for u in stage] for stage in net.ups]
        self.blocks = []
        for rb in net.resblocks:
            acts = (rb.activations[::2], rb.activations[1::2])
            pairs = zip(rb.convs1, rb.convs2, *acts, strict=True)
            self.blocks.append([(_Conv(c1), _Conv(c2), _Act(a1), _Act(a2)) for c1, c2, a1, a2 in pairs])
        self.act_post = _Act(net.activation_post)
        self.tanh = bool(getattr(net, "use_tanh_at_final", True))
        self.hop = 1
        for stage in self.ups:
            for u in stage:
                self.hop *= u.stride[0]
        self.exact = all(u.exact for stage in self.ups for u in stage)  # valid lengths map exactly (padding works)
        self.n_activations = 1 + sum(2 * len(b) for b in self.blocks)

    def stage_lengths(self, frames) -> list[int]:
        """The valid length after the pre-conv and after each upsampling stage, for ``frames`` mel frames."""
        out = [int(frames)]
        for stage in self.ups:
            n = out[-1]
            for u in stage:
                n *= u.stride[0]
            out.append(n)
        return out

    def _amp(self, block, x, lengths):
        for c1, c2, a1, a2 in block:
            xt = c2(a2(c1(a1(x, lengths)), lengths))
            x = xt.add_(x)  # the official xt + x
        return x

    def __call__(self, mel: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """mel [B, num_mels, T] fp32 -> wave [B, 1, T * hop]. ``lengths``: [1 + stages, B] int32, each row's valid
        length after the pre-conv and after each stage (``stage_lengths``); None: every row is T frames."""
        nk = self.num_kernels
        x = self.conv_pre(mel)
        if lengths is not None:
            x = ops.amp_merge([x], lengths=lengths[0], out=x)  # the zero tail the transposed conv reads
        for i, stage in enumerate(self.ups):
            for up in stage:
                x = up(x)
            lens = None if lengths is None else lengths[i + 1]
            rs = [self._amp(self.blocks[i * nk + j], x, lens) for j in range(nk)]
            parts, rest = rs[:3], rs[3:]
            while rest:  # more than 3 kernels: the running sum in the official order, 2 more parts per launch
                parts, rest = [ops.amp_merge(parts, out=rs[0])] + rest[:2], rest[2:]
            x = ops.amp_merge(parts, divisor=float(nk), lengths=lens, out=rs[0])
        lens = None if lengths is None else lengths[-1]
        x = self.conv_post(self.act_post(x, lens))
        return torch.tanh(x) if self.tanh else torch.clamp(x, min=-1.0, max=1.0)


def _check_mel(fast: FastBigVGAN, mel) -> None:
    if not isinstance(mel, torch.Tensor):
        raise TypeError(f"vocoder: the mel must be a torch.Tensor, got {type(mel).__name__}")
    if mel.dim() != 3 or mel.shape[1] != fast.num_mels:
        raise ValueError(f"vocoder: the mel must be [B, {fast.num_mels}, T], got {tuple(mel.shape)}")
    if mel.dtype != torch.float32:
        raise TypeError(f"vocoder: the mel is {str(mel.dtype).replace('torch.', '')}; the vocoder's weights are fp32 "
                        "(the official forward refuses it too): pass mel.float()")  # fmt: skip
    if mel.device != fast.device:
        raise ValueError(f"vocoder: the mel is on {mel.device}, the vocoder on {fast.device}")
    if mel.shape[0] == 0 or mel.shape[2] == 0:
        raise ValueError(f"vocoder: empty mel {tuple(mel.shape)}")


class _Run:
    def __init__(self, mel: torch.Tensor, lengths: torch.Tensor, graphed: Graphed):
        self.mel, self.lengths, self.graphed = mel, lengths, graphed


class VocoderLoop:
    """``bigvgan.forward`` on FastBigVGAN: eagerly and unpadded, or (``graphs``, default on CUDA) one CUDA graph per
    (bucket of frames, batch), at most ``max_graphs`` kept (least recently used dropped), in one memory pool.
    ``pad`` (CPU, tests): the padded path without graphs."""

    def __init__(self, fast: FastBigVGAN, *, graphs: Optional[bool] = None, max_graphs: int = 4,
                 bucket: Callable[[int], int] = bucket_frames, pad: bool = False):  # fmt: skip
        self.fast, self.bucket, self.max_graphs = fast, bucket, int(max_graphs)
        self.graphs = graphs_wanted(graphs, fast.device) and fast.exact
        self.pad = bool(pad) and fast.exact
        self.runs: OrderedDict = OrderedDict()
        self.pool = MemoryPool()
        self.lock = threading.RLock()

    @property
    def capture_s(self) -> dict:
        return {k: r.graphed.capture_s for k, r in self.runs.items() if r.graphed.capture_s is not None}

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        _check_mel(self.fast, mel)
        if not (self.graphs or self.pad):
            return self.fast(mel)
        T = mel.shape[2]
        return self._padded(list(mel.split(1)), [T] * mel.shape[0], T)

    def many(self, mels: list) -> list:
        """Several requests' mels ([1, num_mels, T_i] each, any lengths) in one vocoder call: padded to the bucket of
        the longest, each row with its own valid lengths (the kernels clamp and zero at them), each wave [1, 1,
        T_i * hop] what the mel alone gives (within the rule: the convolutions' summation order may differ with
        the batch). Without graphs (and without ``pad``) each mel runs alone, unpadded."""
        if not isinstance(mels, (list, tuple)) or not mels:
            raise ValueError("vocoder: many() takes a non-empty list of mels")
        for m in mels:
            _check_mel(self.fast, m)
            if m.shape[0] != 1:
                raise ValueError(f"vocoder: many() takes one mel per request ([1, {self.fast.num_mels}, T]), got "
                                 f"{tuple(m.shape)}")  # fmt: skip
        if not (self.graphs or self.pad):  # eager: one unpadded call each (padding buys nothing without graphs)
            return [self.fast(m) for m in mels]
        lengths = [m.shape[2] for m in mels]
        waves = self._padded(list(mels), lengths, max(lengths))
        return [waves[b : b + 1, :, : n * self.fast.hop] for b, n in enumerate(lengths)]

    def _padded(self, rows: list, lengths: list, T: int) -> torch.Tensor:
        """rows [1, M, T_b] into a [B, M, bucket] buffer with per-row valid lengths; the waves [B, 1, T * hop]
        (each row valid to its own T_b * hop: past it, what its zero tail gave)."""
        B, M, dev = len(rows), self.fast.num_mels, rows[0].device
        Tb = max(self.bucket(T), T)
        with self.lock:
            key = (Tb, B)
            run = self.runs.pop(key, None)
            if run is None:
                bufs = (
                    torch.zeros(B, M, Tb, device=dev),
                    torch.zeros(len(self.fast.ups) + 1, B, dtype=torch.int32, device=dev),
                )
                fn = lambda m=bufs[0], n=bufs[1]: self.fast(m, n)  # noqa: E731
                run = _Run(*bufs, Graphed(fn, dev, enabled=self.graphs, pool=self.pool))
            self.runs[key] = run
            while len(self.runs) > self.max_graphs:
                self.runs.popitem(last=False)
            run.mel.zero_()
            for b, (m, n) in enumerate(zip(rows, lengths, strict=True)):
                run.mel[b, :, :n].copy_(m[0])
            lens = torch.tensor([self.fast.stage_lengths(n) for n in lengths], dtype=torch.int32)
            run.lengths.copy_(lens.t())
            with nvtx_range("vocoder.graph" if self.graphs else "vocoder.padded"):
                out = run.graphed()
            return out[..., : T * self.fast.hop].clone()  # a graph's output is rewritten by its next replay
