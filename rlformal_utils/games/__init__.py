"""Task 3 of the paper: game synthesis on ludax (fill-in-the-middle data, the playout reward, the LM, PPO, evaluation, figures)."""
