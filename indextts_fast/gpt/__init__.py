"""The fast GPT-2 side of IndexTTS2: the decode loop that replaces Hugging Face generate, and the latent pass.

cache.py     the static KV cache (one buffer for all layers, a row table for beams, device lengths)
model.py     FastGPT: UnifiedVoice's GPT-2 stack on our ops (prefill, decode step, final norms, mel head)
sampling.py  the official generation semantics (arguments, logits processors, beam scorer)
generate.py  the decode loop: one batch-1 prefill, then one step per code
patch.py     what enable() replaces on a live UnifiedVoice, and the exact undo
"""
