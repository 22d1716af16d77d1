"""Run configuration: the schema with its defaults, loading config files, overrides, validation.

Configs are Python files with a ``get_config()`` returning an ``ml_collections.ConfigDict`` (as in
the flax examples and big_vision); :func:`default_config` is the complete schema, every config
file starts from it and changes a few fields. Command-line overrides are
``--config.<field>=<value>``; fields that do not exist are an error, except inside the open
mappings (``rewards``, ``reward_paths``, ``method_params``) whose keys depend on the names chosen.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import importlib.machinery
import importlib.util
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import ml_collections
from ml_collections import config_dict

from jaxalign.errors import JaxalignError, check_known
from jaxalign.prompt_datasets import is_dataset_source, read_dataset_prompts

OPEN_MAPPINGS = ("rewards", "reward_paths", "method_params")
MAX_POPSIZE = 65536  # images per generation; beyond it one generation's latents alone outgrow any device


def default_config() -> ml_collections.ConfigDict:
    """Every field a run understands, with its default."""
    c = ml_collections.ConfigDict()
    # What to align.
    c.prompts = ["a red circle on a blue background"]
    # .txt (one prompt per line), .csv with a "prompt" column, or hf:NAME[:SPLIT][#COLUMN]: a Hugging Face dataset
    # in the local datasets cache (split "train" and column "prompt" unless named); replaces prompts
    c.prompt_file = ""
    c.negative_prompt = ""
    c.rewards = ml_collections.ConfigDict({"color_fraction:red": 1.0})  # reward name (or name:argument) -> weight
    c.reward_paths = ml_collections.ConfigDict()  # learned reward -> local weights path / cached repo id, or its options
    c.maximize = True  # False: the weighted total is negated once, so fitness (and target_reward) is higher-is-better
    # Model and sampler.
    c.model = "embedded"  # "embedded", a local diffusers-format directory, or a Hub repo id in the local HF cache
    c.model_family = "auto"  # auto, or a name in jaxalign.models.FAMILIES (sd, sdxl); a config for one family refuses another family's weights
    c.dtype = "float32"  # float32 | bfloat16
    c.scheduler = "auto"  # auto (the model's own scheduler_config.json) | ddim | pndm | dpmsolver++ | lcm | flow_euler
    c.num_inference_steps = 10
    c.height = 32  # the embedded model's size; 512 for SD 1.x
    c.width = 32
    c.guidance_scale = 7.5
    c.true_cfg_scale = 1.0  # Flux: > 1 adds true classifier-free guidance (a negative-prompt pass) to the embedded guidance
    c.attention = "fused"  # UNet attention: fused (jax.nn.dot_product_attention; cuDNN on GPUs) | standard (diffusers' Flax einsum-softmax) | chunked (memory linear in tokens)
    c.denoise_batch = 0  # evaluate the network on this many latents at a time (0: the whole population in one call)
    c.decode_batch = 0  # decode this many images at a time (0: the whole population in one call)
    # Search.
    c.method = "evolution"  # evolution | random | zero_order | dno | dno_hybrid | svdd | dsearch | das | fk_steering
    # The method's options, defaults where unset (README lists them), e.g. for evolution: strategy (CoSyNE or any
    # evosax algorithm), strategy_params (constructor options and evosax Params fields), space (noise | additive_noise
    # | rotation | svd_rotation | multi_axis_rotation | multi_axis_svd_rotation), space_params (mean_scale, bound)
    c.method_params = ml_collections.ConfigDict()
    c.popsize = 16  # images per generation (CoSyNE mode="reference": its archive, 1.5x the images)
    c.steps = 10  # generations after generation 0 (the baseline, and the first archive of population-based strategies)
    c.max_seconds = 0.0  # stop after this much search time; 0 means no limit
    c.target_reward = config_dict.placeholder(float)  # stop once best_fitness (higher is better) reaches it; None: no target
    c.seed = 0  # centre latents and search keys
    # Scale.
    c.batch_prompts = False  # search all prompts together in one vmapped compiled step
    c.shard_population = True  # shard the population over all local devices when they divide popsize
    c.shard_params = False  # split the model's (and learned rewards') weights over all local devices instead (for models larger than one device)
    # Long runs.
    c.checkpoint_every = 5  # save the search state every K generations (0: never); `--resume` continues
    c.compilation_cache_dir = ""  # persistent XLA compilation cache shared by runs; "" disables it
    # Experiment trackers beside metrics.jsonl, comma-separated: tensorboard | wandb (offline without network); "" none
    c.loggers = ""
    return c


def load_config(path: str | Path, overrides: Sequence[str] = (), schema: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """Run ``get_config()`` of a config file, check its fields against ``schema`` and apply overrides.
    ``file.py:ARGUMENT`` calls ``get_config(ARGUMENT)``, as ml_collections' config flags do (one file for a family
    of runs, e.g. ``configs/das_sd15.py:clip``)."""
    path, arguments = Path(path), ()
    if not path.is_file() and ":" in path.name:
        name, _, argument = path.name.rpartition(":")
        path, arguments = path.with_name(name), (argument,)
    if not path.is_file():
        raise JaxalignError(f"config file not found: {path}")
    with _folder_as_package(path.resolve().parent) as prefix:
        spec = importlib.util.spec_from_file_location(f"{prefix}{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as error:  # a broken config file (or one that exits) is bad input, on one line
            raise JaxalignError(f"cannot load config {path}: {type(error).__name__}: {error}") from None
        if not hasattr(module, "get_config"):
            raise JaxalignError(f"config {path} has no get_config() function")
        try:
            config = module.get_config(*arguments)
        except (Exception, SystemExit) as error:  # noqa: BLE001 - a config whose get_config() fails or exits is bad input too
            raise JaxalignError(f"config {path}: get_config() raised {type(error).__name__}: {error}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise JaxalignError(f"config {path}: get_config() must return an ml_collections.ConfigDict (start from default_config()), got {type(config).__name__}")
    check_fields(config, schema)
    for override in overrides:
        apply_override(config, override)
    return config


@contextlib.contextmanager
def _folder_as_package(folder: Path):
    """While a config file runs, its folder is the package ``<folder name>``, so config files import each
    other (``from configs import sd15``) without ``sys.path`` edits (where a folder beside it named like a
    dependency would shadow it); the import system is given back as it was afterwards. Yields the
    module-name prefix for the config file."""
    name = folder.name
    if not name.isidentifier():
        yield "_jaxalign_config_"
        return
    ours = lambda module: module == name or module.startswith(f"{name}.")  # noqa: E731
    saved = {module: sys.modules.pop(module) for module in [m for m in sys.modules if ours(m)]}
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    sys.modules[name] = importlib.util.module_from_spec(spec)
    try:
        yield f"{name}."
    finally:
        for module in [m for m in sys.modules if ours(m)]:
            del sys.modules[module]
        sys.modules.update(saved)


def check_fields(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict | None = None) -> None:
    """Every field known, none missing, each of the schema's type (ints are accepted for floats)."""
    schema = default_config() if schema is None else schema
    check_known("config field(s)", config.keys(), schema.keys())
    missing = sorted(set(schema.keys()) - set(config.keys()))
    if missing:
        raise JaxalignError(f"config lacks field(s) {', '.join(missing)}; start from default_config() and change fields")
    for name in schema.keys():
        expected, value = schema[name], config[name]
        if expected is None or isinstance(expected, ml_collections.ConfigDict) or name in OPEN_MAPPINGS:
            continue  # placeholders (target_reward) may be None
        ok = isinstance(value, type(expected)) and not (isinstance(value, bool) and not isinstance(expected, bool))
        ok = ok or (isinstance(expected, float) and isinstance(value, int) and not isinstance(value, bool))
        ok = ok or (isinstance(expected, list) and isinstance(value, (list, tuple)))
        if not ok:
            raise JaxalignError(f"config field {name!r} must be {type(expected).__name__}, got {type(value).__name__} {value!r}")


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Apply one ``--config.a.b=value`` (or ``config.a.b=value``) override in place."""
    text = override.removeprefix("--")
    if not text.startswith("config.") or "=" not in text:
        raise JaxalignError(f"bad override {override!r}; expected --config.<field>=<value>")
    dotted, raw = text[len("config.") :].split("=", 1)
    *parents, leaf = dotted.split(".")
    node = config
    for i, name in enumerate(parents):
        if name not in node and i >= 1 and parents[0] in OPEN_MAPPINGS:  # an open mapping's nested options (method_params.strategy_params)
            with node.unlocked():
                node[name] = ml_collections.ConfigDict()
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            raise JaxalignError(f"config field {'.'.join(parents[: i + 1])!r} does not exist")
        node = node[name]
    is_open = len(parents) >= 1 and parents[0] in OPEN_MAPPINGS
    if leaf not in node:
        if not is_open:
            raise JaxalignError(f"config field {dotted!r} does not exist; valid: {', '.join(sorted(node.keys()))}")
        with node.unlocked():
            node[leaf] = _literal(raw)
        return
    current = node[leaf]
    placeholder = current is None
    if placeholder:  # a typed placeholder such as target_reward
        kind = node.get_type(leaf)
        current = kind() if kind in (int, float, str, bool) else None
    if raw.lower() == "none" and not placeholder:
        raise JaxalignError(f"config field {dotted!r} cannot be None; it expects {type(current).__name__}")
    node[leaf] = None if raw.lower() == "none" else _parse_like(current, raw, dotted)


def _literal(raw: str):
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _parse_like(current, raw: str, name: str):
    try:
        if isinstance(current, bool):
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, list):
            value = _literal(raw)
            return list(value) if isinstance(value, (list, tuple)) else [raw]
        if isinstance(current, ml_collections.ConfigDict):
            value = _literal(raw)
            if not isinstance(value, dict):
                raise ValueError
            return ml_collections.ConfigDict(value)
        if current is None:
            return _literal(raw)
        return raw
    except ValueError:
        raise JaxalignError(f"config field {name!r} expects {type(current).__name__}, got {raw!r}") from None


def read_prompts(config: ml_collections.ConfigDict) -> list[str]:
    """The prompts to align: from ``prompt_file`` (a file, or ``hf:`` a cached dataset) when set, else ``prompts``."""
    if is_dataset_source(config.prompt_file):
        prompts = [p.strip() for p in read_dataset_prompts(config.prompt_file)]
    elif config.prompt_file:
        path = Path(config.prompt_file)
        if path.is_dir():
            raise JaxalignError(f"prompt_file {path} is a directory; give a .txt or .csv file")
        if not path.is_file():
            raise JaxalignError(f"prompt_file not found: {path}")
        try:
            if path.suffix.lower() == ".csv":
                with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets save a byte-order mark
                    reader = csv.DictReader(handle)
                    if "prompt" not in (reader.fieldnames or []):
                        raise JaxalignError(f"prompt_file {path} has no 'prompt' column; columns: {', '.join(reader.fieldnames or [])}")
                    prompts = [(row["prompt"] or "").strip() for row in reader]  # a short row has no cell (None)
            else:
                prompts = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        except UnicodeDecodeError:
            raise JaxalignError(f"prompt_file {path} is not UTF-8 text") from None
    else:
        prompts = [config.prompts] if isinstance(config.prompts, str) else list(config.prompts)
    prompts = [p for p in prompts if p and p.strip()]
    if not prompts:
        raise JaxalignError("the prompt list is empty; set prompts or prompt_file")
    return prompts


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks that need no model: numbers in range and known names."""
    from jaxalign.methods import METHODS
    from jaxalign.methods.base import method_options
    from jaxalign.models import ATTENTION, FAMILIES
    from jaxalign.rewards import is_learned, parse_reward
    from jaxalign.schedulers import AUTO, SCHEDULERS
    from jaxalign.trackers import parse_loggers

    check_fields(config)
    if not 2 <= config.popsize <= MAX_POPSIZE:
        raise JaxalignError(f"popsize must be in [2, {MAX_POPSIZE}], got {config.popsize}")
    if not 0 <= config.seed < 2**63:
        raise JaxalignError(f"seed must be in [0, 2**63), got {config.seed}")
    if config.steps < 1:
        raise JaxalignError(f"steps must be at least 1, got {config.steps}")
    if config.num_inference_steps < 1:
        raise JaxalignError(f"num_inference_steps must be at least 1, got {config.num_inference_steps}")
    if config.height < 8 or config.width < 8:
        raise JaxalignError(f"height and width must be at least 8, got {config.height}x{config.width}")
    if config.checkpoint_every < 0:
        raise JaxalignError(f"checkpoint_every must be >= 0 (0 disables checkpoints), got {config.checkpoint_every}")
    if config.max_seconds < 0:
        raise JaxalignError(f"max_seconds must be >= 0 (0 means no limit), got {config.max_seconds}")
    if config.target_reward is not None and not math.isfinite(config.target_reward):
        raise JaxalignError(f"target_reward must be finite or None, got {config.target_reward}")
    if not math.isfinite(config.guidance_scale):
        raise JaxalignError(f"guidance_scale must be finite, got {config.guidance_scale}")
    if not (math.isfinite(config.true_cfg_scale) and config.true_cfg_scale >= 1):
        raise JaxalignError(f"true_cfg_scale must be a finite number >= 1 (1: off), got {config.true_cfg_scale}")
    if config.decode_batch < 0:
        raise JaxalignError(f"decode_batch must be >= 0 (0 decodes the whole population at once), got {config.decode_batch}")
    if config.denoise_batch < 0 or (config.denoise_batch and config.popsize % config.denoise_batch):
        raise JaxalignError(f"denoise_batch must be 0 (the whole population at once) or divide popsize={config.popsize}, got {config.denoise_batch}")
    if config.dtype not in ("float32", "bfloat16"):
        raise JaxalignError(f"unknown dtype {config.dtype!r}; valid: bfloat16, float32")
    ATTENTION[config.attention]
    method = METHODS[config.method]
    method_options(config.method, plain(config.method_params))
    if method.stochastic_steps and config.num_inference_steps < 2:
        raise JaxalignError(f"method {config.method!r} needs num_inference_steps >= 2, got {config.num_inference_steps}")
    if config.scheduler != AUTO:
        SCHEDULERS[config.scheduler]
    if config.model_family != "auto":
        FAMILIES[config.model_family]
    if not config.rewards:
        raise JaxalignError("rewards is empty; give at least one reward name with its weight")
    for mapping in ("rewards", "reward_paths"):
        odd = [key for key in config[mapping] if not isinstance(key, str)]
        if odd:
            raise JaxalignError(f"{mapping} keys must be reward names (strings), got {odd[0]!r}")
    unused = sorted(set(config.reward_paths) - {name.partition(":")[0] for name in config.rewards})
    if unused:
        raise JaxalignError(f"reward_paths for {', '.join(unused)}, which is not among rewards ({', '.join(config.rewards)})")
    for name, weight in config.rewards.items():
        if not is_learned(name):  # learned rewards load (and check) their weights when the job is built
            parse_reward(name)
        if not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise JaxalignError(f"reward weight for {name!r} must be a finite number, got {weight!r}")
    parse_loggers(config.loggers)
    read_prompts(config)


def plain(value):
    """A config value as plain Python (ConfigDicts become dicts), for comparisons and messages."""
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
