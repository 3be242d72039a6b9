"""The one runner: train, eval and sample any method declared with experiments.contract.Method.

It owns what every method shares, so that every method behaves the same:
- nothing is written to the workdir before the config was validated, the data loaded and the
  checkpoint (if any) restored; a workdir of another method is refused;
- a rerun whose config differs from the workdir's config.json prints the changed fields and
  appends them to config_changes.jsonl; a rerun with nothing left to train says so and writes
  nothing;
- eval restores the latest checkpoint (or `--step`), reads the trained amount from it, writes
  eval.json (the latest) and keeps evals/eval_<tag>_step<S>.json for every split and source;
- exit statuses: 0 done, 1 non-finite loss, 2 a user mistake, 128+signal when interrupted.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import sys
from typing import Any

import jax
from ml_collections import ConfigDict

from deepgen.core import metrics, train_loop
from deepgen.core.errors import ConfigError, UserError
from experiments.contract import Method

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_dict(config: ConfigDict) -> dict[str, Any]:
    """The config as plain JSON values (what config.json holds)."""
    return json.loads(config.to_json_best_effort())


def config_changes(config: ConfigDict, workdir: str) -> list[dict[str, Any]] | None:
    """Fields that differ from workdir/config.json ([] if none), or None when there is none."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        try:
            old = _flatten(json.load(f))
        except json.JSONDecodeError:
            return None
    new = _flatten(config_dict(config))
    return [
        {"field": key, "old": old.get(key), "new": new.get(key)}
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _show_changes(changes: list[dict[str, Any]]) -> str:
    return "; ".join(f"{c['field']}: {c['old']!r} -> {c['new']!r}" for c in changes)


def _check_same_method(config: ConfigDict, workdir: str) -> None:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        try:
            old = json.load(f)
        except json.JSONDecodeError:
            return
    if old.get("method") not in (None, config.method):
        raise UserError(
            f"{workdir} holds a {old.get('method')!r} run ({old.get('variant')!r}), not "
            f"{config.method!r}: use a new --workdir"
        )


def _write_json(path: str, value: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _unit_label(unit: train_loop.Unit) -> str:
    return "step" if unit.name == "steps" else unit.name


def source_slug(data_source: str) -> str:
    """A short file-name-safe name of a data source: its first words and a hash of the whole."""
    words = re.sub(r"[^a-z0-9]+", "-", data_source.lower()).strip("-")
    digest = hashlib.sha1(data_source.encode()).hexdigest()[:6]
    return f"{words[:20].rstrip('-')}-{digest}" if words else digest


def check_units(config: ConfigDict, unit: train_loop.Unit) -> None:
    """train.num_steps, train.log_every and ckpt.every count whole train steps of `unit`."""
    for field in ("train.num_steps", "train.log_every", "ckpt.every"):
        section, name = field.split(".")
        value = int(config[section][name])
        if value <= 0 or value % unit.per_step:
            raise ConfigError(
                f"config.{field}={value} is not allowed: a positive multiple of {unit.per_step} "
                f"({unit.name} per train step)"
            )


def run(
    method_cls: type[Method],
    config: ConfigDict,
    workdir: str,
    *,
    mode: str,
    step: int | None = None,
    quick: bool = False,
) -> int:
    """Train, evaluate or sample; every user-fixable problem is raised before workdir is touched."""
    _check_same_method(config, workdir)
    if mode == "train":
        if step is not None:
            raise UserError("--step picks a checkpoint for --mode=eval or sample, not for train")
        return _train(method_cls, config, workdir)
    if mode == "eval":
        return _eval(method_cls, config, workdir, step=step, quick=quick)
    return _sample(method_cls, config, workdir, step=step)


def _train(method_cls: type[Method], config: ConfigDict, workdir: str) -> int:
    method = method_cls(config, mode="train")
    unit = method.unit()
    check_units(config, unit)
    changes = config_changes(config, workdir)
    built = train_loop.build_state(
        config, workdir, method.init_state, method.mesh, shardings=method.state_shardings()
    )
    start = built[1]
    try:
        method.check_resume(workdir, built)
    except BaseException:
        built[3].close()
        raise
    primary = jax.process_index() == 0
    if start >= int(config.train.num_steps):
        built[3].close()
        print(
            f"nothing to train: the latest checkpoint in {workdir}/checkpoints is at "
            f"{_unit_label(unit)} "
            f"{start}, at or past train.num_steps={config.train.num_steps}; raise "
            "train.num_steps to train on, or use --mode=eval / --mode=sample",
            flush=True,
        )
        return 0
    if primary:
        os.makedirs(workdir, exist_ok=True)
        if changes:
            print(f"config changed since the last run in {workdir}: {_show_changes(changes)}")
            record = {
                "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "resumed_at": start,
                "changes": changes,
            }
            with open(os.path.join(workdir, CHANGES_FILE), "a") as f:
                f.write(json.dumps(record) + "\n")
        with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    for line in method.describe():
        log.info("%s", line)
    try:
        method.train(workdir, built)
    except train_loop.TrainingInterrupted as stop:
        print(
            f"interrupted at {_unit_label(unit)} {stop.step}: checkpoint saved in "
            f"{workdir}/checkpoints; "
            "run the same command to resume",
            flush=True,
        )
        return 128 + int(stop.signum)
    except train_loop.NonFiniteLossError as error:
        print(f"error: {error}", flush=True)
        return 1
    outputs = method.after_train(workdir) if primary else {}
    if primary:
        shown = "".join(f", {what} {path}" for what, path in outputs.items())
        print(
            f"training done: checkpoints in {workdir}/checkpoints, metrics in "
            f"{workdir}/metrics.jsonl{shown}",
            flush=True,
        )
    return 0


def _eval(
    method_cls: type[Method], config: ConfigDict, workdir: str, *, step: int | None, quick: bool
) -> int:
    method = method_cls(config, mode="eval")
    unit = method.unit()
    state, at = method.restore_at(workdir, step)
    report = method.evaluate(state, step=at, quick=quick, progress=metrics.TaskProgress)
    tag = f"{method.eval_tag()}_{source_slug(str(report.get('data_source', '')))}"
    tag += "_quick" if quick else ""
    changes = config_changes(config, workdir)
    summary = {
        **report,
        "step": at,
        f"{unit.name}_trained": at,
        "quick": quick,
        "tag": tag,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if changes:
        summary["config_changes"] = changes
    if jax.process_index() == 0:
        kept = os.path.join(workdir, "evals", f"eval_{tag}_step{at}.json")
        _write_json(kept, summary)
        _write_json(os.path.join(workdir, "eval.json"), summary)
        scalars = {
            k: float(v)
            for k, v in report.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        with metrics.MetricWriter(workdir, enabled=True) as writer:
            writer.write(at, scalars, split=f"eval_{tag}")
        print(method.format_eval(summary), flush=True)
        print(f"eval written to {workdir}/eval.json and {kept}", flush=True)
    return 0


def _sample(method_cls: type[Method], config: ConfigDict, workdir: str, *, step: int | None) -> int:
    method = method_cls(config, mode="sample")
    state, at = method.restore_at(workdir, step)
    out_dir = os.path.join(workdir, "samples")
    written = method.sample(state, out_dir, step=at, progress=metrics.TaskProgress)
    if jax.process_index() == 0:
        for what, path in written.items():
            print(f"{what}: {path}", flush=True)
    sys.stdout.flush()
    return 0
