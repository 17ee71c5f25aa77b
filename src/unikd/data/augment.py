"""Data augmentation for task distillation: more inputs for the teacher to label than there are labels.

Two methods, both seeded per example (the output does not depend on ``num_proc`` or the order of calls):

``tinybert`` (Jiao et al. 2020, §3.3 and Algorithm 1)
    Split each text into words (the tokenizer's pre-tokenizer: BERT's basic tokenization). For every word
    that is not a stop word and has a letter, collect ``candidates`` (K, default 15) replacements once:

    - a single-piece word: the masked LM's top-K predictions at that position (the word masked, the rest of
      the text as context), whole words only;
    - a multi-piece word, and every word when there is no masked LM: the K nearest whole words to it in a word
      embedding space. TinyBERT uses GloVe; here the space is the input-embedding matrix of the model that
      tokenizes (cosine between the mean of the word's piece embeddings and every whole-word token).

    Then make ``copies`` (N, default 20) new texts: each candidate word is replaced, with probability
    ``p_replace`` (p_t, default 0.4), by one of its candidates drawn uniformly. Duplicates (of the original or
    of an earlier copy) are dropped, as TinyBERT does, so an example yields at most N copies.

``tang`` (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks", §3.3)
    The rule-based augmentation without a part-of-speech tagger: each word is replaced by the mask token with
    probability ``p_mask`` (0.1); then, with probability ``p_ngram`` (0.25), the text is cut to one n-gram
    (n uniform in 1..5) at a uniform position.

Sentence pairs stay pairs: each side is augmented on its own and copy i of the first text goes with copy i of
the second (the shorter list of copies decides how many pairs there are). Labels and ``idx`` (the original
row) are kept on every copy; ``copy`` numbers the copies of one row (0, 1, ...).
"""

from __future__ import annotations

import hashlib
import inspect
import random
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from unikd.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import torch

FIELD = "data.augment"
_AUGMENT_VERSION = "unikd-augment-v1"  # bump when the output for the same settings changes

#: TinyBERT's stop-word list (never replaced): NLTK's English stop words
STOP_WORDS = frozenset(
    """i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he
    him his himself she she's her hers herself it it's its itself they them their theirs themselves what which
    who whom this that that'll these those am is are was were be been being have has had having do does did
    doing a an the and but if or because as until while of at by for with about against between into through
    during before after above below to from up down in out on off over under again further then once here
    there when where why how all any both each few more most other some such no nor not only own same so than
    too very s t can will just don don't should should've now d ll m o re ve y ain aren aren't couldn couldn't
    didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't
    needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't""".split()
)


class AugmentConfig(BaseModel):
    """``data.augment``: augmented copies of the labelled rows, as a transfer set for task KD."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["tinybert", "tang"] = Field(
        "tinybert",
        description="tinybert: masked-LM / embedding "
        "word replacement (Jiao et al. 2020); tang: masking and n-gram "
        "sampling (Tang et al. 2019).",
    )
    copies: int = Field(20, ge=1, le=1000, description="N: augmented copies per example (duplicates dropped).")
    p_replace: float = Field(0.4, gt=0, le=1, description="tinybert: p_t, the probability a word is replaced.")
    candidates: int = Field(15, ge=1, le=1000, description="tinybert: K replacement candidates per word.")
    mlm_model: str | None = Field(
        None,
        description="tinybert: the masked LM that proposes single-piece "
        "replacements (hub id or directory); default: the teacher when it has an MLM "
        "head, else none (every word from embedding neighbours, logged).",
    )
    p_mask: float = Field(0.1, ge=0, le=1, description="tang: probability that a word becomes the mask token.")
    p_ngram: float = Field(0.25, ge=0, le=1, description="tang: probability that the text is cut to an n-gram.")
    max_ngram: int = Field(5, ge=1, description="tang: the longest n-gram kept.")
    seed: int = Field(0, description="Seed of the replacements (with the row index: reproducible per row).")
    num_proc: int | None = Field(
        None,
        ge=1,
        description="Processes for the word-replacement pass "
        "(datasets.map(num_proc=)); the masked-LM candidates run in this process.",
    )

    @model_validator(mode="after")
    def _check(self):
        if self.method == "tang" and self.p_mask == 0 and self.p_ngram == 0:
            raise ValueError("tang augmentation with p_mask = p_ngram = 0 changes nothing; raise one of them")
        return self


# ---- words -------------------------------------------------------------------------------------------
def split_words(tokenizer, text: str) -> list[str]:
    """The text's words as the tokenizer's pre-tokenizer splits them (BERT: whitespace and punctuation)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.pre_tokenizer is not None:
        normalized = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
        return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]
    return text.split()


def _eligible(word: str) -> bool:
    return word.lower() not in STOP_WORDS and any(ch.isalpha() for ch in word)


def _rng(seed: int, row: int, side: int) -> random.Random:
    return random.Random(zlib.crc32(f"{_AUGMENT_VERSION}|{seed}|{row}|{side}".encode()))


# ---- candidates -----------------------------------------------------------------------------------------
@dataclass
class Candidates:
    """Replacement candidates for the words of a text: the masked LM's and the embedding neighbours'."""

    tokenizer: object
    embeddings: "torch.Tensor"  # [V, D] input embeddings of the tokenizing model, unit rows
    word_ids: "torch.Tensor"  # [W] vocabulary ids of the whole-word tokens
    k: int
    mlm: object | None = None  # a *ForMaskedLM model, or None

    def __post_init__(self):
        self.words = self.embeddings[self.word_ids]  # [W, D], gathered once (a copy per query cost ~0.1 s)
        self._near: dict[str, list[str]] = {}

    @classmethod
    def build(cls, tokenizer, embedding_matrix: "torch.Tensor", k: int, mlm=None) -> Candidates:
        import torch

        vocab = tokenizer.get_vocab()
        special = set(tokenizer.all_special_ids)
        ids = sorted(i for w, i in vocab.items() if i not in special and not w.startswith("##") and w.isalpha())
        if not ids:
            raise ConfigError(
                FIELD,
                "the tokenizer has no whole-word tokens to draw replacements from",
                "use a WordPiece/BPE tokenizer with a word vocabulary, or method: tang",
            )
        word_ids = torch.tensor(ids)
        unit = torch.nn.functional.normalize(embedding_matrix.detach().float(), dim=-1)
        return cls(tokenizer, unit, word_ids, k, mlm)

    def _pieces(self, word: str) -> list[int]:
        return self.tokenizer(word, add_special_tokens=False)["input_ids"]

    def neighbours(self, word: str) -> list[str]:
        """The K whole words nearest to ``word`` in the embedding space (the word itself excluded)."""
        import torch

        if word in self._near:
            return self._near[word]
        pieces = self._pieces(word)
        if not pieces:
            return []
        query = torch.nn.functional.normalize(self.embeddings[pieces].mean(0), dim=-1)
        order = (self.words @ query).topk(min(self.k + len(pieces), len(self.word_ids))).indices
        words = [self.tokenizer.convert_ids_to_tokens(int(self.word_ids[i])) for i in order]
        self._near[word] = [w for w in words if w != word.lower() and w != word][: self.k]
        return self._near[word]

    def masked_lm(self, words: list[str], positions: list[int]) -> dict[int, list[str]]:
        """For each word position: the masked LM's top-K whole words there, the word itself excluded."""
        import torch

        if not positions:
            return {}
        tok, out = self.tokenizer, {}
        batch = []
        for pos in positions:
            masked = list(words)
            masked[pos] = tok.mask_token
            batch.append(" ".join(masked))
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=128)
        accepted = inspect.signature(self.mlm.forward).parameters
        with torch.inference_mode():
            logits = self.mlm(**{k: v for k, v in enc.items() if k in accepted}).logits
        whole = torch.full((logits.shape[-1],), float("-inf"))
        whole[self.word_ids[self.word_ids < logits.shape[-1]]] = 0.0
        for row, pos in enumerate(positions):
            where = (enc["input_ids"][row] == tok.mask_token_id).nonzero()
            if len(where) == 0:  # truncated away
                continue
            scores = logits[row, int(where[0])].float() + whole
            top = scores.topk(self.k + 1).indices.tolist()
            cands = [tok.convert_ids_to_tokens(i) for i in top]
            out[pos] = [c for c in cands if c != words[pos].lower()][: self.k]
        return out

    def for_text(self, words: list[str]) -> dict[int, list[str]]:
        """Position -> candidates, for every eligible word of the text."""
        eligible = [i for i, w in enumerate(words) if _eligible(w)]
        single = [i for i in eligible if self.mlm is not None and len(self._pieces(words[i])) == 1]
        found = self.masked_lm(words, single)
        for i in eligible:
            if i not in found:
                found[i] = self.neighbours(words[i])
        return {i: c for i, c in found.items() if c}


# ---- the augmentations of one text ---------------------------------------------------------------------
def tinybert_copies(
    words: list[str], candidates: dict[int, list[str]], cfg: AugmentConfig, rng: random.Random
) -> list[str]:
    """Algorithm 1 of TinyBERT: N draws, each eligible word replaced with probability p_t; unique texts."""
    seen, out = {" ".join(words)}, []
    for _ in range(cfg.copies):
        new = list(words)
        for pos in sorted(candidates):
            choice = rng.choice(candidates[pos])
            if rng.random() < cfg.p_replace:
                new[pos] = choice
        text = " ".join(new)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def tang_copies(words: list[str], cfg: AugmentConfig, mask_token: str, rng: random.Random) -> list[str]:
    """Tang et al.'s masking and n-gram sampling (no POS-guided replacement); unique texts."""
    seen, out = {" ".join(words)}, []
    for _ in range(cfg.copies):
        new = [mask_token if rng.random() < cfg.p_mask else w for w in words]
        if new and rng.random() < cfg.p_ngram:
            n = rng.randint(1, min(cfg.max_ngram, len(new)))
            start = rng.randint(0, len(new) - n)
            new = new[start : start + n]
        text = " ".join(new)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


# ---- a dataset ------------------------------------------------------------------------------------------
def check_mask_token(tokenizer, cfg: AugmentConfig, field: str = FIELD) -> None:
    if cfg.method == "tang" and cfg.p_mask > 0 and getattr(tokenizer, "mask_token", None) is None:
        raise ConfigError(
            f"{field}.p_mask",
            f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no mask token to mask words with",
            "set p_mask: 0 (n-gram sampling only), or use a tokenizer with a [MASK] token",
        )


def load_mlm(path: str, tokenizer, field: str = f"{FIELD}.mlm_model"):
    """The masked LM of ``data.augment.mlm_model``; it must have a mask token and share the tokenizer's vocab."""
    from transformers import AutoModelForMaskedLM

    from unikd.models import NO_REMOTE_CODE, resolve_model_path

    if getattr(tokenizer, "mask_token", None) is None:
        raise ConfigError(
            field,
            "the tokenizer has no mask token, so a masked LM cannot propose words",
            "leave mlm_model unset (embedding neighbours), or use method: tang",
        )
    try:
        model = AutoModelForMaskedLM.from_pretrained(resolve_model_path(path, field), **NO_REMOTE_CODE)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            field,
            f"could not load a masked LM from {path!r} ({type(exc).__name__}: {exc})",
            "give a hub id or directory of a *ForMaskedLM checkpoint (e.g. bert-base-uncased)",
        ) from exc
    if model.config.vocab_size < len(tokenizer):
        raise ConfigError(
            field,
            f"the masked LM's vocabulary ({model.config.vocab_size}) is smaller than the "
            f"tokenizer's ({len(tokenizer)})",
            "use a masked LM of the teacher's tokenizer",
        )
    return model.eval()


def augment_dataset(
    ds: "datasets.Dataset",
    tokenizer,
    cfg: AugmentConfig,
    *,
    embedding_matrix=None,
    mlm=None,
    mlm_name: str | None = None,
    cache_dir=None,
    log=print,
) -> "datasets.Dataset":
    """Augmented copies of the rows of ``ds`` (columns ``text_a``[, ``text_b``], ``label``, ``idx``).

    ``embedding_matrix`` [V, D]: the input embeddings of the model whose tokenizer this is (tinybert's
    neighbours); ``mlm``: a masked LM for single-piece words (None: neighbours for every word), ``mlm_name`` its
    path (part of the cache key). Cached like tokenization (``cache_dir``): the key is the input rows, the
    tokenizer, the settings and the models' identities."""
    from unikd.data.tokenize import _map_cached

    sides = _check_inputs(ds, tokenizer, cfg, embedding_matrix)
    cands = Candidates.build(tokenizer, embedding_matrix, cfg.candidates, mlm) if cfg.method == "tinybert" else None
    if cands is not None and mlm is None:
        log("data.augment: no masked LM, so every replacement comes from the teacher's input-embedding neighbours")
    columns = list(ds.column_names)

    def fn(batch):
        out = {c: [] for c in [*columns, "copy"]}
        for r in range(len(batch[sides[0]])):
            row = int(batch["idx"][r]) if "idx" in batch else r
            texts = []
            for side, column in enumerate(sides):
                words = split_words(tokenizer, batch[column][r])
                rng = _rng(cfg.seed, row, side)
                if cands is not None:
                    texts.append(tinybert_copies(words, cands.for_text(words), cfg, rng))
                else:
                    texts.append(tang_copies(words, cfg, tokenizer.mask_token or "", rng))
            for j, pair in enumerate(zip(*texts)):
                for column in columns:
                    out[column].append(pair[sides.index(column)] if column in sides else batch[column][r])
                out["copy"].append(j)
        return out

    return _map_cached(
        ds,
        fn,
        fingerprint=_fingerprint(ds, tokenizer, cfg, embedding_matrix, mlm, mlm_name),
        cache_dir=cache_dir,
        remove_columns=columns,
        desc="Augment rows",
        num_proc=cfg.num_proc,
    )


def _check_inputs(ds, tokenizer, cfg: AugmentConfig, embedding_matrix) -> list[str]:
    """What augmentation needs before it starts: a mask token (tang, or a masked LM), the teacher's embeddings
    (tinybert), text columns and an ``idx`` per row (each row's copies are seeded by it). Returns the text
    columns."""
    check_mask_token(tokenizer, cfg)
    if cfg.method == "tinybert" and embedding_matrix is None:
        raise ConfigError(
            FIELD,
            "tinybert augmentation needs the teacher's input embeddings",
            "pass embedding_matrix (the trainer passes the teacher's)",
        )
    sides = [c for c in ("text_a", "text_b") if c in ds.column_names]
    if not sides:
        raise ConfigError(
            FIELD,
            f"the rows have no text column (columns: {ds.column_names})",
            "augment a task's rows (text_a / text_b)",
        )
    if "idx" not in ds.column_names:  # every row needs its own seed, whatever the batch it lands in
        raise ConfigError(
            FIELD,
            "the rows have no idx column to seed each row's copies",
            "augment rows from unikd.data loaders (they carry idx)",
        )
    return sides


def _fingerprint(ds, tokenizer, cfg: AugmentConfig, embedding_matrix, mlm, mlm_name) -> str:
    """The cache key of a set of copies: the input rows, the tokenizer, the settings and the models' identities."""
    from datasets.fingerprint import Hasher

    from unikd.data.tokenize import _tokenizer_fingerprint

    embed_key = None
    if embedding_matrix is not None:  # the model's identity: its embeddings' bytes (~0.1 s for 30k x 384)
        embed_key = hashlib.sha256(embedding_matrix.detach().float().cpu().numpy().tobytes()).hexdigest()
    return Hasher.hash(
        [
            _AUGMENT_VERSION,
            ds._fingerprint,
            _tokenizer_fingerprint(tokenizer),
            cfg.model_dump(exclude={"num_proc", "source_labels"}),
            embed_key,
            mlm_name,
            mlm is not None,
        ]
    )


def replacement_rate(original: str, copy: str) -> float:
    """The share of word positions that differ between two texts of the same number of words."""
    a, b = original.split(), copy.split()
    if len(a) != len(b) or not a:
        raise ValueError("texts of different word counts")
    return sum(x != y for x, y in zip(a, b)) / len(a)


__all__ = [
    "STOP_WORDS",
    "AugmentConfig",
    "Candidates",
    "augment_dataset",
    "check_mask_token",
    "load_mlm",
    "replacement_rate",
    "split_words",
    "tang_copies",
    "tinybert_copies",
]
