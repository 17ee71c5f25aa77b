"""Teacher and student vocabularies for token-level logits.

Token-level KD compares the two models' distributions id by id, so both must index the same tokens. Same-family
checkpoints often pad their embedding matrices to different sizes past one tokenizer (Qwen2.5-0.5B's 151,936 rows
vs Qwen2.5-7B's 152,064, both over a 151,665-token tokenizer; torchtune #2119, TRL #2215): the rows past the
tokenizer are never a label and never an input, so both logits are cropped to the tokenizer's real vocabulary
(``len(tokenizer)``), said once in the log. Different tokenizers are refused, naming both sizes: the same id would
be two different strings (cross-tokenizer KD, ULD, is not built).

================================  ===================================================================================
teacher rows / student rows       what happens
================================  ===================================================================================
equal                             nothing (the usual case: a student built from the teacher's config)
differ, same tokenizer of N       logits cropped to N on both sides (N ≤ both sizes), one warning
differ, different tokenizers      ConfigError naming ``student.init.pretrained``, both tokenizer and matrix sizes
================================  ===================================================================================
"""

from __future__ import annotations

from unikd.errors import ConfigError, warn
from unikd.models import load_tokenizer

FIELD = "student.init.pretrained"


def shared_vocabulary(teacher_path: str, teacher_rows: int, student_path: str, student_rows: int) -> int | None:
    """The vocabulary both logits are cropped to, or None when the matrices already agree (see the table)."""
    if teacher_rows == student_rows:
        return None
    teacher_tok = load_tokenizer(teacher_path, "teacher.path")
    student_tok = load_tokenizer(student_path, FIELD)
    sizes = (
        f"teacher {len(teacher_tok)} tokens / {teacher_rows} embedding rows, student {len(student_tok)} tokens / "
        f"{student_rows} rows"
    )
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise ConfigError(
            FIELD,
            f"its tokenizer is not the teacher's ({sizes}): token-level logits compare the same ids",
            "distil into a student with the teacher's tokenizer (or drop the logits terms: hidden-state and attention "
            "terms need no shared vocabulary); cross-tokenizer KD is not in this version",
        )
    n = len(teacher_tok)
    if n > min(teacher_rows, student_rows):
        raise ConfigError(
            FIELD,
            f"the shared tokenizer has more tokens than an embedding matrix has rows ({sizes})",
            "resize the smaller model's embeddings to the tokenizer (resize_token_embeddings) and save it",
        )
    warn(
        f"teacher and student embeddings are padded past their shared tokenizer ({sizes}): token-level logits "
        f"are compared over its {n} tokens"
    )
    return n
