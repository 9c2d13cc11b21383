"""Offline building blocks for ``builtin:tiny-<family>`` models: a small word-level tokenizer.

Tiny models have random weights and exist so that every command runs on a laptop without
downloads (tests, the demo). Their tokenizer knows a fixed vocabulary (unknown words map to
``<unk>``) plus the family's special tokens, and carries a chat template shaped like the real one.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

_WORDS = """
a an the is are was were be there this that these those it its of in on at to from with without by for
and or not no yes what which where how many much does do did can could show shows shown visible seen found
image images picture scan slice view region area part side left right upper lower top bottom middle centre
center anterior posterior medial lateral size shape color colour texture bright dark round oval irregular
large small normal abnormal lesion mass tumor tumour nodule polyp cyst organ liver kidney spleen lung lungs
heart brain bone vessel aorta stomach colon bladder prostate pancreas gallbladder esophagus eye retina disc
optic skin mole lymph node fluid effusion opacity fracture ct mri x ray xray ultrasound fundus endoscopy pet
dermoscopy write general description answer question using single word phrase user assistant model system
you helpful
"""


def word_vocab(specials: list[str]) -> dict[str, int]:
    """Specials first (stable ids), then the fixed words and punctuation."""
    words = specials + sorted(set(_WORDS.split())) + list(".,?!:;'\"-()/") + [str(d) for d in range(10)]
    return {w: i for i, w in enumerate(dict.fromkeys(words))}


def synthetic_tokenizer(
    specials: list[str], chat_template: str, *, bos: str | None, eos: str, pad: str, unk: str = "<unk>",
    extra: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """A fast tokenizer over :func:`word_vocab`; specials are split out even without surrounding spaces."""
    specials = list(dict.fromkeys([unk, pad, eos] + ([bos] if bos else []) + specials))
    vocab = word_vocab(specials)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
        additional_special_tokens=[s for s in specials if s not in (unk, pad, eos, bos)],
        extra_special_tokens=extra or {}, chat_template=chat_template, padding_side="left",
    )
    extra_specials = [s for s in specials if s not in (unk, pad, eos, bos)]
    tok.add_special_tokens({"additional_special_tokens": extra_specials})
    return tok

