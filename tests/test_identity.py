"""unikd.identity: one table classifies every RunConfig field, and every identity rule follows from it."""

from __future__ import annotations

import types
import typing

import pytest
from pydantic import BaseModel

from unikd.config import RunConfig, load_config
from unikd.identity import (
    FIELDS,
    KD,
    RESULT,
    SPEED,
    WATCH,
    changes,
    config_hash,
    field_class,
    flatten_fields,
    hash_payload,
    no_kd_twin,
    pairing_key,
    pseudo_label_twin,
    total_steps,
)


def _schema_fields(cls=RunConfig, prefix: str = "") -> list[str]:
    """Every leaf field of the schema (a nested section's fields by their dotted paths)."""
    out = []
    for name, info in cls.model_fields.items():
        ann = info.annotation
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if typing.get_origin(ann) in (typing.Union, types.UnionType) and len(args) == 1:
            ann = args[0]
        if isinstance(ann, type) and issubclass(ann, BaseModel) and name != "plan":
            out += _schema_fields(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_every_schema_field_is_in_exactly_one_class():
    fields = _schema_fields()
    assert len(fields) > 60 and "train.teacher_cache_dir" in fields and "student.init.source" in fields
    unclassified = []
    for path in fields:
        try:
            field_class(path)
        except KeyError:
            unclassified.append(path)
    assert unclassified == [], f"add these to unikd.identity.FIELDS: {unclassified}"
    assert set(FIELDS.values()) == {RESULT, KD, SPEED, WATCH}
    # every table entry names a real field or section of the schema
    sections = {p.rsplit(".", 1)[0] for p in fields if "." in p} | {p.split(".")[0] for p in fields}
    assert all(path in fields or path in sections for path in FIELDS), [p for p in FIELDS if p not in fields]


def test_the_table_fails_for_a_field_no_entry_covers():
    with pytest.raises(KeyError, match="no class"):
        field_class("brand_new_section.knob")
    assert field_class("brand_new_section.knob", RESULT) == RESULT
    assert field_class("plan.terms.0.temperature") == KD and field_class("train.max_steps") == RESULT
    assert field_class("train.report_to") == WATCH and field_class("train.attention_capture") == SPEED


def test_the_hash_is_version_3s():
    """The payload drops speed and unhashed watching fields, and a fine-tune's plan; what hash version 3 hashed
    stays, so the committed study databases find their runs (the exact hashes are pinned in test_study.py)."""
    base = ["stage=task", "teacher.path=t", "data.task=sst2"]
    cfg = load_config(None, base)
    payload = hash_payload(cfg)
    assert "output_dir" not in payload and "allow_weak" not in payload["teacher"]
    assert {"progress", "report_to", "cpu", "attention_capture", "keep_freed_memory"}.isdisjoint(payload["train"])
    assert {"log_every", "eval_every", "save_every", "keep_checkpoints", "eval_batch_size"} <= set(payload["train"])
    assert "transfer" not in payload["data"] and "then" not in payload  # added after v3, at their defaults
    faster = load_config(None, base + ["train.attention_capture=recompute", "train.progress=false", "output_dir=x"])
    assert config_hash(faster) == config_hash(cfg)
    assert config_hash(load_config(None, base + ["optim.lr=1e-3"])) != config_hash(cfg)
    ft = ["stage=finetune", "teacher.path=t", "data.task=sst2"]
    assert config_hash(load_config(None, ft)) == config_hash(load_config(None, ft + ["plan.hard_label_weight=0.5"]))


def test_changes_name_each_result_changing_field_and_skip_speed_and_watching():
    base = ["stage=task", "teacher.path=t", "data.task=sst2", "plan.terms=[{knowledge: logits, loss: kl}]"]
    old = load_config(None, base)
    new = load_config(
        None,
        base
        + ["plan.terms.0.temperature=2", "train.max_steps=9", "train.progress=false", "train.eval_every=5"]
        + ["output_dir=elsewhere", "plan.terms=[{knowledge: logits, loss: kl, temperature: 2}, {knowledge: hidden}]"],
    )
    found = changes(old, new)
    assert found["plan.terms.0.temperature"] == {"old": 1.0, "new": 2.0}
    assert found["train.max_steps"] == {"old": None, "new": 9}
    assert found["plan.terms.1.knowledge"] == {"old": "<absent>", "new": "hidden"}
    assert not any(k.startswith(("train.progress", "train.eval_every", "output_dir")) for k in found)
    # a fine-tune's plan is not part of it: a new default plan does not block resuming a teacher
    ft = ["stage=finetune", "teacher.path=t", "data.task=sst2"]
    assert changes(load_config(None, ft), load_config(None, ft + ["plan.hard_label_weight=0.5"])) == {}


def test_the_no_kd_twin_drops_every_kd_field_and_a_chain_becomes_one_budget():
    data = {
        "stage": "task",
        "teacher": {"path": "t", "precision": "int8", "allow_weak": True},
        "data": {"task": "sst2", "transfer": [{"kind": "rest_of_train", "weight": 2}]},
        "plan": {"terms": [{"knowledge": "hidden"}], "hard_label_weight": 0},
        "train": {"max_steps": 141, "teacher_cache": True, "teacher_cache_dir": "store", "log_every": 7},
        "then": [{"plan": {"terms": [{"knowledge": "logits"}]}, "train": {"max_steps": 100}}],
        "seed": 3,
    }
    twin, transfer = no_kd_twin(data, RunConfig.model_validate(data))
    assert transfer == [{"kind": "rest_of_train", "weight": 2}]
    assert twin == {
        "stage": "finetune",
        "teacher": {"path": "t", "allow_weak": True},
        "data": {"task": "sst2"},
        "train": {"max_steps": 241, "log_every": 7},
        "seed": 3,
    }
    assert RunConfig.model_validate(twin).stage == "finetune"  # a valid fine-tune
    assert [k for k in flatten_fields(twin) if field_class(k) == KD] == ["stage"]
    pseudo = RunConfig.model_validate(pseudo_label_twin(twin, transfer, "store"))
    assert pseudo.plan.pseudo_labels and pseudo.plan.terms == [] and pseudo.data.transfer[0].weight == 2
    assert pseudo.train.teacher_cache and pseudo.train.teacher_cache_dir == "store"
    assert data["train"]["teacher_cache"] and data["then"]  # the KD run's mapping is left as it was


def test_a_kd_run_and_its_twins_share_the_pairing_key_whatever_speed_and_watching():
    base = {"data": {"task": "sst2"}, "train": {"max_steps": 282, "progress": True}, "seed": 1, "output_dir": "a"}
    kd = base | {
        "stage": "task",
        "train": {"max_steps": 141, "teacher_cache": True, "teacher_cache_dir": "s", "progress": False},
        "then": [{"train": {"max_steps": 141}}],
        "plan": {"terms": []},
        "seed": 2,
        "output_dir": "b",
    }
    assert pairing_key(kd) == pairing_key(base)
    assert pairing_key(base | {"optim": {"lr": 1e-3}}) != pairing_key(base)
    assert pairing_key(base | {"student": {"shape": {"num_layers": 2}}}) != pairing_key(base)


def test_total_steps_of_a_chain_is_its_sum_and_unknown_while_a_step_is_missing():
    assert total_steps({"steps": 141, "chain": [{"steps": 141}, {"steps": 141}]}) == 282
    assert total_steps({"steps": 282}) == 282
    assert total_steps({"steps": 141, "chain": [{"steps": 141}, {"steps": None}]}) is None
    assert total_steps(None) is None
