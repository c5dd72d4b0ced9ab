"""Small GPT-2 models trained from scratch: their tokenizers, padding, and the supervised (pretraining) loop.

Model sizes are named; ``"gpt2-small"`` is the paper's GPT-2 small configuration (12 layers,
768 dims, 12 heads, ~86M parameters with a 106-word vocabulary and n_ctx 64).
"""
from __future__ import annotations

import math

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from .progress import Progress

# name -> (layers, embedding dims, heads)
MODEL_SIZES = {
    "tiny": (2, 64, 2),
    "small": (4, 128, 4),
    "medium": (6, 256, 8),
    "gpt2-small": (12, 768, 12),
}


def build_gpt2(size: str, tokenizer, n_positions: int = 64, seed: int = 0,
               activation: str = "gelu_new") -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 of the named size for ``tokenizer``'s vocabulary.
    ``activation="gelu_pytorch_tanh"`` is GPT-2's own ``gelu_new`` (equal to 2e-7) in one fused
    kernel, ~2.5x faster on a CPU; the default keeps the models cached by earlier versions."""
    if size not in MODEL_SIZES:
        raise ValueError(f"model size must be one of {list(MODEL_SIZES)}, got {size!r}")
    n_layer, n_embd, n_head = MODEL_SIZES[size]
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd,
                        n_layer=n_layer, n_head=n_head, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        activation_function=activation)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def train_bpe_tokenizer(texts, vocab_size: int, extra_special_tokens: tuple[str, ...] = (),
                        isolate: str | None = None, padding_side_in_config: bool = False):
    """A byte-level BPE tokenizer trained on ``texts`` with [PAD], [BOS], [EOS] and the
    ``extra_special_tokens`` (each one token), padding on the right. ``isolate`` is a regex whose
    matches are split off before BPE, so they stay single tokens and never merge with their
    neighbours. ``padding_side_in_config`` also writes ``padding_side`` into the saved
    ``tokenizer_config.json``: the sentiment rt-gpt2 tokenizer has it there, the games tokenizer
    does not, and each keeps its files byte for byte so that cached folders do not change."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[BOS]", "[EOS]", *extra_special_tokens]
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = byte_level if isolate is None else pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(isolate), behavior="isolated"), byte_level])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    saved = dict(padding_side="right") if padding_side_in_config else {}
    if extra_special_tokens:
        saved["additional_special_tokens"] = list(extra_special_tokens)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
                                   **saved)
    fast.padding_side = "right"
    return fast


def left_pad(seqs, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists (or 1-d tensors) into (input_ids, attention_mask), for generation and
    for reading the next token after each prompt."""
    seqs = [torch.as_tensor(s, dtype=torch.long) for s in seqs]
    ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id, padding_side="left")
    lengths = torch.tensor([len(s) for s in seqs])
    att = (torch.arange(ids.shape[1])[None, :] >= ids.shape[1] - lengths[:, None]).long()
    return ids, att


def pad_batch(seqs: list[list[int]], pad_id: int, loss_masks: list[list[int]] | None = None):
    """Right-pad token lists into input_ids, attention_mask and labels (-100 where no loss)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        keep = torch.tensor(loss_masks[i], dtype=torch.bool) if loss_masks else torch.ones(len(s), dtype=torch.bool)
        labels[i, : len(s)] = torch.where(keep, torch.tensor(s), torch.tensor(-100))
    return ids, att, labels


def train_lm(model, sequences: list[list[int]], pad_id: int, *, steps: int, batch_size: int = 64,
             lr: float = 1e-4, weight_decay: float = 0.1, warmup_steps: int = 0, seed: int = 0,
             loss_masks: list[list[int]] | None = None, desc: str = "pretraining",
             on_step=None) -> list[float]:
    """Next-token training with AdamW and a cosine schedule for ``steps`` optimizer steps.

    Examples are visited in shuffled epochs (so ``steps = ceil(len/batch)`` is one epoch).
    ``loss_masks`` (1 = train on this token) restricts the loss, e.g. to a fill-in middle.
    ``on_step(step, model)``, if given, is called after every optimizer step (1-based), e.g. to
    save checkpoints. Returns the loss of every step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def lr_at(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    order: list[int] = []
    losses = []
    batch_size = min(batch_size, len(sequences))
    bar = Progress(steps, desc)
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            order += torch.randperm(len(sequences), generator=g).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        ids, att, labels = pad_batch([sequences[i] for i in idx], pad_id,
                                     [loss_masks[i] for i in idx] if loss_masks else None)
        loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.update(loss=round(losses[-1], 3))
        if on_step is not None:
            on_step(step, model)
            model.train()
    bar.close()
    model.eval()
    return losses
