"""The language model of the game task: its tokenizer, the cached SFT model, and middles sampled and cut where brackets balance."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList

from .. import devices
from ..modes import eval_mode
from ..pretrain import MODEL_SIZES, build_gpt2, left_pad, train_bpe_tokenizer, train_lm
from ..runs import atomic_write_text, cached_dir
from .fim import FimData, FimExample, balance_point, cut_middle

PROMPT_MARKERS = ("### PRE:", "### SUF:", "### MID:")


def train_tokenizer(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE trained on ``texts``: "(", " (" and ")" always single tokens (split off
    before BPE), the three prompt markers single special tokens."""
    return train_bpe_tokenizer(texts, vocab_size, extra_special_tokens=PROMPT_MARKERS, isolate=r" ?\(|\)")


def encode_prompt(tokenizer, example: FimExample, context_chars: int = 0) -> list[int]:
    """[BOS] (when the tokenizer has one) + the prompt's tokens; ``context_chars`` > 0 shows only
    that much prefix / suffix."""
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    return bos + tokenizer(example.prompt_window(context_chars), add_special_tokens=False)["input_ids"]


def encode_example(tokenizer, example: FimExample, context_chars: int = 0) -> tuple[list[int], list[int]]:
    """(token ids, loss mask): [BOS] prompt middle [EOS] with the loss on middle + [EOS] only."""
    prompt = encode_prompt(tokenizer, example, context_chars)
    middle = tokenizer(example.middle, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt + middle, [0] * len(prompt) + [1] * len(middle)


def fitting(tokenizer, examples: list[FimExample], config: dict) -> list[FimExample]:
    """The examples whose prompt leaves room for ``max_new_tokens`` within ``n_positions``."""
    room = config["n_positions"] - config["max_new_tokens"]
    return [e for e in examples if len(encode_prompt(tokenizer, e, config["context_chars"])) <= room]


# ----------------------------------------------------------------------------- supervised fine-tuning
def _base_model(config: dict, data: FimData):
    """(model, tokenizer) before SFT: a fresh GPT-2 with a tokenizer of the training games, or a pretrained LM."""
    if config["model_size"] in MODEL_SIZES:
        tok = train_tokenizer([data.games[g] for g in data.train_games], config["vocab_size"])
        return build_gpt2(config["model_size"], tok, n_positions=config["n_positions"], seed=config["sft_seed"]), tok
    from ..pretrained import causal_lm_dir, load_tokenizer
    folder = causal_lm_dir(config["model_size"])
    return AutoModelForCausalLM.from_pretrained(folder), load_tokenizer(folder)


def lora_config(rank: int, model_type: str | None):
    """peft LoRA on every linear layer of the transformer blocks (alpha = 2 x rank, no dropout);
    GPT-2's Conv1D layers store (in, out), hence ``fan_in_fan_out``."""
    from peft import LoraConfig
    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear", bias="none",
                      task_type="CAUSAL_LM", fan_in_fan_out=model_type == "gpt2")


def curve_steps(steps: int, points: int) -> list[int]:
    """``points`` SFT step counts spread evenly up to ``steps`` (the last one is ``steps``)."""
    if points <= 0 or steps <= 0:
        return []
    return sorted({max(1, round(k * steps / points)) for k in range(1, points + 1)})


def sft_key(config: dict, data: FimData) -> dict:
    """What the cached SFT model depends on (LoRA and checkpoints enter only when used, so the
    full fine-tuning models cached before keep their folders)."""
    c = config
    key = dict(task="games-fim", train_games=data.train_games, max_middle_chars=c["max_middle_chars"],
               context_chars=c["context_chars"], vocab_size=c["vocab_size"] if c["model_size"] in MODEL_SIZES else None,
               model_size=c["model_size"], n_positions=c["n_positions"], steps=c["sft_steps"],
               batch_size=c["sft_batch_size"], lr=c["sft_lr"], seed=c["sft_seed"])
    if c.get("lora_rank"):
        key["lora_rank"] = c["lora_rank"]
    if c.get("sft_curve_points"):
        key["checkpoints"] = curve_steps(c["sft_steps"], c["sft_curve_points"])
    return key


def sft_model_dir(config: dict, data: FimData, cache_dir=None):
    """Folder of the SFT model (loss on the middle + [EOS], training games), built once per configuration
    (``<cache>/games-sft``); ``sft_losses.csv`` in it holds the loss of every step.

    ``lora_rank > 0``: the base model stays frozen and LoRA adapters on every linear layer are
    trained; the folder then holds the adapter (``adapter/``), a from-scratch base (``base/``;
    a pretrained base is found by its name) and the merged model at its top, so every reader of a
    plain model folder works unchanged. ``sft_curve_points > 0``: checkpoints at evenly spaced steps
    of the same SFT in ``checkpoints/step_<n>`` (adapters only with LoRA)."""
    c = config
    checkpoints = curve_steps(c["sft_steps"], c.get("sft_curve_points", 0))

    def build(folder):
        model, tok = _base_model(config, data)
        rank = c.get("lora_rank", 0)
        if rank:
            from peft import get_peft_model
            if c["model_size"] in MODEL_SIZES:
                model.save_pretrained(folder / "base")
            torch.manual_seed(c["sft_seed"])  # the LoRA initialisation
            model = get_peft_model(model, lora_config(rank, model.config.model_type))
        encoded = [encode_example(tok, e, c["context_chars"]) for e in data.train]
        encoded = [(ids, mask) for ids, mask in encoded if len(ids) <= c["n_positions"]]

        def on_step(step, m):
            if step in checkpoints:
                m.save_pretrained(folder / "checkpoints" / f"step_{step}")

        losses = train_lm(model, [ids for ids, _ in encoded], tok.pad_token_id, steps=c["sft_steps"],
                          batch_size=c["sft_batch_size"], lr=c["sft_lr"], warmup_steps=min(50, c["sft_steps"] // 10),
                          seed=c["sft_seed"], loss_masks=[m for _, m in encoded], desc="SFT",
                          on_step=on_step if checkpoints else None)
        if losses:
            tail = losses[-20:]
            print(f"SFT {c['sft_steps']} steps on {len(encoded)} examples: loss {losses[0]:.3f} -> "
                  f"{sum(tail) / len(tail):.3f} (mean of the last {len(tail)})")
        atomic_write_text(folder / "sft_losses.csv", "loss\n" + "".join(f"{x:.5f}\n" for x in losses))
        if rank:
            model.save_pretrained(folder / "adapter")
            model = model.merge_and_unload()
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        atomic_write_text(folder / "sft.json", json.dumps(dict(model_size=c["model_size"], lora_rank=rank,
                                                               checkpoints=checkpoints)))

    return cached_dir("games-sft", sft_key(config, data), build, cache_dir)


def sft_info(folder) -> dict:
    """How an SFT folder was trained: model_size, lora_rank, checkpoint steps (older folders: full fine-tuning)."""
    path = Path(folder) / "sft.json"
    return json.loads(path.read_text()) if path.exists() else dict(lora_rank=0, checkpoints=[])


def load_base(folder, device="cpu"):
    """The model a LoRA SFT started from (its base weights, without adapter)."""
    info = sft_info(folder)
    if (Path(folder) / "base").exists():
        return AutoModelForCausalLM.from_pretrained(Path(folder) / "base").to(device)
    from ..pretrained import causal_lm_dir
    return AutoModelForCausalLM.from_pretrained(causal_lm_dir(info["model_size"])).to(device)


def load_checkpoint(folder, step: int, device="cpu"):
    """The SFT model after ``step`` steps (a checkpoint of ``sft_curve_points``), merged if LoRA."""
    path = Path(folder) / "checkpoints" / f"step_{step}"
    if not path.exists():
        raise FileNotFoundError(f"no SFT checkpoint at step {step} in {folder}; saved: {sft_info(folder)['checkpoints']}")
    if not sft_info(folder)["lora_rank"]:
        return AutoModelForCausalLM.from_pretrained(path).to(device)
    from peft import PeftModel
    return PeftModel.from_pretrained(load_base(folder, device), path).merge_and_unload()


def load_sft(folder, device="cpu"):
    """(model on ``device``, tokenizer) from an SFT folder; the tokenizer right-padded (trl's training pass assumes it)."""
    from ..pretrained import load_tokenizer
    return AutoModelForCausalLM.from_pretrained(folder).to(device), load_tokenizer(folder)


# ----------------------------------------------------------------------------- sampling middles
def _body(tokenizer, ids: list[int]) -> list[int]:
    """The generated tokens before the first [EOS], padding dropped."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    end = ids.index(eos) if eos in ids else len(ids)
    return [t for t in ids[:end] if t != pad]


def _text(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


def cut_generation(tokenizer, ids: list[int]) -> tuple[int, str]:
    """(how many generated tokens to keep, the middle). The middle is cut by characters after
    decoding, where its brackets first balance (``fim.cut_middle``); the kept tokens are the
    shortest prefix whose text reaches that point, so a merged token such as ")))" that closes
    the group is kept whole (its extra characters are dropped from the middle only). Nothing
    after an [EOS]; at least one token, so that PPO has a response to train."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    end = ids.index(eos) if eos in ids else len(ids)
    keep = end
    if balance_point(_text(tokenizer, _body(tokenizer, ids))) is not None:
        keep = next(k for k in range(1, end + 1)
                    if balance_point(_text(tokenizer, [t for t in ids[:k] if t != pad])) is not None)
    return max(1, keep), cut_middle(_text(tokenizer, _body(tokenizer, ids[:keep])))


class _BalancedStop(StoppingCriteria):
    """Stop a row at [EOS] or once its text (decoded) has a balance point."""

    def __init__(self, tokenizer, start: int):
        self.tokenizer, self.start = tokenizer, start

    def __call__(self, input_ids, scores, **kwargs):
        rows = input_ids[:, self.start:].tolist()
        return torch.tensor([self.tokenizer.eos_token_id in row or
                             balance_point(_text(self.tokenizer, _body(self.tokenizer, row))) is not None
                             for row in rows], dtype=torch.bool, device=input_ids.device)


def generate_middles(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, greedy: bool = False,
                     batch_size: int = 16, temperature: float = 1.0) -> list[dict]:
    """Sample (or greedily decode) one middle per prompt; pure sampling (top_k 0, top_p 1) at
    ``temperature`` (0 means greedy, like ``greedy=True``). Returns per prompt: ``ids`` (the kept response tokens, at least one),
    ``raw_ids`` (everything generated) and ``middle`` (the kept text, cut where brackets balance).
    Seed torch beforehand for reproducible samples. Runs in eval mode without gradients and
    leaves the model in the mode it was in."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    greedy = greedy or temperature == 0
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, top_k=0, top_p=1.0, temperature=float(temperature))
    out, device = [], devices.of(model)
    with eval_mode(model):
        for i in range(0, len(prompts), batch_size):
            ids, att = left_pad(prompts[i:i + batch_size], pad)
            ids, att, width = ids.to(device), att.to(device), ids.shape[1]
            gen = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                 eos_token_id=eos, stopping_criteria=StoppingCriteriaList([_BalancedStop(tokenizer, width)]),
                                 **sampling)
            for row in gen[:, width:].tolist():
                keep, middle = cut_generation(tokenizer, row)
                out.append(dict(ids=torch.tensor(row[:keep]), raw_ids=row, middle=middle))
    return out
