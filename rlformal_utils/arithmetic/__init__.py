"""Task 2 of the paper: arithmetic from a programmed reward (task, reward, evaluation, training, figures)."""
