"""Every parameter of the games notebook, declared once (see ``rlformal_utils.params``)."""
from ..devices import DEVICES
from ..params import Param
from ..ppo import KL_MODES
from ..pretrain import MODEL_SIZES
from ..pretrained import SMOLLM2

MODELS = (*MODEL_SIZES, SMOLLM2)  # from scratch, then the offline pretrained model; hub ids online
LORA_RANKS = (0, 1, 2, 4, 8, 16, 32, 64, 128)  # 0: full fine-tuning
ALGORITHMS = ("ppo", "group")

PARAMS = [
    Param("output_dir", "../scratch/games", "run folder (the default scratch/ is ignored by git and by the figures)", kind=str, config=False),
    Param("seed", 0, "RL seed: prompt order, sampling, value-head init", low=0),
    # data: fill-in-the-middle examples, split by game
    Param("heldout_games", ["tic_tac_toe", "yavalath", "hex", "wolf_and_sheep"], "never seen in training (cheap to compile)",
          kind=list, rule="a non-empty list of bundled game names that leaves at least two games for training"),
    Param("ppo_games", ["connect_four", "gomoku", "connect_six", "reversi", "hop_through", "gridworld"],
          "training games that supply PPO prompts; empty means all", kind=list,
          rule="a list of training-game names (not held out); empty means all"),
    Param("max_middle_chars", 60, "drop examples whose middle is longer; 0 keeps all", low=0, high=100_000),
    Param("context_chars", 48, "prefix / suffix characters the model reads; 0 means the whole game", low=0, high=100_000),
    # the model: a tokenizer and SFT (loss on the middle only), cached
    Param("model_size", "small", "GPT-2 from scratch (tiny 2x64 ... gpt2-small) or smollm2-135m", kind=str,
          rule=f"one of {list(MODELS)} or a hub causal-LM id (online only)"),
    Param("vocab_size", 512, "from scratch: byte-level BPE trained on the training games", low=300, high=50_000),
    Param("n_positions", 512, "context length; longer prompts are dropped", low=64, high=4096),
    Param("lora_rank", 0, "SFT: 0 trains every weight; r > 0 trains LoRA adapters of rank r on every linear layer",
          choices=LORA_RANKS),
    Param("sft_steps", 400, "supervised fine-tuning steps", low=0, high=1_000_000),
    Param("sft_batch_size", 16, "SFT batch", low=1, high=4096),
    Param("sft_lr", 1e-3, "SFT lr, AdamW, cosine", low=1e-8, high=1.0),
    Param("sft_seed", 0, "seed of the model init and the SFT data order", low=0),
    Param("sft_curve_points", 0, "held-out playable after this many evenly spaced steps of the same SFT; 0: none",
          low=0, high=50),
    # PPO (trl 0.11.4; the paper: lr 1.41e-5, batch 12, mini-batch 6, no entropy terms)
    Param("ppo_steps", 80, "RL steps, PPO or group", low=0, high=1_000_000),
    Param("ppo_lr", 1e-4, "RL lr, PPO or group (paper: 1.41e-5)", low=1e-8, high=1.0),
    Param("ppo_batch_size", 12, "middles per RL step: PPO one per prompt, group k per prompt (paper: 12)", low=2, high=4096),
    Param("ppo_mini_batch_size", 6, "middles per gradient update, divides the batch (paper: 6)", low=1, high=4096),
    Param("ppo_epochs", 4, "PPO epochs per batch", low=1, high=100),
    # the update: trl's PPO, or the group-relative update (rlformal_utils.group_lm: no value head)
    Param("algorithm", "ppo", "ppo: trl's PPOTrainer; group: k middles per prompt, group-relative advantages, "
          "KL to the frozen SFT model", choices=ALGORITHMS),
    Param("group_size", 4, "group only: middles per prompt k, a divisor of ppo_batch_size", low=2, high=256),
    Param("group_epochs", 1, "group only: passes over each batch of middles", low=1, high=10),
    Param("clip", 0.2, "group only: ratio clipping (PPO's cliprange)", low=0.01, high=1.0),
    Param("kl_mode", "frozen", "frozen: copy of the SFT model; policy: KL always 0 (the paper's code)", choices=KL_MODES),
    Param("kl_coef", 0.2, "KL coefficient (initial, if adaptive)", low=0.0, high=100.0),
    Param("adaptive_kl", True, "trl's adaptive KL controller", choices=(True, False)),
    Param("token_entropy_coef", 0.0, "token-entropy bonus in the loss", low=0.0, high=10.0),
    Param("batch_entropy_coef", 0.0, "batch-entropy bonus in the loss (group: of each middle's first token)", low=0.0, high=10.0),
    Param("max_new_tokens", 64, "longest middle the model may write, at most n_positions / 2", low=4, high=2048),
    # reward: ludax playouts in worker processes
    Param("n_playouts", 32, "random playouts per game (paper: 100)", low=1, high=100_000),
    Param("max_turns", 500, "turn limit of a playout (paper: 500)", low=1, high=2000),
    Param("reward_timeout", 120.0, "seconds per game (compile + play) before it scores 0.03", low=0.1, high=86_400.0),
    Param("reward_workers", 1, "ludax worker processes (0: in this process, no timeout)", low=0, high=64),
    # evaluation
    Param("n_eval", 48, "held-out examples scored per arm, one sampled middle each", low=1, high=100_000),
    Param("n_heldout_samples", 0, "deciding evaluation: sampled middles per held-out example (+ 1 greedy), SFT and RL "
          "each at the temperature that is best on training prompts; 0: off", low=0, high=1000),
    Param("n_sweep_examples", 48, "training-game prompts on which the decoding temperature is chosen", low=1, high=100_000),
    Param("torch_threads", 0, "torch threads, 0 means half the cores (at most 8)", low=0, high=256, config=False),
    Param("device", "auto", "where the models compute: auto picks a CUDA GPU if torch sees one, else the CPU",
          choices=DEVICES, config=False),
]


def check(values: dict) -> dict:
    """Check every parameter and the rules that tie them together; return the run's config."""
    from ..devices import resolve as resolve_device
    from ..params import check_all
    from ..pretrained import check_hub_name
    from ..runs import ParameterError
    from .fim import bundled_games
    config = check_all(PARAMS, values)
    resolve_device(values["device"])  # 'cuda' on a machine without one stops here
    check_hub_name("model_size", config["model_size"], MODELS, "causal-LM")
    games = sorted(bundled_games())
    held, ppo = config["heldout_games"], config["ppo_games"]
    if not held or any(g not in games for g in held) or len(set(held)) > len(games) - 2:
        raise ParameterError(f"parameter heldout_games={held!r} is not allowed: it must be a non-empty list of "
                             f"bundled game names that leaves at least two games for training; bundled games: {games}")
    training = [g for g in games if g not in held]
    if any(g not in training for g in ppo):
        raise ParameterError(f"parameter ppo_games={ppo!r} is not allowed: it must list training games only "
                             f"(empty means all); training games: {training}")
    batch, mini = config["ppo_batch_size"], config["ppo_mini_batch_size"]
    if mini > batch or batch % mini:
        raise ParameterError(f"parameter ppo_mini_batch_size={mini} must divide ppo_batch_size={batch}")
    if config["algorithm"] == "group" and batch % config["group_size"]:
        raise ParameterError(f"parameter group_size={config['group_size']} is not allowed: it must be an integer in "
                             f"[2, 256] that divides ppo_batch_size={batch} (the middles of a step)")
    if config["max_new_tokens"] > config["n_positions"] // 2:
        raise ParameterError(f"parameter max_new_tokens={config['max_new_tokens']} must be at most "
                             f"n_positions / 2 = {config['n_positions'] // 2}")
    return config
