"""The fast s2mel side of IndexTTS2: the DiT estimator on our ops and the CFM loop around it.

dit.py    FastDiT: the DiT estimator (AdaLN, RoPE attention, SwiGLU, UViT skips, WaveNet head, final layer)
cfm.py    cfm_inference, CFMLoop: the official Euler loop with classifier-free guidance, our own (length buckets,
          one CUDA graph per bucket on CUDA)
patch.py  what enable() replaces on a live CFM or DiT, and the exact undo
"""

from .cfm import CFMLoop, bucket_frames, cfm_inference
from .dit import DEFAULT_PRECISION, PRECISIONS, FastDiT

__all__ = ["FastDiT", "cfm_inference", "CFMLoop", "bucket_frames", "DEFAULT_PRECISION", "PRECISIONS"]
