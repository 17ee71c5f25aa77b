"""Builders the tests share (``from helpers import tiny_bert, ...``): tiny random Hugging Face models, saving them,
a tiny task run's overrides, and the paths of the repository, the test fixtures and ../shared/data. transformers
is imported inside the builders: loading a model class costs seconds, which test files without a model need not
pay."""

from __future__ import annotations

from pathlib import Path

import torch

#: the test suite's folder, the repository, the committed fixtures (tiny corpus, a legacy run) and shared/data
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
FIXTURES = TESTS / "fixtures"
SHARED = ROOT.parent / "shared" / "data"

# ---------------------------------------------------------------------------------------------------
# Tiny random Hugging Face models
# ---------------------------------------------------------------------------------------------------
#: the packaged MiniLM tokenizer's vocabulary: the default for models saved with that tokenizer
MINILM_VOCAB = 30522


def _seeded(seed: int | None) -> None:
    """torch.manual_seed(seed) right before the weights are drawn; None leaves the global RNG alone."""
    if seed is not None:
        torch.manual_seed(seed)


def tiny_bert(
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    *,
    vocab: int = MINILM_VOCAB,
    ffn: int | None = None,
    positions: int = 64,
    num_labels: int = 2,
    cls=None,
    seed: int | None = 0,
    **config,
):
    """A random BERT-style encoder, ``cls(cls.config_class(...))``; ``cls`` defaults to BertForSequenceClassification.

    Any model class whose config takes BERT's arguments works (BertModel, BertForMaskedLM, RoBERTa, ELECTRA).
    ``ffn`` defaults to 2 * hidden; ``config`` goes to the config as it is (dropouts, initializer_range, ...).
    """
    import transformers as T

    cls = cls or T.BertForSequenceClassification
    model_config = cls.config_class(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn or 2 * hidden,
        max_position_embeddings=positions,
        num_labels=num_labels,
        **config,
    )
    _seeded(seed)
    return cls(model_config)


def tiny_distilbert(
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    *,
    vocab: int = MINILM_VOCAB,
    ffn: int | None = None,
    positions: int = 64,
    num_labels: int = 2,
    cls=None,
    seed: int | None = 0,
    **config,
):
    """A random DistilBERT (``cls`` defaults to DistilBertForSequenceClassification); ``ffn`` defaults to 2 * hidden."""
    import transformers as T

    cls = cls or T.DistilBertForSequenceClassification
    model_config = T.DistilBertConfig(
        vocab_size=vocab,
        dim=hidden,
        n_layers=layers,
        n_heads=heads,
        hidden_dim=ffn or 2 * hidden,
        max_position_embeddings=positions,
        num_labels=num_labels,
        **config,
    )
    _seeded(seed)
    return cls(model_config)


def tiny_gpt2(
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    *,
    vocab: int = MINILM_VOCAB,
    positions: int = 64,
    bos_token_id: int = 0,
    eos_token_id: int = 0,
    cls=None,
    seed: int | None = 0,
    **config,
):
    """A random GPT-2 (``cls`` defaults to GPT2LMHeadModel; its MLP keeps GPT-2's 4 * hidden)."""
    import transformers as T

    cls = cls or T.GPT2LMHeadModel
    model_config = T.GPT2Config(
        vocab_size=vocab,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_positions=positions,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        **config,
    )
    _seeded(seed)
    return cls(model_config)


def tiny_llama(
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int | None = None,
    *,
    vocab: int = MINILM_VOCAB,
    ffn: int | None = None,
    positions: int = 64,
    cls=None,
    seed: int | None = 0,
    **config,
):
    """A random Llama-style decoder, ``cls(cls.config_class(...))``; ``cls`` defaults to LlamaForCausalLM.

    Qwen2ForCausalLM and MistralForCausalLM take the same arguments (their sliding windows go in ``config``).
    ``kv_heads`` None means one key/value head per query head; ``ffn`` defaults to 2 * hidden.
    """
    import transformers as T

    cls = cls or T.LlamaForCausalLM
    model_config = cls.config_class(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=ffn or 2 * hidden,
        max_position_embeddings=positions,
        **config,
    )
    _seeded(seed)
    return cls(model_config)


def save_tiny_model(model, path: Path, tokenizer_dir: Path | str | None = None) -> Path:
    """``model.save_pretrained(path)``, and beside it the tokenizer of ``tokenizer_dir`` if one is given."""
    model.save_pretrained(path)
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


def tiny_task_options(teacher: Path | str, glue_dir: Path | str, fields: dict | None = None) -> list[str]:
    """The overrides of a tiny task-KD run on SST-2 from ``teacher`` (a weak one is allowed): a 1-layer student
    from the teacher's layers, 32 tokens, no progress bar; ``fields`` add or replace options by name."""
    options = {
        "stage": "task",
        "teacher.path": teacher,
        "teacher.allow_weak": "true",
        "student.shape.num_layers": 1,
        "student.init.strategy": "teacher-layers",
        "data.task": "sst2",
        "data.data_dir": glue_dir,
        "data.max_length": 32,
        "train.progress": "false",
    }
    options.update(fields or {})
    return [f"{name}={value}" for name, value in options.items()]


#: a ChatML-style template (SmolLM2's and Qwen2's shape) for the word-level test tokenizer
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant {% endif %}"
)
#: the words of the tiny causal-LM task (numbers, letters and a few words): small enough for a tiny decoder
CAUSAL_WORDS = [str(i) for i in range(20)] + list("abcdefghij") + ["user", "assistant", "system", "plus", "is", "?"]


def word_tokenizer(path: Path | None = None, chat_template: bool = True):
    """A word-level fast tokenizer over ``CAUSAL_WORDS`` (specials: <pad> 0, <unk> 1, <s> 2, </s> 3 = EOS), with
    the ``CHAT_TEMPLATE`` unless ``chat_template`` is False; saved to ``path`` when given."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", *CAUSAL_WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    if path is not None:
        tok.save_pretrained(path)
    return tok


def addition_rows(n: int, seed: int) -> list[dict]:
    """Prompt/response rows of a learnable toy task ('3 plus 4 is ?' -> '7 a'): a decoder that learns it has a much
    lower response perplexity than its unigram baseline."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        rows.append({"prompt": f"{a} plus {b} is ?", "response": f"{a + b} {'abcdefghij'[a]}"})
    return rows
