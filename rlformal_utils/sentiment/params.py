"""Every parameter of the sentiment notebook, declared once (see ``rlformal_utils.params``)."""
from __future__ import annotations

from dataclasses import dataclass

from ..devices import DEVICES
from ..params import Param
from ..ppo import KL_MODES
from ..pretrain import MODEL_SIZES
from ..pretrained import check_hub_name
from .data import OFFLINE_DATA
from .policy import LORA_RANKS, OFFLINE_POLICIES
from .reward import OFFLINE_REWARDS
from .sampling import PROMPT_FORMATS, prompt_lengths  # noqa: F401 (prompt_lengths: read from here too)


ALGORITHMS = ("ppo", "group")


@dataclass(frozen=True)
class HubName(Param):
    """A name that is an offline default or, online, a hub id (offline: only when already cached)."""
    what: str = "model"

    def allowed(self) -> str:
        return f"one of {list(self.choices)} or a hub {self.what} id (online only)"

    def check(self, value) -> None:
        check_hub_name(self.name, value, self.choices, self.what)


PARAMS = [
    Param("output_dir", "../scratch/sentiment", "run folder (scratch/ is ignored by git and by the figures)", kind=str,
          config=False),
    Param("seed", 0, "RL seed: prompt order, sampling, LoRA and value-head init", low=0),
    Param("data_seed", 0, "seed of the held-out prompts (the same for every RL seed)", low=0),
    # data: review snippets, split by movie
    HubName("data", "rotten_tomatoes", "review snippets; online also a hub dataset id such as imdb",
            choices=OFFLINE_DATA, what="dataset"),
    Param("heldout_fraction", 0.2, "share of movies held out (prompts, the classifier's test set)",
          low=0.01, high=0.9),
    # the policy PPO trains
    HubName("policy", "smollm2-135m", "SmolLM2-135M-Instruct, the tiny rt-gpt2, or a hub id (online)",
            choices=OFFLINE_POLICIES, what="causal LM"),
    Param("lora_rank", 16, "LoRA rank on every linear layer; 0 means full fine-tuning", choices=LORA_RANKS),
    Param("prompt_format", "instruction", "plain review start, an instruction line first, or chat template",
          choices=PROMPT_FORMATS),
    Param("format_probe_prompts", 0, "compare the prompt formats on this many prompts first (0: no)",
          low=0, high=10_000),
    Param("policy_size", "tiny", "rt-gpt2 only: layers x dims, tiny 2x64 ... gpt2-small 12x768",
          choices=tuple(MODEL_SIZES)),
    Param("policy_vocab_size", 2048, "rt-gpt2 only: BPE vocabulary trained on the train snippets",
          low=300, high=65536),
    Param("pretrain_steps", 400, "rt-gpt2 only: next-token pretraining steps (cached)", low=1),
    Param("pretrain_batch_size", 64, "rt-gpt2 only: pretraining batch", low=1),
    Param("pretrain_lr", 3e-3, "rt-gpt2 only: pretraining lr, cosine, weight decay 0.1", low=0.0, high=1.0),
    Param("pretrain_seed", 0, "rt-gpt2 only: seed of its init and data order", low=0),
    # reward, independent judge, review-likeness
    HubName("reward", "minilm-logreg", "classifier logit, VADER compound, or a hub classifier (online)",
            choices=OFFLINE_REWARDS, what="sentiment classifier"),
    Param("judge", "auto", "independent judge; auto: the other of minilm-logreg and vader",
          choices=("auto", *OFFLINE_REWARDS)),
    Param("classifier_max_train", 0, "classifier's train snippets, 0 means all (small: the tests)", low=0),
    Param("likeness_bank", 1000, "real train-movie snippets that review-likeness compares with",
          low=1, high=100_000),
    Param("likeness_k", 5, "review-likeness: mean similarity to the k nearest of them", low=1, high=100_000),
    # prompts and sampling (the paper: 2..7 prompt tokens, 4..15 new tokens, pure sampling)
    Param("prompt_min_tokens", 2, "review tokens shown, at least", low=1, high=64),
    Param("prompt_max_tokens", 7, "review tokens shown, at most", low=1, high=64),
    Param("response_min_tokens", 4, "new tokens per response, at least", low=1, high=256),
    Param("response_max_tokens", 15, "new tokens per response, at most (stops earlier at EOS)",
          low=1, high=256),
    Param("top_k", 0, "top-k cut of sampling, 0 means none", low=0),
    Param("top_p", 1.0, "nucleus cut of sampling, 1 means none", low=1e-6, high=1.0),
    Param("temperature", 1.0, "sampling temperature", low=1e-3, high=100.0),
    # PPO (trl 0.11.4's PPOTrainer)
    Param("ppo_steps", 24, "update steps, PPO or group (the paper: about 100 at batch 256)", low=0),
    Param("ppo_lr", 1e-3, "Adam lr (the paper: 1.41e-5, full fine-tuning; LoRA needs more)", low=0.0, high=1.0),
    Param("ppo_batch_size", 16, "sampled responses per step, one per prompt for PPO (the paper: 256)", low=2),
    Param("ppo_mini_batch_size", 4, "responses per gradient update, divides the batch (paper: 256)", low=1),
    Param("ppo_epochs", 1, "passes over each batch (the paper: 4)", low=1),
    Param("kl_mode", "frozen", "full fine-tuning's reference: a frozen copy, or policy (KL 0)",
          choices=KL_MODES),
    Param("kl_coef", 0.2, "KL coefficient, 0 means no KL penalty (trl's default: 0.2)", low=0.0, high=10.0),
    Param("adaptive_kl", False, "trl's adaptive KL control (target 6 nats) from kl_coef",
          choices=(True, False)),
    # the update: trl's PPO, or the group-relative update (rlformal_utils.group_lm: no value head)
    Param("algorithm", "ppo", "ppo: trl's PPOTrainer; group: k responses per prompt, group-relative advantages",
          choices=ALGORITHMS),
    Param("group_size", 4, "group only: responses per prompt k, a divisor of ppo_batch_size",
          low=2, high=256),
    Param("group_epochs", 1, "group only: passes over each batch of responses", low=1, high=10),
    Param("clip", 0.2, "group only: ratio clipping (PPO's cliprange)", low=0.01, high=1.0),
    Param("entropy_coef", 0.0, "group only: weight of the first-token batch entropy bonus, 0 means off",
          low=0.0, high=10.0),
    # evaluation
    Param("n_heldout", 128, "prompts from held-out movies, one sampled response each", low=1, high=100_000),
    Param("eval_every", 0, "held-out evaluation every this many steps (0: before/after only)", low=0),
    Param("n_examples", 12, "rows of the before/after example table", low=0),
    Param("torch_threads", 0, "torch threads, 0 means half the cores (at most 8)", low=0, config=False),
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
    for high, low, top in [("prompt_max_tokens", "prompt_min_tokens", 64),
                           ("response_max_tokens", "response_min_tokens", 256)]:
        if config[high] < config[low]:
            raise ParameterError(f"parameter {high}={config[high]!r} is not allowed: it must be an integer in "
                                 f"[{config[low]}, {top}] (at least {low})")
    if config["likeness_k"] > config["likeness_bank"]:
        raise ParameterError(f"parameter likeness_k={config['likeness_k']!r} is not allowed: it must be an integer "
                             f"in [1, {config['likeness_bank']}] (at most likeness_bank)")
    if config["algorithm"] == "group" and config["ppo_batch_size"] % config["group_size"]:
        raise ParameterError(f"parameter group_size={config['group_size']} must divide "
                             f"ppo_batch_size={config['ppo_batch_size']} (the responses of a step)")
    if config["ppo_batch_size"] % config["ppo_mini_batch_size"]:
        raise ParameterError(f"parameter ppo_mini_batch_size={config['ppo_mini_batch_size']} must divide "
                             f"ppo_batch_size={config['ppo_batch_size']}")
    if config["lora_rank"] and config["kl_mode"] == "policy":
        raise ParameterError("parameter kl_mode='policy' is not allowed with lora_rank > 0: the KL reference of a "
                             "LoRA policy is the base model with the adapter disabled; use kl_coef=0 for no KL")
    if config["prompt_format"] == "chat" and config["policy"] == "rt-gpt2":
        allowed = [f for f in PROMPT_FORMATS if f != "chat"]
        raise ParameterError(f"parameter prompt_format='chat' is not allowed for policy='rt-gpt2'; choose one of "
                             f"{allowed} (its tokenizer has no chat template)")
    if config["judge"] == config["reward"]:
        raise ParameterError(f"parameter judge={config['judge']!r} must differ from reward={config['reward']!r}: "
                             "the judge is independent")
    return config


def judge_name(config: dict) -> str:
    """The judge actually used: ``auto`` resolves to the reward's independent counterpart."""
    from .reward import default_judge
    return default_judge(config["reward"]) if config["judge"] == "auto" else config["judge"]


def sampling(config: dict) -> dict:
    """The sampling settings, as ``sampling.sample_responses`` takes them."""
    return dict(top_k=config["top_k"], top_p=config["top_p"], temperature=config["temperature"])
