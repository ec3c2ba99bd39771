"""The 25-step CFM loop: ``BASECFM.inference`` / ``solve_euler`` (indextts/s2mel/modules/flow_matching.py) as our
own loop around an estimator (FastDiT, or any callable with the DiT's signature).

Step for step what the official code computes, in the same order and with the same random draw:
    z = randn([B, in_channels, T]) * temperature            (the one random call)
    t_span = linspace(0, 1, n_timesteps + 1); t = t_span[0]
    prompt_x = zeros; prompt_x[..., :P] = prompt; x[..., :P] = 0
    per step: v_c | v_u = estimator(cat(x, x), cat(prompt_x, 0), x_lens, cat(t, t), cat(style, 0), cat(mu, 0))
              v = (1 + r) * v_c - r * v_u                     (r = inference_cfg_rate; r = 0: batch 1, no CFG)
              x = x + dt * v; t = t + dt; x[..., :P] = 0       (dt = t_span[step] - t_span[step - 1])
What differs is only what repeats for nothing: the constant halves of the CFG batch are built once, not per step.
"""

from __future__ import annotations

import torch

__all__ = ["cfm_inference"]


def cfm_inference(cfm, estimator, mu, x_lens, prompt, style, f0, n_timesteps, temperature=1.0, inference_cfg_rate=0.5):
    """``cfm.inference(mu, x_lens, prompt, style, f0, n_timesteps, temperature, inference_cfg_rate)`` with
    ``estimator`` in place of ``cfm.estimator``. ``f0`` is unused, as in the official code."""
    if int(n_timesteps) < 1:
        raise ValueError(f"cfm inference: n_timesteps must be at least 1, got {n_timesteps}")
    B, T = mu.size(0), mu.size(1)
    x = torch.randn([B, cfm.in_channels, T], device=mu.device) * temperature
    t_span = torch.linspace(0, 1, n_timesteps + 1, device=mu.device)
    t = t_span[0]
    prompt_len = prompt.size(-1)
    prompt_x = torch.zeros_like(x)
    prompt_x[..., :prompt_len] = prompt[..., :prompt_len]
    x[..., :prompt_len] = 0
    if getattr(cfm, "zero_prompt_speech_token", False):
        mu[..., :prompt_len] = 0  # sic: the official code zeroes these channels of mu, in place
    cfg = inference_cfg_rate > 0
    if cfg:
        stacked_prompt_x = torch.cat([prompt_x, torch.zeros_like(prompt_x)], dim=0)
        stacked_style = torch.cat([style, torch.zeros_like(style)], dim=0)
        stacked_mu = torch.cat([mu, torch.zeros_like(mu)], dim=0)
    for step in range(1, len(t_span)):
        dt = t_span[step] - t_span[step - 1]
        if cfg:
            stacked_t = torch.cat([t.unsqueeze(0), t.unsqueeze(0)], dim=0)
            v = estimator(torch.cat([x, x], dim=0), stacked_prompt_x, x_lens, stacked_t, stacked_style, stacked_mu)
            v_cond, v_uncond = v.chunk(2, dim=0)
            v = (1.0 + inference_cfg_rate) * v_cond - inference_cfg_rate * v_uncond
        else:
            v = estimator(x, prompt_x, x_lens, t.unsqueeze(0), style, mu)
        x = x + dt * v
        t = t + dt
        x[:, :, :prompt_len] = 0
    return x
