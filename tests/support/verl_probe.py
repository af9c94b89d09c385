"""Runs INSIDE the verl side environment (tests/support/verl_env.py): asks verl's own code, answers in JSON.

Only the standard library, hydra-core and omegaconf are importable there; ``import verl`` would pull
numpy/torch, so verl's files are located with ``find_spec`` (which does not run ``verl/__init__``)
and read from the installed wheel.

    python verl_probe.py compose   {"overrides": [...], "keys": [...]}
    python verl_probe.py merger    {"argv": [...]}        (argv after ``python -m verl.model_merger``)
    python verl_probe.py reward    {}                     (how verl's reward manager calls compute_score)
    python verl_probe.py entry     {}                     (the modules we launch, and their config)
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from typing import Any

VERL = Path(importlib.util.find_spec("verl").submodule_search_locations[0])
CONFIG_DIR = VERL / "trainer" / "config"
_MISSING = object()


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=False)
    return node


def _select(cfg: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=_MISSING, throw_on_resolution_failure=False)


def _describe(cfg: Any, key: str) -> dict[str, Any] | None:
    """{value, type} of a key; None when verl's config has no such key; type "missing" for a
    mandatory value (``???``) that the user must give."""
    from omegaconf import OmegaConf

    parent, _, leaf = key.rpartition(".")
    node = _select(cfg, parent) if parent else cfg
    if node is not _MISSING and OmegaConf.is_dict(node) and leaf in node.keys() and OmegaConf.is_missing(node, leaf):
        return {"value": None, "type": "missing"}
    v = _select(cfg, key)
    return None if v is _MISSING else {"value": _plain(v), "type": type(_plain(v)).__name__}


def _compose(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def compose(payload: dict[str, Any]) -> dict[str, Any]:
    """verl's ppo_trainer.yaml composed as ``main_ppo`` composes it (struct mode: an unknown key is an
    error), with and without the overrides; the keys' values and their types in both."""
    from omegaconf import OmegaConf

    keys = payload.get("keys", [])
    base = _compose([])
    out: dict[str, Any] = {"struct": bool(OmegaConf.is_struct(base)), "defaults": {}, "values": {}}
    for k in keys:
        out["defaults"][k] = _describe(base, k)
    try:
        cfg = _compose(payload["overrides"])
    except Exception as exc:  # hydra's ConfigCompositionException / OverrideParseException
        out["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0] + (f" ({exc.__cause__})" if exc.__cause__ else "")
        return out
    for k in keys:
        out["values"][k] = _describe(cfg, k)
    try:
        OmegaConf.to_container(cfg, resolve=True)  # every ${...} in the config still resolves
        out["resolves"] = True
    except Exception as exc:
        out["resolves"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return out


def merger(payload: dict[str, Any]) -> dict[str, Any]:
    """Parse argv with verl's model-merger parser. ``base_model_merger`` imports torch and transformers
    at the top, so its argument parser and config builder are taken from the installed source (with
    the module's standard-library imports) and run as verl wrote them."""
    path = VERL / "model_merger" / "base_model_merger.py"
    tree = ast.parse(path.read_text())
    wanted = {"parse_args", "ModelMergerConfig", "_default_hf_model_config_path", "generate_config_from_args"}
    body: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if (getattr(node, "level", 0) or 0) == 0 and all(m.split(".")[0] in sys.stdlib_module_names for m in mods):
                body.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in wanted:
            body.append(node)
    found = {n.name for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    if found != wanted:
        return {"error": f"{path} no longer defines {sorted(wanted - found)}"}
    import types

    module = types.ModuleType("verl_model_merger_args")  # dataclasses look their module up
    sys.modules[module.__name__] = module
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), module.__dict__)
    ns = module.__dict__
    sys.argv = ["verl.model_merger", *payload["argv"]]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = ns["parse_args"]()
            cfg = ns["generate_config_from_args"](args)
    except SystemExit as exc:
        return {"error": f"argparse exit {exc.code}: {err.getvalue().strip().splitlines()[-1]}"}
    import dataclasses

    return {"config": dataclasses.asdict(cfg), "main": (VERL / "model_merger" / "__main__.py").is_file()}


def reward(_: dict[str, Any]) -> dict[str, Any]:
    """How verl's default ("naive") reward manager calls the custom reward function: the keyword
    names, the names of the extra keyword dicts it splats in (and their keys), the keys it adds to
    extra_info, and what it reads from the result."""
    path = VERL / "experimental" / "reward_loop" / "reward_manager" / "naive.py"
    tree = ast.parse(path.read_text())
    calls, splats, extra_info_keys, dict_keys, result_keys = [], [], set(), {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "compute_score":
            calls.append(sorted(k.arg for k in node.keywords if k.arg))
            splats += [ast.unparse(k.value) for k in node.keywords if k.arg is None]
            if node.args:
                return {"error": f"{path}: compute_score is called with positional arguments"}
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Subscript) and ast.unparse(t.value) == "extra_info" and isinstance(t.slice, ast.Constant):
                    extra_info_keys.add(t.slice.value)
                if isinstance(t, ast.Name):
                    for d in ast.walk(node.value):
                        if isinstance(d, ast.Dict) and d.keys and all(isinstance(k, ast.Constant) for k in d.keys):
                            dict_keys.setdefault(t.id, set()).update(k.value for k in d.keys)
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "result" and isinstance(node.slice, ast.Constant):
            result_keys.add(node.slice.value)
    if not calls:
        return {"error": f"{path}: no compute_score call found"}
    return {
        "file": str(path.relative_to(VERL.parent)),
        "keywords": calls,
        "splats": {s: sorted(dict_keys.get(s, ())) for s in splats},
        "extra_info_keys": sorted(extra_info_keys),
        "result_keys": sorted(result_keys),
    }


def entry(_: dict[str, Any]) -> dict[str, Any]:
    """The trainer entrypoint's Hydra config name and the custom reward function's config path."""
    main_ppo = VERL / "trainer" / "main_ppo.py"
    tree = ast.parse(main_ppo.read_text())
    hydra_main = None
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            for d in node.decorator_list:
                if isinstance(d, ast.Call) and ast.unparse(d.func) == "hydra.main":
                    hydra_main = {k.arg: ast.literal_eval(k.value) for k in d.keywords if k.arg in ("config_path", "config_name")}
    reward_src = (VERL / "trainer" / "ppo" / "reward.py").read_text()
    return {
        "hydra_main": hydra_main,
        "reads_reward_custom_reward_function": 'config.reward.get("custom_reward_function")' in reward_src,
    }


if __name__ == "__main__":
    cmd = sys.argv[1]
    data = json.loads(sys.stdin.read() or "{}")
    print(json.dumps({"compose": compose, "merger": merger, "reward": reward, "entry": entry}[cmd](data)))
