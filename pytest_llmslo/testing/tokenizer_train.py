"""Train the tiny models' tokenizers offline, in the two styles mainstream families use.

``byte_level``: GPT-2 style byte-level BPE (Llama 3, Qwen, GLM-4 use tiktoken-like vocabularies of
this kind); special tokens are appended after the learned vocabulary, as in those models.
``sentencepiece``: SentencePiece-style BPE as Hugging Face converts it (Mistral, Baichuan,
ChatGLM3): ``▁`` marks a word start, a ``▁`` is put before the text, unknown characters fall
back to ``<0xNN>`` byte tokens; special tokens come first, then the 256 byte tokens. The two
styles count tokens of re-tokenized text differently (the leading ``▁``), which is what a plugin
that counts tokens itself must cope with.

The corpus is fixed and seed-independent, so a family's tokenizer is the same on every machine.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from pytest_llmslo.testing.families import SpecialToken, TokenizerStyle
from pytest_llmslo.testing.tiny_model import _CHINESE, _ENGLISH, _PUNCTUATION

METASPACE = "\u2581"  # ▁


def corpus() -> list[str]:
    """English and Chinese lines; some end in a blank line so that ``\\n\\n`` becomes one token."""
    rng = random.Random(20241202)
    lines = []
    for _ in range(3000):
        words = []
        for _ in range(rng.randint(8, 30)):
            pool = _CHINESE if rng.random() < 0.4 else _ENGLISH
            words.append(rng.choice(pool))
            if rng.random() < 0.1:
                words.append(rng.choice(_PUNCTUATION))
        line = " ".join(words)
        lines.append(line + ("\n\n" if rng.random() < 0.3 else ""))
    return lines


def train(
    style: TokenizerStyle, specials: Sequence[SpecialToken], vocab_size: int, bos: str | None
) -> Any:
    """A trained ``tokenizers.Tokenizer``; ``bos`` is prepended by its post-processor if given."""
    if style == "byte_level":
        tok = _byte_level(specials, vocab_size)
    else:
        tok = _sentencepiece(specials, vocab_size)
    if bos is not None:
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))],
        )
    return tok


def _byte_level(specials: Sequence[SpecialToken], vocab_size: int) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    # after the learned vocabulary, in the given order, as in Llama 3's and Qwen's vocabularies
    for special in specials:
        added = AddedToken(special.text, special=special.special, normalized=False)
        if special.special:
            tok.add_special_tokens([added])
        else:
            tok.add_tokens([added])
    return tok


def _sentencepiece(specials: Sequence[SpecialToken], vocab_size: int) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256 - len(specials), show_progress=False)
    trainer_tok.train_from_iterator(corpus(), trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    # ids: the special tokens, then <0x00>..<0xFF>, then the learned pieces (Llama 2's layout)
    vocab: dict[str, int] = {}
    for token in [s.text for s in specials] + [f"<0x{b:02X}>" for b in range(256)]:
        vocab[token] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    unk = specials[0].text
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True)
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace(METASPACE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.add_special_tokens(
        [AddedToken(s.text, special=s.special, normalized=False) for s in specials]
    )
    return tok
