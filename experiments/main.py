"""The one entry point: python -m experiments.main --config=FILE:VARIANT --workdir=DIR [--mode=...].

`--config.a.b=value` overrides any field. Mistakes a user can fix (config variant, field, type,
value, missing data) end with one line on stderr and exit status 2, before anything is written
to the workdir. The method is found from `config.method`: experiments/<method>/method.py
declares it (experiments/contract.py), and experiments/runner.py runs every mode.
"""

import importlib
import importlib.util
import logging
import os
import pkgutil
import re
import sys

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from deepgen.core import distributed
from deepgen.core.errors import UserError

MODES = ("train", "eval", "sample")
EXPERIMENTS_DIR = os.path.dirname(os.path.abspath(__file__))

USAGE = """usage: python -m experiments.main --config=FILE:VARIANT --workdir=DIR [flags]
            [--config.FIELD=VALUE ...]
       python -m experiments.main --list=FILE            list the variants of a config file
       python -m experiments.main --list=FILE:VARIANT    list a variant's fields and defaults

Train (resuming from DIR/checkpoints), evaluate (writes DIR/eval.json) or sample (DIR/samples).
Exit status: 0 done, 1 non-finite loss, 2 a mistake in the command line, config or data
(one line on stderr, nothing written), 130/143 interrupted (a checkpoint is saved first).
"""


def available_methods() -> tuple[str, ...]:
    """The methods that declare themselves in experiments/<name>/method.py."""
    return tuple(
        sorted(
            info.name
            for info in pkgutil.iter_modules([EXPERIMENTS_DIR])
            if info.ispkg and os.path.exists(os.path.join(EXPERIMENTS_DIR, info.name, "method.py"))
        )
    )


def load_method(name: str):
    """The Method class of experiments/<name>/method.py."""
    methods = available_methods()
    if name not in methods:
        raise UserError(f"config.method={name!r} is not one of {methods}")
    return importlib.import_module(f"experiments.{name}.method").METHOD


def _define_flags(flag_values: flags.FlagValues, argv: list[str]) -> None:
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config file and variant, e.g. configs/bfn.py:mnist.",
        flag_values=flag_values,
        lock_config=True,
        sys_argv=argv,
    )
    flags.DEFINE_string(
        "workdir", None, "Directory for checkpoints, metrics and outputs.", flag_values=flag_values
    )
    flags.DEFINE_enum("mode", "train", MODES, "What to do.", flag_values=flag_values)
    flags.DEFINE_integer(
        "step",
        None,
        "eval/sample: the checkpoint step to use (default: the latest).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "quick",
        False,
        "eval: a fast, rougher estimate (fewer repeats and examples); kept apart in "
        "evals/eval_<split>_quick_step<S>.json.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "distributed",
        False,
        "Call jax.distributed.initialize (also: DEEPGEN_DISTRIBUTED=1).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0 (multi-host).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "num_processes", None, "Number of processes (multi-host).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "process_id", None, "This process's index (multi-host).", flag_values=flag_values
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    # absl puts a (message, value) tuple inside some messages: show it as "message: value".
    text = re.sub(r"\('([^']*)', '([^']*)'\)", r"\1: \2", text)
    return text or type(error).__name__


def _config_argument(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _override_paths(argv: list[str]) -> list[str]:
    paths = []
    for arg in argv:
        if arg.startswith("--config.") and "=" in arg:
            paths.append(arg[len("--config.") :].split("=", 1)[0])
        elif arg.startswith("--config.") or arg.startswith("--noconfig."):
            paths.append(arg.split("config.", 1)[1])
    return paths


def _check_fields(config, paths: list[str]) -> None:
    """Name the first override that is not a field of the config, with the fields allowed there."""
    for path in paths:
        node, walked = config, []
        for part in path.split("."):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                where = "config." + ".".join(walked) if walked else "config"
                raise UserError(f"unknown config field {path!r}: {where} has fields {sorted(keys)}")
            node, walked = node[part], [*walked, part]


def _parse(argv: list[str]) -> flags.FlagValues:
    spec = _config_argument(argv)
    if spec is not None:
        config_file = spec.split(":", 1)[0]
        if not os.path.isfile(config_file):
            raise UserError(f"config file {config_file!r} not found (run from the repository root)")
        overrides = _override_paths(argv)
        if overrides:
            base_argv = [a for a in argv if not a.startswith(("--config.", "--noconfig."))]
            _check_fields(_parse_flags(base_argv).config, overrides)
    return _parse_flags(argv)


def _parse_flags(argv: list[str]) -> flags.FlagValues:
    flag_values = flags.FlagValues()
    _define_flags(flag_values, argv)
    try:
        flag_values(argv)
        config = flag_values.config
    except UserError:
        raise
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError) as error:
        cause = error.__cause__ or error.__context__
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"bad command line: {_one_line(error)}") from None
    if config is None:
        raise UserError("--config is required, e.g. --config=configs/bfn.py:mnist_cpu")
    if not flag_values.workdir:
        raise UserError("--workdir is required: the directory for checkpoints and outputs")
    return flag_values


def _help(argv: list[str]) -> str:
    flag_values = flags.FlagValues()
    _define_flags(flag_values, [argv[0]])
    return USAGE + "\nflags:\n" + flag_values.get_help(include_special_flags=False)


def _load_config_file(path: str):
    if not os.path.isfile(path):
        raise UserError(f"config file {path!r} not found (run from the repository root)")
    spec = importlib.util.spec_from_file_location("_listed_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def list_config(spec: str) -> str:
    """The variants of a config file, or one variant's fields with their defaults."""
    path, _, variant = spec.partition(":")
    module = _load_config_file(path)
    variants = getattr(module, "VARIANTS", {})
    if not variant:
        lines = [f"{path}: {len(variants)} variants (use --list={path}:VARIANT for fields)"]
        doc = (module.__doc__ or "").strip()
        lines += [f"  {name}" for name in variants] + (["", doc] if doc else [])
        return "\n".join(lines)
    config = module.get_config(variant)
    flat = _flat_fields(config.to_dict())
    width = max(len(k) for k in flat)
    return "\n".join(f"  --config.{k:<{width}} = {v!r}" for k, v in flat.items())


def _flat_fields(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat_fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run(argv: list[str]) -> int:
    """Parse argv, then train, evaluate or sample; returns the process exit status."""
    from experiments import runner

    try:
        if any(a in ("--help", "-h", "--helpfull", "-?") for a in argv[1:]):
            print(_help(argv))
            return 0
        listed = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--list=")]
        if listed:
            print(list_config(listed[0]))
            return 0
        flag_values = _parse(argv)
        config = flag_values.config
        method = load_method(config.get("method")).for_config(config)
        if distributed.distributed_requested(flag_values.distributed):  # before any JAX call
            distributed.initialize(
                coordinator_address=flag_values.coordinator_address,
                num_processes=flag_values.num_processes,
                process_id=flag_values.process_id,
            )
        method.validate(config)
        workdir = os.path.abspath(flag_values.workdir)
        return runner.run(
            method,
            config,
            workdir,
            mode=flag_values.mode,
            step=flag_values.step,
            quick=flag_values.quick,
        )
    except UserError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130


def main() -> None:
    """Console entry point."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    absl_logging.set_verbosity(absl_logging.WARNING)
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        status = run(sys.argv)
    except KeyboardInterrupt:  # outside run's own handler (during interpreter start-up or exit)
        print("interrupted (Ctrl-C)", file=sys.stderr)
        status = 130
    if status in (UserError.exit_status, 130):
        # Skip interpreter teardown: background threads of a failed checkpoint restore would
        # otherwise print tracebacks after the one-line error.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    main()
