"""Every parameter of the arithmetic notebook, declared once (see ``rlformal_utils.params``)."""
import math

from ..devices import DEVICES
from ..params import Param
from ..pretrain import MODEL_SIZES

ALGORITHMS = ("group", "ppo", "supervised", "none")
KL_CONTROLLERS = ("trl", "adaptive", "fixed")
# The largest KL target a controller can reach: a policy sure of one of the 103 allowed answers is
# log(103) = 4.63 nats from a uniform reference (the weak start is near-uniform). trl's default target
# of 6 nats is out of reach, so trl's controller only ever lowers the coefficient.
MAX_KL_TARGET = math.log(103)
REGULARISERS = {"none": (0, 0), "token": (1, 0), "batch": (0, 1), "both": (1, 1)}  # which of (c_tok, c_batch) is on

PARAMS = [
    Param("output_dir", "../scratch/arithmetic", "run folder (the default scratch/ is ignored by git and by the figures)", kind=str, config=False),
    Param("seed", 0, "RL seed: prompt order, sampling, value-head init", low=0),
    Param("data_seed", 0, "seed of the problems (fixes the evaluation sets)", low=0),
    # the base model: a GPT-2 pretrained from scratch on solved chains
    Param("model_size", "tiny", "GPT-2 layers x dims: tiny 2x64 ... gpt2-small 12x768",
          choices=tuple(MODEL_SIZES)),
    Param("pretrain_examples", 256, "solved chains to pretrain on (paper: 256)", low=1, high=1_000_000),
    Param("pretrain_steps", 0, "pretraining optimizer steps, 0 means one epoch (paper: 4)", low=0),
    Param("pretrain_batch_size", 64, "pretraining batch (paper: 8 x 8 accumulation)", low=1, high=4096),
    Param("pretrain_lr", 1e-4, "pretraining lr, cosine, weight decay 0.1", low=1e-7, high=1.0),
    Param("pretrain_seed", 0, "seed of the base model's init and data order", low=0),
    # the update
    Param("algorithm", "group", "group-relative PG, the paper's PPO, supervised CE, or none (base model)", choices=ALGORITHMS),
    Param("engine", "fast", "fast: rlformal_utils.one_token, trl: PPOTrainer.step (ppo only)", choices=("fast", "trl")),
    Param("regulariser", "batch", "entropy bonus in the loss: H_tok, H(p-bar), both or none",
          choices=tuple(REGULARISERS)),
    Param("entropy_coef", 0.3, "coefficient of each entropy term that is on (paper: 0.3)", low=0.0, high=10.0),
    Param("kl_reference", "policy", "policy: KL always 0 (the paper's code), frozen: copy of the base", choices=("policy", "frozen")),
    Param("kl_coef", 0.2, "KL coefficient (ppo: the controller's start), only with a frozen reference", low=0.0, high=100.0),
    Param("kl_controller", "trl", "ppo, frozen reference: trl (trl's adaptive controller, target 6 nats), "
          "adaptive (the same aiming at kl_target) or fixed (kl_coef constant)", choices=KL_CONTROLLERS),
    Param("kl_target", 3.0, "KL target in nats of kl_controller='adaptive'", low=0.0, high=MAX_KL_TARGET,
          rule=f"a number in (0, {MAX_KL_TARGET:.2f}]: a policy sure of one answer has KL log(103) to a uniform reference"),
    Param("rl_lr", 1e-3, "Adam lr (paper: 1.41e-5), cosine decay except for ppo",
          low=1e-8, high=1.0),
    Param("steps", 3906, "update steps (3906 x 32 prompts x 8 answers: 1.0M answers)", low=0,
          high=10_000_000),
    Param("prompts_per_step", 32, "prompts per step (the PPO batch; paper: 128)", low=2, high=65536),
    Param("k", 8, "group: answers sampled per prompt", low=2, high=1024),
    Param("epochs", 2, "update epochs per batch (paper PPO: 4)", low=1, high=100),
    Param("mini_batch_size", 0, "ppo mini-batch, 0 means the whole batch (paper: 128)", low=0,
          high=65536),
    Param("std_normalise", True, "group: divide advantages by the group's std (GRPO)",
          choices=(True, False)),
    Param("mask_banned", True, "train over allowed answers only (False: as trl)", choices=(True, False)),
    # evaluation
    Param("n_heldout", 512, "problems in each evaluation set (held-out, unseen)",
          low=8, high=100_000),
    Param("n_evals", 16, "evaluations, evenly spaced in log(answers seen)", low=1, high=1000),
    Param("torch_threads", 0, "torch threads, 0 means half the cores (at most 8)", low=0, high=256, config=False),
    Param("device", "auto", "where the models compute: auto picks a CUDA GPU if torch sees one, else the CPU",
          choices=DEVICES, config=False),
]


def check(values: dict) -> dict:
    """Check every parameter and the rules that tie them together; return the run's config."""
    from ..devices import resolve as resolve_device
    from ..params import check_all
    from ..runs import ParameterError
    config = check_all(PARAMS, values)
    resolve_device(values["device"])  # 'cuda' on a machine without one stops here
    if config["engine"] == "trl" and config["algorithm"] != "ppo":
        raise ParameterError(f"parameter engine='trl' needs algorithm='ppo' (got algorithm={config['algorithm']!r}); "
                             "allowed engines for it: ['fast']")
    if config["kl_target"] <= 0:
        raise ParameterError(f"parameter kl_target={config['kl_target']!r} is not allowed: it must be "
                             f"{next(p for p in PARAMS if p.name == 'kl_target').allowed()}")
    if (config["algorithm"] == "group" and config["kl_reference"] == "frozen" and config["kl_coef"] > 0
            and config["kl_controller"] != "fixed"):
        raise ParameterError(f"parameter kl_controller={config['kl_controller']!r} is not allowed with "
                             "algorithm='group': the group-relative update keeps its KL coefficient fixed; "
                             "allowed: ['fixed']")
    mb = config["mini_batch_size"]
    if mb and config["prompts_per_step"] % mb:
        raise ParameterError(f"parameter mini_batch_size={mb} must divide prompts_per_step={config['prompts_per_step']}")
    return config


def entropy_coefs(config: dict) -> tuple[float, float]:
    """(c_tok, c_batch) of the chosen regulariser."""
    on_tok, on_batch = REGULARISERS[config["regulariser"]]
    return on_tok * config["entropy_coef"], on_batch * config["entropy_coef"]


def answers_per_step(config: dict) -> int:
    """Answers the update sees per step: k per prompt for group, one otherwise (supervised: the true one)."""
    return config["prompts_per_step"] * (config["k"] if config["algorithm"] == "group" else 1)
