"""The vocoder (BigVGAN v2) on the fast backend: ``bigvgan.FastBigVGAN`` (the forward on our kernels),
``bigvgan.VocoderLoop`` (graphs per length bucket), ``patch.VocoderPatch`` (what ``enable`` installs)."""

from .bigvgan import FastBigVGAN, VocoderLoop, bucket_frames, is_bigvgan, unsupported_reason

__all__ = ["FastBigVGAN", "VocoderLoop", "bucket_frames", "is_bigvgan", "unsupported_reason"]
