"""Checks a round must pass before any stage runs, shared by the local runner and the operator.

``preflight`` checks every reference a round names in one pass and returns ALL problems (one line
each, naming the round, the field or URI, and the fix); it only reads (nothing is written, no
bucket is created, no service is needed):

* the toolset (``spec.toolset.file`` and its tool schemas, ``.uri``, ``.bfcl`` category/names);
* the datasets (``spec.datasets.seed``, ``.heldout``): a committed dataset at each URI;
* the models (below);
* ``spec.previousRound``: an earlier round of the same file, or a round whose saved status says
  Succeeded (the local runner passes a status lookup; the operator gates on the live object instead);
* the store the round writes to (``spec.storage`` or the configured one): S3 reachable with these
  credentials, a local root writable;
* numbers: a round that synthesizes nothing (``numDialogues: 0``) needs training data from
  ``datasets.seed`` or a previous round, and held-out data from ``datasets.heldout`` or a previous round.

The models a round will load exist where it says. The base model (``spec.baseModel.uri``,
unless the round continues from ``previousRound`` or uses ``builtin:tiny``) and a judge model named
by the round (``spec.judge.model``, when the inference backend loads models itself rather than
asking a hosted endpoint for a model by name). Without this, a missing model surfaces inside the GPU
training Job, after synthesis already ran.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import unquote, urlparse

from looptool.shared import toolsets
from looptool.shared.config import InferenceSettings, LoopToolConfig
from looptool.shared.errors import InputError
from looptool.shared.loop.chain import PreviousGate, round_base_uri, status_uri
from looptool.shared.loop.manifest import LoopRound, LoopRoundSpec
from looptool.shared.loop.state import RoundStatus
from looptool.shared.models import ModelNotFound, Purpose, check_model_uri
from looptool.shared.storage import dataset_exists, split_uri
from looptool.shared.storage.base import StorageError


@dataclass(frozen=True)
class ModelUse:
    field: str  # the manifest field naming the model
    uri: str
    purpose: Purpose


def loads_models_itself(inference: InferenceSettings) -> bool:
    """True when the inference server loads a model URI itself (transformers, in-process vLLM);
    false when it passes a model *name* to an OpenAI-compatible endpoint."""
    return inference.backend == "transformers" or (inference.backend == "vllm" and inference.vllm_mode == "in_process")


def model_uses(spec: LoopRoundSpec, inference: InferenceSettings) -> list[ModelUse]:
    out = []
    bm = spec.baseModel
    if not spec.previousRound and bm is not None and not bm.builtin and not bm.uri.startswith("builtin:"):
        out.append(ModelUse("spec.baseModel.uri", bm.uri, "train"))
    judge = spec.judge
    if judge.enabled and judge.backend == "llm" and loads_models_itself(inference):
        if judge.model:
            out.append(ModelUse("spec.judge.model", judge.model, "serve"))
        out += [ModelUse(f"spec.judge.models[{i}]", m, "serve") for i, m in enumerate(judge.models)]
    return out


def check_round_models(round: LoopRound, config: LoopToolConfig, *, local_paths: bool = True) -> None:
    """ModelNotFound (one line: the round, the field, the URI, the fix) for the first model that is
    not there; StorageError when the store cannot be reached. ``local_paths=False`` (the operator)
    checks s3:// models only: local paths belong to the trainer's and the inference server's
    filesystems, not the operator's."""
    for use in model_uses(round.spec, config.inference):
        try:
            check_model_uri(use.uri, config.storage.s3, purpose=use.purpose, local_paths=local_paths)
        except ModelNotFound as exc:
            raise ModelNotFound(f"LoopRound {round.name}: {use.field}: {exc}", exc.uri) from None


# ----------------------------------------------------------------------------- every reference at once


@dataclass(frozen=True)
class Problem:
    round: str
    field: str  # the manifest field (or config setting) at fault
    message: str  # what is wrong and the fix
    model_uri: str = ""  # set for a missing model (the operator re-checks these: importing the model is the fix)

    def __str__(self) -> str:
        return f"LoopRound {self.round}: {self.field}: {self.message}"


class PreflightFailed(InputError):
    """One or more rounds name something that is not there; ``problems`` lists them all."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        ValueError.__init__(self, "\n".join(str(p) for p in problems))
        self.field, self.problem, self.fix = problems[0].field if problems else "", str(self), ""


StatusLookup = Callable[[str], "RoundStatus | None"]
MAX_TOOL_PROBLEMS = 5  # per toolset; the rest are counted


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _skip_local(uri: str, local_paths: bool) -> bool:
    return not local_paths and not uri.startswith("s3://")


def _toolset_problems(r: LoopRound, config: LoopToolConfig, local_paths: bool) -> list[Problem]:
    ts = r.spec.toolset
    out: list[Problem] = []
    if ts.file:
        if _skip_local(ts.file, local_paths):  # a path in the service image: not the operator's to read
            return out
        src = ts.file
        if src.startswith("file://"):
            src = unquote(urlparse(src).path)
        try:
            report = toolsets.import_source(src)
        except (InputError, StorageError, OSError, ValueError) as exc:
            return [Problem(r.name, "spec.toolset.file", f"{_first_line(exc)}; point it at a JSON file of tool definitions")]
        bad = [e for e in report.errors if e.code in ("TOOL_SCHEMA", "DUPLICATE_TOOL")]
        for e in bad[:MAX_TOOL_PROBLEMS]:
            out.append(Problem(r.name, "spec.toolset.file", f"{ts.file}: {e.message}"))
        if len(bad) > MAX_TOOL_PROBLEMS:
            out.append(Problem(r.name, "spec.toolset.file", f"{ts.file}: {len(bad) - MAX_TOOL_PROBLEMS} more invalid tools; "
                               f"`looptool tools validate {ts.file}` lists them all"))
        if not report.tools and not bad:
            out.append(Problem(r.name, "spec.toolset.file", f"{ts.file}: no tool definitions found; add OpenAI function/tool definitions"))
        return out
    field = "spec.toolset.uri" if ts.uri else "spec.toolset.bfcl"
    if _skip_local(ts.uri, local_paths):  # the operator: BFCL data and local files live in the service image
        return out
    try:
        tools = toolsets.resolve_toolset(ts, config.storage.s3)
    except (InputError, StorageError, OSError, ValueError, RuntimeError) as exc:  # RuntimeError: bfcl-eval missing
        msg = _first_line(exc)
        if ts.uri:
            msg += "; import one with `looptool tools import SOURCE --out URI` or fix the URI"
        return [Problem(r.name, field, msg)]
    if ts.bfcl is not None and ts.bfcl.names:
        missing = sorted(set(ts.bfcl.names) - {t.name for t in tools})
        if missing:
            out.append(Problem(r.name, "spec.toolset.bfcl.names", f"{', '.join(missing)} not in BFCL category "
                               f"{ts.bfcl.category!r}; fix the names or the category"))
    return out


def _dataset_problems(r: LoopRound, config: LoopToolConfig, local_paths: bool) -> list[Problem]:
    out = []
    for name in ("seed", "heldout"):
        uri = getattr(r.spec.datasets, name)
        if not uri or _skip_local(uri, local_paths):
            continue
        field = f"spec.datasets.{name}"
        try:
            store, key = split_uri(uri, config.storage.s3)
            found = dataset_exists(store, key.rstrip("/"))
        except StorageError as exc:
            out.append(Problem(r.name, field, _first_line(exc)))
            continue
        if not found:
            out.append(Problem(r.name, field, f"no committed dataset at {uri}; fix the URI or write the dataset there first "
                               "(`looptool data` commands)"))
    return out


def _model_problems(r: LoopRound, config: LoopToolConfig, local_paths: bool) -> list[Problem]:
    out = []
    for use in model_uses(r.spec, config.inference):
        try:
            check_model_uri(use.uri, config.storage.s3, purpose=use.purpose, local_paths=local_paths)
        except ModelNotFound as exc:
            out.append(Problem(r.name, use.field, str(exc), model_uri=exc.uri))
        except StorageError as exc:
            out.append(Problem(r.name, use.field, f"cannot check the model: {_first_line(exc)}"))
    return out


def _previous_problems(r: LoopRound, earlier: Iterable[str], lookup: StatusLookup | None, base_uri: str) -> list[Problem]:
    prev = r.spec.previousRound
    if not prev:
        return []
    if prev == r.name:
        return [Problem(r.name, "spec.previousRound", "a round cannot continue from itself; name the round before it")]
    if prev in earlier or lookup is None:
        return []
    try:
        gate = PreviousGate(prev, lookup(prev))
    except (StorageError, ValueError) as exc:
        return [Problem(r.name, "spec.previousRound", f"cannot read the status of round {prev!r}: {_first_line(exc)}")]
    if gate.open:
        return []
    where = status_uri(base_uri, prev)
    if gate.status is None:
        return [Problem(r.name, "spec.previousRound", f"round {prev!r} is neither an earlier round in this file nor in storage "
                        f"(no {where}); add it before this round, run it first, or fix the name")]
    return [Problem(r.name, "spec.previousRound", f"round {prev!r} is {gate.status.phase.value} in storage ({where}), not "
                    "Succeeded; run it to the end first")]


def _numbers_problems(r: LoopRound) -> list[Problem]:
    s = r.spec
    if s.synthesis.numDialogues >= 1:
        return []
    out = []
    if not s.previousRound and not s.datasets.seed:
        out.append(Problem(r.name, "spec.synthesis.numDialogues", "0 dialogues and no spec.datasets.seed or spec.previousRound: "
                           "the round would train on nothing; set numDialogues >= 1 or name a seed dataset"))
    if s.eval.heldout and not s.previousRound and not s.datasets.heldout:
        out.append(Problem(r.name, "spec.synthesis.numDialogues", "0 dialogues and no spec.datasets.heldout or spec.previousRound: "
                           "nothing to hold out for eval.heldout; set numDialogues >= 1, name a held-out dataset, "
                           "or set eval.heldout: false"))
    return out


def _store_problems(r: LoopRound, base_uri: str, config: LoopToolConfig, local_paths: bool) -> list[Problem]:
    field = "spec.storage" if r.spec.storage else "storage"
    try:
        store, key = split_uri(base_uri, config.storage.s3)
    except StorageError as exc:
        return [Problem(r.name, field, _first_line(exc))]
    if store.scheme == "s3":
        try:  # reachability and credentials; a missing bucket is fine (the first write creates it)
            store.exists(status_uri(key, r.name).lstrip("/"))
        except StorageError as exc:
            return [Problem(r.name, field, _first_line(exc))]
        return []
    if not local_paths:
        return []
    path = Path("/", key)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        return [Problem(r.name, field, f"{existing} is a file, not a directory; point the store at a directory")]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [Problem(r.name, field, f"{existing} is not writable; choose a writable storage root (--storage-root)")]
    return []


def preflight(
    rounds: list[LoopRound],
    config: LoopToolConfig,
    *,
    statuses: StatusLookup | None = None,
    skip: Callable[[LoopRound], bool] = lambda r: False,
    local_paths: bool = True,
) -> list[Problem]:
    """Every problem of every round (in file order), reading only. ``statuses``: the saved status of a
    round by name, for previousRound outside the file (None: not checked, the operator's gate waits).
    ``skip``: rounds that will not run (already Succeeded with this spec) — only their chain is checked.
    ``local_paths=False`` (the operator): plain paths and file:// URIs are not checked."""
    problems: list[Problem] = []
    checked_stores: set[str] = set()
    names: list[str] = []
    for r in rounds:
        base = round_base_uri(r, config)
        problems += _previous_problems(r, names, statuses, base)
        names.append(r.name)
        if skip(r):
            continue
        if base not in checked_stores:
            checked_stores.add(base)
            problems += _store_problems(r, base, config, local_paths)
        problems += _numbers_problems(r)
        problems += _toolset_problems(r, config, local_paths)
        problems += _dataset_problems(r, config, local_paths)
        problems += _model_problems(r, config, local_paths)
    return problems


def check_round(round: LoopRound, config: LoopToolConfig, *, local_paths: bool = False) -> None:
    """The operator's check before it creates anything for a round: ``ModelNotFound`` when missing
    models are the only problems (as before: importing the model is the fix), else
    ``PreflightFailed`` listing every problem."""
    problems = preflight([round], config, local_paths=local_paths)
    if problems and all(p.model_uri for p in problems):
        raise ModelNotFound("\n".join(str(p) for p in problems), problems[0].model_uri)
    if problems:
        raise PreflightFailed(problems)
