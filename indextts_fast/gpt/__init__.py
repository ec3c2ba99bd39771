"""The fast GPT-2 side of IndexTTS2: the decode loop that replaces Hugging Face generate, and the latent pass.

cache.py     the static KV cache (one buffer for all layers, a row table for beams, device lengths)
model.py     FastGPT: UnifiedVoice's GPT-2 stack on our ops (prefill, decode step, final norms, mel head)
sampling.py  the official generation semantics (arguments, logits processors, the draw, the beam scorer)
decode.py    the decode loop: Decoder (the cache, the model step, the token path), DecodeState (one generation's
             device state and its tick, one CUDA graph replay on CUDA), generate
patch.py     what enable() replaces on a live UnifiedVoice, its lock and weight watch, the exact undo
"""
