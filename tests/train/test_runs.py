"""End-to-end runs through the real trainer on tiny models and real SST-2 rows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from helpers import FIXTURES, SHARED, save_tiny_model, tiny_bert
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForMaskedLM, BertModel

from unikd.config import load_config
from unikd.errors import ConfigError
from unikd.train import run


def _common(tmp: Path, name: str, glue_dir: Path, steps: int = 6) -> list[str]:
    return [
        f"data.data_dir={glue_dir}",
        "data.task=sst2",
        "data.train_limit=192",
        "data.eval_limit=96",
        "data.max_length=32",
        f"train.max_steps={steps}",
        "train.batch_size=16",
        "train.progress=false",
        "train.log_every=2",
        "optim.lr=1e-3",
        f"output_dir={tmp / name}",
        "teacher.allow_weak=true",  # the tiny 12-step teacher may be no better than the majority class
    ]


@pytest.fixture(scope="module")
def finetuned_teacher(tmp_path_factory, glue_dir, minilm_path) -> Path:
    tmp = tmp_path_factory.mktemp("teacher")
    base = save_tiny_model(tiny_bert(4, 32, 4, positions=128), tmp / "base", minilm_path)
    cfg = load_config(
        None,
        _common(tmp, "run", glue_dir, steps=12)
        + ["stage=finetune", f"teacher.path={base}", "student.init.strategy=teacher-layers"],
    )
    result = run(cfg)
    assert 0.0 <= result["final"]["accuracy"] <= 1.0
    return tmp / "run" / "student"


def test_task_kd_and_no_kd_baseline_end_to_end(finetuned_teacher, tmp_path, glue_dir):
    student = [
        "student.shape.num_layers=2",
        "student.shape.hidden_size=16",
        "student.shape.num_heads=2",
        "student.init.strategy=slice",
    ]
    kd = run(
        load_config(
            None,
            _common(tmp_path, "kd", glue_dir)
            + student
            + [
                "stage=task",
                f"teacher.path={finetuned_teacher}",
                "plan.terms=[{knowledge: logits, loss: kl}, {knowledge: hidden, loss: mse, matching: uniform}, "
                "{knowledge: relation, matching: pair, teacher_layer: -1, student_layer: -1}]",
            ],
        )
    )
    base = run(
        load_config(
            None,
            _common(tmp_path, "nokd", glue_dir) + student + ["stage=finetune", f"teacher.path={finetuned_teacher}"],
        )
    )
    for result, name in ((kd, "kd"), (base, "nokd")):
        assert set(result["final"]) >= {"accuracy", "score"}
        on_disk = json.loads((tmp_path / name / "metrics.json").read_text())
        assert on_disk["final"] == result["final"]
        model = AutoModelForSequenceClassification.from_pretrained(tmp_path / name / "student")
        assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 16
        assert result["parameters"] == model.num_parameters()
    # The KD student owns projections (16 -> 32) that are saved beside it, never inside it.
    weights = load_file(tmp_path / "kd" / "student" / "model.safetensors")
    assert not any("projection" in k for k in weights)
    projections = torch.load(tmp_path / "kd" / "projections.pt")
    assert any(v.shape == (32, 16) for v in projections.values())
    assert (tmp_path / "kd" / "config.yaml").is_file() and (tmp_path / "kd" / "best").is_dir()
    assert any((tmp_path / "kd" / "logs").rglob("events.out.tfevents*"))


def test_export_run_dir_reports_int8_next_to_fp32(finetuned_teacher, tmp_path, glue_dir):
    """`unikd export RUN_DIR` scores every exported form on the run's own dev set."""
    pytest.importorskip("onnxruntime")
    from typer.testing import CliRunner

    from unikd.cli import app

    run(
        load_config(
            None,
            _common(tmp_path, "kd", glue_dir, steps=2)
            + ["stage=task", f"teacher.path={finetuned_teacher}", "student.shape.num_layers=1"],
        )
    )
    result = CliRunner().invoke(app, ["export", str(tmp_path / "kd"), "--dev-rows", "48"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "kd" / "export" / "export.json").read_text())
    metrics = report["task_metrics"]
    assert metrics["num_examples"] == 48
    assert metrics["onnx"]["accuracy"] == metrics["torch"]["accuracy"]
    assert 0.0 <= metrics["int8"]["accuracy"] <= 1.0
    assert report["checks"]["onnx"]["ok"]


def test_logits_kd_moves_student_towards_teacher(finetuned_teacher, tmp_path, glue_dir):
    """A KD run against its no-KD baseline: distilling only the teacher's logits (no labels) makes the
    student's predictive distribution closer to the teacher's than the same student trained on labels."""
    from unikd.data import classification_collator, load_glue, tokenize_pairs

    student = ["student.shape.num_layers=1", "student.init.strategy=teacher-layers", "optim.lr=3e-3"]
    run(
        load_config(
            None,
            _common(tmp_path, "kd", glue_dir, steps=24)
            + student
            + [
                "stage=task",
                f"teacher.path={finetuned_teacher}",
                "plan.hard_label_weight=0",
                "plan.terms=[{knowledge: logits, loss: kl, temperature: 2.0}]",
            ],
        )
    )
    run(
        load_config(
            None,
            _common(tmp_path, "nokd", glue_dir, steps=24)
            + student
            + ["stage=finetune", f"teacher.path={finetuned_teacher}"],
        )
    )
    tok = AutoTokenizer.from_pretrained(finetuned_teacher)
    dev = tokenize_pairs(load_glue("sst2", "validation", str(glue_dir), limit=128), tok, 32)
    batch = classification_collator(tok)([dev[i] for i in range(len(dev))])
    batch.pop("labels")

    def probs(path):
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        with torch.no_grad():
            return model(**batch).logits.softmax(-1)

    p_teacher = probs(finetuned_teacher)

    def kl(p):
        return float((p_teacher * (p_teacher.log() - p.log())).sum(-1).mean())

    assert kl(probs(tmp_path / "kd" / "student")) < kl(probs(tmp_path / "nokd" / "student"))


def test_resume_matches_uninterrupted_run(finetuned_teacher, tmp_path, glue_dir):
    args = [
        "stage=task",
        f"teacher.path={finetuned_teacher}",
        "student.shape.num_layers=2",
        "train.save_every=3",
        "train.grad_accum=2",
        "plan.terms=[{knowledge: logits, loss: kl}, {knowledge: hidden, loss: mse, matching: random}]",
    ]
    full = run(load_config(None, _common(tmp_path, "full", glue_dir, steps=8) + args))
    cfg = load_config(None, _common(tmp_path, "parts", glue_dir, steps=8) + args)
    first = time.perf_counter()
    assert run(cfg, stop_after=5) == {"stopped_at": 5}
    first = time.perf_counter() - first
    assert (tmp_path / "parts" / "checkpoints" / "step-3").is_dir()
    saved = json.loads((tmp_path / "parts" / "checkpoints" / "step-3" / "unikd_state.json").read_text())["wall_s"]
    second = time.perf_counter()
    resumed = run(cfg, resume=True)
    second = time.perf_counter() - second
    assert resumed["steps"] == full["steps"] == 8
    # wall_s: the seconds of every attempt up to the checkpoint resumed from, plus the resuming one's
    assert 0 < saved < first and 0 < resumed["wall_s"] - saved <= second
    assert (
        0 < full["wall_s"]
        and json.loads((tmp_path / "parts" / "metrics.json").read_text())["wall_s"] == resumed["wall_s"]
    )
    a = load_file(tmp_path / "full" / "student" / "model.safetensors")
    b = load_file(tmp_path / "parts" / "student" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert resumed["final"] == full["final"]
    with pytest.raises(ConfigError, match="output_dir.*already holds.*--resume"):
        run(cfg)  # a finished run is never overwritten by accident
    assert run(cfg, resume=True)["final"] == full["final"]  # resuming a finished run returns its results


@pytest.mark.slow
def test_general_stage_mlm(tmp_path, minilm_path):
    teacher = save_tiny_model(
        tiny_bert(2, 32, 4, positions=128, cls=BertForMaskedLM), tmp_path / "mlm-teacher", minilm_path
    )
    text = FIXTURES / "tiny_corpus.txt"
    result = run(
        load_config(
            None,
            [
                "stage=general",
                f"teacher.path={teacher}",
                f"data.text=[{text}]",
                f"data.eval_text=[{text}]",
                "data.block_size=32",
                "train.max_steps=3",
                "train.batch_size=4",
                "train.progress=false",
                "student.shape.num_layers=1",
                "plan.terms=[{knowledge: logits, loss: kl, temperature: 2.0}, "
                "{knowledge: hidden, loss: cosine, matching: last}]",
                "plan.hard_label_weight=1.0",
                f"output_dir={tmp_path / 'general'}",
            ],
        )
    )
    assert result["final"]["eval_loss"] > 0
    assert (tmp_path / "general" / "student" / "model.safetensors").is_file()


def test_bad_inputs_fail_before_training(tmp_path, glue_dir, minilm_path, finetuned_teacher):
    base = save_tiny_model(tiny_bert(2, 32, 4, positions=128, cls=BertModel), tmp_path / "base", minilm_path)
    common = _common(tmp_path, "x", glue_dir)
    # A pre-trained model without a fine-tuned task head cannot teach a task.
    with pytest.raises(ConfigError, match="teacher.path.*task head.*Fix: fine-tune"):
        run(load_config(None, common + ["stage=task", f"teacher.path={base}"]))
    with pytest.raises(ConfigError, match="data.data_dir"):
        run(
            load_config(None, common + ["stage=finetune", f"teacher.path={base}", f"data.data_dir={tmp_path / 'nope'}"])
        )
    with pytest.raises(ConfigError, match=r"plan.terms.0.knowledge"):
        load_config(None, common + ["stage=task", f"teacher.path={base}", "plan.terms=[{knowledge: gradients}]"])
    with pytest.raises(ConfigError, match=r"plan.terms\[0\].teacher_layer: teacher layer 9 out of range"):
        run(
            load_config(
                None,
                common
                + [
                    "stage=task",
                    f"teacher.path={finetuned_teacher}",
                    "plan.terms=[{knowledge: hidden, matching: pair, teacher_layer: 9, student_layer: 0}]",
                ],
            )
        )
    with pytest.raises(ConfigError, match="teacher.path.*does not exist"):
        run(load_config(None, common + ["stage=finetune", f"teacher.path={tmp_path / 'missing'}"]))
    corrupt = tmp_path / "corrupt"
    save_tiny_model(tiny_bert(2, 32, 4, positions=128), corrupt, minilm_path)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match="teacher.path.*corrupt"):
        run(load_config(None, common + ["stage=finetune", f"teacher.path={corrupt}"]))
    assert not (tmp_path / "x" / "student").exists()


def test_attention_capture_inline_equals_recompute_and_int8_teacher(tmp_path, glue_dir, minilm_path):
    """A TinyBERT-style run (attention scores, hidden states, logits) trains the same student whether the
    maps come inline from the forward or are recomputed from Q/K (no dropout, so both forwards are one
    function); an int8 teacher runs the same plan."""
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    teacher = save_tiny_model(tiny_bert(4, 32, 4, positions=128, **no_dropout), tmp_path / "teacher", minilm_path)
    args = [
        "stage=task",
        f"teacher.path={teacher}",
        "student.shape.num_layers=2",
        "student.init.strategy=teacher-layers",
        "plan.terms=[{knowledge: attention, loss: mse, attention_on: scores, matching: uniform}, "
        "{knowledge: hidden, loss: mse, matching: uniform}, {knowledge: logits, loss: kl}]",
    ]
    runs = {
        mode: run(load_config(None, _common(tmp_path, mode, glue_dir) + args + [f"train.attention_capture={mode}"]))
        for mode in ("inline", "recompute")
    }
    a = load_file(tmp_path / "inline" / "student" / "model.safetensors")
    b = load_file(tmp_path / "recompute" / "student" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    assert runs["inline"]["final"]["accuracy"] == runs["recompute"]["final"]["accuracy"]
    # the saved student knows nothing of the capture: it loads with a stock attention implementation
    saved = json.loads((tmp_path / "inline" / "student" / "config.json").read_text())
    assert "unikd" not in json.dumps(saved)

    int8 = run(load_config(None, _common(tmp_path, "int8", glue_dir) + args + ["teacher.precision=int8"]))
    assert int8["steps"] == runs["inline"]["steps"] and 0.0 <= int8["final"]["accuracy"] <= 1.0
    c = load_file(tmp_path / "int8" / "student" / "model.safetensors")
    # trained against the quantized teacher's features: close to, not the same as, the fp32-teacher student
    diff = max(float((c[k] - a[k]).abs().max()) for k in a)
    assert 0 < diff < 0.05


LEGACY = FIXTURES / "legacy_run"


def test_a_run_written_by_the_flat_term_unikd_resumes_to_the_same_student(tmp_path, glue_dir):
    """tests/fixtures/legacy_run: a task-KD run (logits + projected hidden + embedding terms) stopped after its
    step-3 checkpoint by unikd a9d8991 (one flat term model, projections keyed '<term index>_<layer>'; see its
    make.py), and the student that code made when it resumed the run. Today's code reads the old config.yaml,
    renames the projections as it loads the checkpoint, and ends on the same weights and metrics."""
    import shutil

    from unikd.config import read_run_config

    shutil.copytree(LEGACY, tmp_path / "legacy")
    cfg = read_run_config(tmp_path / "legacy" / "run")
    assert [t.knowledge for t in cfg.plan.terms] == ["logits", "hidden", "embeddings"]
    assert not hasattr(cfg.plan.terms[2], "matching")  # the flat model's leftovers are gone
    cfg = cfg.model_copy(update={"output_dir": str(tmp_path / "legacy" / "run")})
    cfg.teacher.path, cfg.data.data_dir = str(tmp_path / "legacy" / "teacher"), str(glue_dir)
    cfg.teacher.allow_weak = True  # its 3-step teacher is no better than the majority class
    result = run(cfg, resume=True, resume_with_changes=True)  # the paths moved with the copy
    expected = json.loads((LEGACY / "expected" / "metrics.json").read_text())
    assert (result["steps"], result["final"], result["history"]) == (
        expected["steps"],
        expected["final"],
        expected["history"],
    )
    a = load_file(LEGACY / "expected" / "model.safetensors")
    b = load_file(tmp_path / "legacy" / "run" / "student" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    projections = torch.load(tmp_path / "legacy" / "run" / "projections.pt")
    assert {k.split(".")[1] for k in projections} == {"hidden_mse:0", "embeddings_mse:emb"}


def test_a_run_with_projections_gives_the_same_student_whatever_ran_before(finetuned_teacher, tmp_path, glue_dir):
    """Projections start from (seed, key): a config's result does not depend on the process's RNG history
    (it did: they were built from the global RNG before the run seeded it, so a study's second run differed)."""
    args = [
        "stage=task",
        f"teacher.path={finetuned_teacher}",
        "student.shape.num_layers=1",
        "student.shape.hidden_size=16",
        "student.init.strategy=slice",
        "plan.terms=[{knowledge: logits}, {knowledge: hidden, loss: mse}]",
    ]
    torch.manual_seed(123)
    run(load_config(None, _common(tmp_path, "a", glue_dir, steps=3) + args))
    torch.rand(1000)
    run(load_config(None, _common(tmp_path, "b", glue_dir, steps=3) + args))
    a = load_file(tmp_path / "a" / "student" / "model.safetensors")
    b = load_file(tmp_path / "b" / "student" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    pa, pb = torch.load(tmp_path / "a" / "projections.pt"), torch.load(tmp_path / "b" / "projections.pt")
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def test_transfer_rows_get_only_the_kd_terms_and_pseudo_labels_the_teacher(finetuned_teacher, tmp_path, glue_dir):
    """data.transfer: rest_of_train (weight 2) + Tang-augmented copies (weight 1) after 32 labelled rows: the
    epoch holds 32 + 64 + 32 rows; the hard loss counts the labelled rows only; with plan.pseudo_labels the
    transfer rows count with the teacher's argmax."""
    from unikd.distiller import hard_label_loss

    transfer = "[{kind: rest_of_train, weight: 2}, {kind: augment, method: tang, copies: 3, weight: 1}]"
    common = _common(tmp_path, "t", glue_dir) + ["data.train_limit=32", "train.max_steps=null", "train.epochs=1"]
    args = ["stage=task", f"teacher.path={finetuned_teacher}", "student.shape.num_layers=1"]
    cfg = load_config(None, common + args + [f"data.transfer={transfer}"])
    result = run(cfg)
    assert result["steps"] == (32 + 64 + 32) // 16  # batch 16: one epoch over labelled + transfer rows
    # the hard loss of a mixed batch, by hand
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 1])
    labelled = torch.tensor([1, 0, 1, 0])
    teacher_logits = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0]])
    ce = torch.nn.functional.cross_entropy
    for pseudo, expected in (
        (False, (ce(logits[0:1], labels[0:1]) + ce(logits[2:3], labels[2:3])) / 2),
        (True, ce(logits, torch.tensor([0, 1, 0, 0]))),  # transfer rows take the teacher's argmax
    ):
        hard = hard_label_loss(logits, labels, labelled, teacher_logits, pseudo_labels=pseudo)
        torch.testing.assert_close(hard, expected)
    assert float(hard_label_loss(logits, labels, torch.zeros(4), teacher_logits)) == 0.0  # transfer rows alone
    regression = hard_label_loss(
        torch.tensor([[1.0], [2.0]]),
        torch.tensor([0.5, 9.0]),
        torch.tensor([1, 0]),
        torch.tensor([[0.0], [2.5]]),
        pseudo_labels=True,
    )
    torch.testing.assert_close(regression, torch.tensor((0.5**2 + 0.5**2) / 2))


def test_transfer_settings_that_cannot_work_are_refused_by_name(finetuned_teacher, tmp_path, glue_dir):
    common = _common(tmp_path, "bad", glue_dir) + [f"teacher.path={finetuned_teacher}"]
    with pytest.raises(ConfigError, match=r"data.transfer: a transfer set needs a teacher"):
        load_config(None, common + ["stage=finetune", "data.transfer=[{kind: rest_of_train}]"])
    with pytest.raises(ConfigError) as err:
        run(
            load_config(None, common + ["stage=task", "data.train_limit=null", "data.transfer=[{kind: rest_of_train}]"])
        )
    assert err.value.field == "data.transfer[0].kind" and "train_limit" in str(err.value)
    tagged = tmp_path / "tags.txt"
    tagged.write_text("John B-PER\nlives O\n\nParis B-LOC\n")
    with pytest.raises(ConfigError, match=r"data.transfer: transfer rows are for sentence classification and regr"):
        run(
            load_config(
                None,
                common
                + ["stage=task", "data.task=null", f"data.files={{train: {tagged}, validation: {tagged}}}"]
                + ["data.train_limit=1", "data.transfer=[{kind: rest_of_train}]"],
            )
        )
    with pytest.raises(ConfigError, match=r"copies"):
        load_config(None, common + ["stage=task", "data.transfer=[{kind: augment, copies: 0}]"])


# ---- bring your own data (issue 14) ---------------------------------------------------------------------------
def _small_glue(glue_dir: Path, tmp: Path, train_rows: int = 200, dev_rows: int = 64) -> Path:
    """A GLUE directory holding the first rows of the real SST-2 files, verbatim."""
    root = tmp / "glue"
    (root / "SST-2").mkdir(parents=True)
    for name, rows in (("train.tsv", train_rows), ("dev.tsv", dev_rows)):
        lines = (glue_dir / "SST-2" / name).read_text().splitlines(keepends=True)[: rows + 1]
        (root / "SST-2" / name).write_text("".join(lines))
    return root


def _run_opts(tmp: Path, name: str, steps: int = 4) -> list[str]:
    return [
        "data.train_limit=96",
        "data.max_length=32",
        f"train.max_steps={steps}",
        "train.batch_size=16",
        "train.progress=false",
        "train.eval_every=2",
        "optim.lr=1e-3",
        f"output_dir={tmp / name}",
    ]


def test_own_csv_with_string_labels_trains_exactly_as_sst2(tmp_path, glue_dir, minilm_path):
    """The same SST-2 rows through a CSV with renamed columns and string labels: the same student, the same metrics."""
    from unikd.data import load_glue

    glue = _small_glue(glue_dir, tmp_path)
    files = {}
    for split in ("train", "validation"):
        ds = load_glue("sst2", split, glue)
        ds = ds.map(lambda r: {"review": r["text_a"], "sentiment": ("negative", "positive")[r["label"]]})
        ds.select_columns(["sentiment", "review"]).to_csv(tmp_path / f"{split}.csv", index=False)
        files[split] = str(tmp_path / f"{split}.csv")
    base = save_tiny_model(tiny_bert(2, 32, 4, positions=128), tmp_path / "base", minilm_path)
    common = ["stage=finetune", f"teacher.path={base}", "student.init.strategy=teacher-layers"]
    by_task = run(load_config(None, common + _run_opts(tmp_path, "task") + ["data.task=sst2", f"data.data_dir={glue}"]))
    by_csv = run(
        load_config(
            None,
            common
            + _run_opts(tmp_path, "csv")
            + [
                f"data.files={{train: {files['train']}, validation: {files['validation']}}}",
                "data.columns={text: review, label: sentiment}",
            ],
        )
    )
    assert set(by_task["final"]) == {"accuracy", "score"}
    assert {k: by_csv["final"][k] for k in by_task["final"]} == by_task["final"]
    assert [{k: h[k] for k in ("step", "accuracy")} for h in by_csv["history"]] == [
        {k: h[k] for k in ("step", "accuracy")} for h in by_task["history"]
    ]
    assert by_csv["best_step"] == by_task["best_step"]
    a, b = (
        load_file(tmp_path / "task" / "student" / "model.safetensors"),
        load_file(tmp_path / "csv" / "student" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((tmp_path / "csv" / "student" / "config.json").read_text())
    assert saved["id2label"] == {"0": "negative", "1": "positive"}
    # `unikd export` scores the own-data run on its own dev set, as it scores the GLUE run on SST-2's
    from typer.testing import CliRunner

    from unikd.cli import app

    scored = {}
    for name in ("task", "csv"):
        result = CliRunner().invoke(app, ["export", str(tmp_path / name), "--formats", "hf", "--dev-rows", "48"])
        assert result.exit_code == 0, result.output
        scored[name] = json.loads((tmp_path / name / "export" / "export.json").read_text())["task_metrics"]
    assert scored["csv"]["num_examples"] == scored["task"]["num_examples"] == 48
    assert scored["csv"]["torch"]["accuracy"] == scored["task"]["torch"]["accuracy"]
    # the metric that scores the run (and picks the best checkpoint) is the stated one
    macro = run(
        load_config(
            None,
            common
            + _run_opts(tmp_path, "macro", steps=2)
            + [f"data.files={{train: {files['train']}, validation: {files['validation']}}}"]
            + ["data.columns={text: review, label: sentiment}", "eval.metric=macro_f1"],
        )
    )
    assert macro["final"]["score"] == macro["final"]["macro_f1"]


def _conll_subset(tmp: Path, name: str, sentences: int) -> str:
    src = SHARED / "ner" / "conll2003" / name
    if not src.is_file():
        pytest.skip("shared CoNLL-2003 not found")
    blocks = src.read_text().split("\n\n")[:sentences]
    (tmp / name).write_text("\n\n".join(blocks) + "\n")
    return str(tmp / name)


def test_token_classification_end_to_end(tmp_path, minilm_path):
    """CoNLL-2003 NER: finetune makes the teacher, distill the student (token-level logits KD + hidden), the no-KD
    baseline; entity F1 from seqeval; export and a token-classification pipeline on the exported student."""
    from transformers import AutoModelForTokenClassification, pipeline

    from unikd.config import DataConfig
    from unikd.data import load_task_data, token_collator, tokenize_words
    from unikd.metrics import compute_task_metrics

    files = f"data.files={{train: {_conll_subset(tmp_path, 'train.txt', 300)}, validation: {_conll_subset(tmp_path, 'dev.txt', 80)}}}"
    base = save_tiny_model(tiny_bert(2, 32, 4, positions=128, cls=BertModel), tmp_path / "base", minilm_path)
    opts = [files, "data.max_length=64", "train.batch_size=16", "train.progress=false", "optim.lr=2e-3"]
    teacher = run(
        load_config(
            None,
            opts
            + ["stage=finetune", f"teacher.path={base}", "student.init.strategy=teacher-layers", "train.max_steps=10"]
            + [f"output_dir={tmp_path / 'teacher'}"],
        )
    )
    assert set(teacher["final"]) == {"precision", "recall", "f1", "accuracy", "score"}
    tags = ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
    t_config = json.loads((tmp_path / "teacher" / "student" / "config.json").read_text())
    assert t_config["architectures"] == ["BertForTokenClassification"]
    assert [t_config["id2label"][str(i)] for i in range(9)] == tags
    student = ["student.shape.num_layers=1", "train.max_steps=4", f"teacher.path={tmp_path / 'teacher' / 'student'}"]
    kd = run(
        load_config(
            None,
            opts
            + student
            + ["stage=task", "teacher.allow_weak=true", f"output_dir={tmp_path / 'kd'}"]
            + [
                "plan.terms=[{knowledge: logits, loss: kl, temperature: 2}, {knowledge: hidden, loss: mse, matching: uniform}]"
            ],
        )
    )
    nokd = run(load_config(None, opts + student + ["stage=finetune", f"output_dir={tmp_path / 'nokd'}"]))
    assert kd["final"]["score"] == kd["final"]["f1"] and 0.0 <= nokd["final"]["f1"] <= 1.0
    # the run's F1 is seqeval's on the saved student's predictions at the first sub-tokens
    model = AutoModelForTokenClassification.from_pretrained(tmp_path / "kd" / "student").eval()
    assert [model.config.id2label[i] for i in range(9)] == tags and model.config.num_hidden_layers == 1
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "kd" / "student")
    cfg = DataConfig.model_validate(
        {"files": {"train": str(tmp_path / "train.txt"), "validation": str(tmp_path / "dev.txt")}}
    )
    data = load_task_data(cfg)
    batch = token_collator(tok)(list(tokenize_words(data.validation, tok, 64, data.spec.label_names)))
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    again = compute_task_metrics(data.spec, logits.numpy(), batch["labels"].numpy())
    assert again["f1"] == pytest.approx(kd["final"]["f1"], abs=1e-12)
    assert again["precision"] == pytest.approx(kd["final"]["precision"], abs=1e-12)

    from typer.testing import CliRunner

    from unikd.cli import app

    formats = "hf,onnx" if pytest.importorskip("onnxruntime") else "hf"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "kd"), "--formats", formats])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "kd" / "export" / "export.json").read_text())
    assert report["checks"]["onnx"]["ok"]
    ner = pipeline("token-classification", model=str(tmp_path / "kd" / "export" / "hf"), aggregation_strategy="simple")
    out = ner("John Smith lives in London and works for Reuters .")
    assert isinstance(out, list) and all(e["entity_group"] in {"LOC", "MISC", "ORG", "PER"} for e in out)
    assert ner.model.config.id2label == dict(enumerate(tags))
    bench = CliRunner().invoke(
        app,
        ["bench-latency", f"kd={tmp_path / 'kd'}", "--backends", "torch", "--batch-sizes", "1", "--seq-len", "16"]
        + ["--repeats", "2", "--out", str(tmp_path / "lat")],
    )
    assert bench.exit_code == 0, bench.output
    rows = json.loads((tmp_path / "lat" / "latency.json").read_text())
    assert any(r.get("backend") == "torch" for r in (rows if isinstance(rows, list) else rows["rows"]))


def test_own_csv_transfer_rows_train_exactly_as_sst2s(tmp_path, glue_dir, finetuned_teacher):
    """rest_of_train from a CSV with renamed columns and string labels: the same labelled and transfer rows, so the
    same KD run, as data.task=sst2 on the same rows."""
    from unikd.data import load_glue

    glue = _small_glue(glue_dir, tmp_path)
    files = {}
    for split in ("train", "validation"):
        ds = load_glue("sst2", split, glue)
        ds = ds.map(lambda r: {"review": r["text_a"], "sentiment": ("negative", "positive")[r["label"]]})
        ds.select_columns(["sentiment", "review"]).to_csv(tmp_path / f"{split}.csv", index=False)
        files[split] = str(tmp_path / f"{split}.csv")
    common = ["stage=task", f"teacher.path={finetuned_teacher}", "teacher.allow_weak=true"]
    common += ["student.shape.num_layers=1", "student.init.strategy=teacher-layers"]
    common += ["data.transfer=[{kind: rest_of_train, weight: 2}]", "plan.terms=[{knowledge: logits, loss: kl}]"]
    opts = lambda name: [o for o in _run_opts(tmp_path, name) if "train_limit" not in o] + ["data.train_limit=40"]
    by_task = run(load_config(None, common + opts("task") + ["data.task=sst2", f"data.data_dir={glue}"]))
    by_csv = run(
        load_config(
            None,
            common
            + opts("csv")
            + [
                f"data.files={{train: {files['train']}, validation: {files['validation']}}}",
                "data.columns={text: review, label: sentiment}",
            ],
        )
    )
    assert {k: by_csv["final"][k] for k in by_task["final"]} == by_task["final"]
    a, b = (
        load_file(tmp_path / "task" / "student" / "model.safetensors"),
        load_file(tmp_path / "csv" / "student" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # ... and the transfer rows were trained on: without them the same CSV run ends elsewhere
    plain = [o for o in common if not o.startswith("data.transfer")] + opts("plain")
    run(
        load_config(
            None,
            plain
            + [
                f"data.files={{train: {files['train']}, validation: {files['validation']}}}",
                "data.columns={text: review, label: sentiment}",
            ],
        )
    )
    c = load_file(tmp_path / "plain" / "student" / "model.safetensors")
    assert not all(torch.equal(b[k], c[k]) for k in b)


def test_bad_data_fails_before_any_weights_load(tmp_path, minilm_path):
    """A data error is found before the model loads: the teacher's weights here are corrupt, the data error wins."""
    corrupt = save_tiny_model(tiny_bert(2, 32, 4, positions=128), tmp_path / "corrupt", minilm_path)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n')
    (tmp_path / "dev.jsonl").write_text('{"text": "c", "label": "meh"}\n')
    files = f"data.files={{train: {tmp_path / 'train.jsonl'}, validation: {tmp_path / 'dev.jsonl'}}}"
    common = ["stage=finetune", f"teacher.path={corrupt}", "train.progress=false", f"output_dir={tmp_path / 'x'}"]
    with pytest.raises(ConfigError, match=r"data.columns.label: the validation split has the label 'meh'"):
        run(load_config(None, common + [files]))
    with pytest.raises(ConfigError, match=r"data.columns.text: no column 'body'"):
        run(load_config(None, common + [files.replace("dev.jsonl", "train.jsonl"), "data.columns.text=body"]))
    with pytest.raises(ConfigError, match=r"eval.metric: 'entity_f1' is not a metric"):
        run(load_config(None, common + [files.replace("dev.jsonl", "train.jsonl"), "eval.metric=entity_f1"]))
    with pytest.raises(ConfigError, match=r"data: .*give one labelled source, not data.task and data.files"):
        load_config(None, common + [files, "data.task=sst2"])


def test_regression_and_multilabel_own_data_train_and_score(tmp_path, glue_dir, minilm_path):
    """Floats train a regression head (MSE, Pearson), lists a multi-label head (BCE, sample F1), from JSONL files."""
    from unikd.data import load_glue

    rows = load_glue("sst2", "train", glue_dir, limit=64)
    reg, multi = tmp_path / "reg.jsonl", tmp_path / "multi.jsonl"
    reg.write_text(
        "".join(
            json.dumps({"text": t, "label": y + len(t) / 100}) + "\n" for t, y in zip(rows["text_a"], rows["label"])
        )
    )
    multi.write_text(
        "".join(
            json.dumps({"text": t, "label": (["pos"] if y else ["neg"]) + (["long"] if len(t) > 60 else [])}) + "\n"
            for t, y in zip(rows["text_a"], rows["label"])
        )
    )
    base = save_tiny_model(tiny_bert(2, 32, 4, positions=128, cls=BertModel), tmp_path / "base", minilm_path)
    common = [
        "stage=finetune",
        f"teacher.path={base}",
        "data.max_length=32",
        "train.max_steps=2",
        "train.batch_size=16",
    ]
    common += ["train.progress=false"]
    r = run(
        load_config(None, common + [f"data.files={{train: {reg}, validation: {reg}}}", f"output_dir={tmp_path / 'r'}"])
    )
    assert set(r["final"]) == {"pearson", "spearman", "score"} and r["final"]["score"] == r["final"]["pearson"]
    m = run(
        load_config(
            None, common + [f"data.files={{train: {multi}, validation: {multi}}}", f"output_dir={tmp_path / 'm'}"]
        )
    )
    assert set(m["final"]) == {"sample_f1", "micro_f1", "macro_f1", "exact_match", "score"}
    saved = json.loads((tmp_path / "m" / "student" / "config.json").read_text())
    assert saved["problem_type"] == "multi_label_classification"
    assert saved["id2label"] == {"0": "long", "1": "neg", "2": "pos"}
    saved = json.loads((tmp_path / "r" / "student" / "config.json").read_text())
    assert len(saved["id2label"]) == 1 and saved["problem_type"] == "regression"
