"""The game-synthesis runs of each profile and what they cost (``rlformal_utils.runner`` runs them).

Game synthesis on ludax (the paper's Task 3): SFT then PPO on fill-in-the-middle prompts, scored by
ludax playouts; held-out games compare SFT, PPO and the original middles. The quick profile runs one
seed: its small model cannot tell PPO from SFT (the 95 % interval of the difference spans about
-0.75 to +0.84 with two seeds), so a second seed adds little; ``long`` holds it."""
from __future__ import annotations

from ..grid import Run


def runs(profile: str) -> list[Run]:
    if profile in ("quick", "long"):  # small GPT-2 (4x128) from scratch on a 48-character window; one reward worker
        base = dict(model_size="small", context_chars=48, max_middle_chars=60, sft_steps=400, ppo_steps=80,
                    ppo_lr=1e-4, n_playouts=32, max_turns=500, reward_timeout=120, reward_workers=1, n_eval=48,
                    ppo_games=["connect_four", "gomoku", "connect_six", "reversi", "hop_through", "gridworld"])
        seeds, step_s, overhead = ([0] if profile == "quick" else [1]), 6.0, 100  # idle cores: 508-622 s per run
    elif profile == "classroom":  # SFT vs the original middles on the held-out games, and a few PPO steps
        # to see what the playout reward scores: the quick profile's model, half its SFT, 16 examples
        base = dict(model_size="small", context_chars=48, max_middle_chars=60, sft_steps=200, ppo_steps=4,
                    ppo_lr=1e-4, n_playouts=16, max_turns=500, reward_timeout=120, reward_workers=1, n_eval=16,
                    ppo_games=["connect_four", "gomoku", "connect_six", "reversi", "hop_through", "gridworld"])
        seeds, step_s, overhead = [0], 8.0, 120
    elif profile == "smoke":  # seconds of training; the first ludax compile still costs ~10-60 s
        base = dict(model_size="tiny", vocab_size=320, sft_steps=5, sft_batch_size=4, ppo_steps=2, ppo_batch_size=4,
                    ppo_mini_batch_size=2, ppo_epochs=1, max_new_tokens=16, max_middle_chars=60, n_playouts=4,
                    max_turns=50, reward_timeout=120, reward_workers=1, n_eval=4, ppo_games=["connect_four"])
        seeds, step_s, overhead = [0], 5.0, 120
    elif profile == "paper":  # a pretrained LM (SmolLM2-135M for the paper's pythia-410m) on whole games,
        # the paper's PPO settings and playout budget
        base = dict(model_size="smollm2-135m", context_chars=0, max_middle_chars=0, n_positions=1024,
                    sft_steps=1000, sft_batch_size=8, sft_lr=5e-5, ppo_steps=200, ppo_lr=1.41e-5, ppo_batch_size=12,
                    ppo_mini_batch_size=6, max_new_tokens=128, n_playouts=100, max_turns=500, reward_timeout=300,
                    reward_workers=2, n_eval=100)
        seeds, step_s, overhead = [0, 1, 2], 60.0, 3600
    else:
        return []
    est = overhead + base["ppo_steps"] * step_s
    return [Run("games", f"{base['model_size']}_s{seed}", dict(base, seed=seed), est) for seed in seeds]
