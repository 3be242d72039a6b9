"""The one entry point: python -m experiments.main --config=FILE:VARIANT --workdir=DIR [--mode=...].

`--config.a.b=value` overrides any field. Mistakes a user can fix (config variant, field, type,
value, missing data) end with one line on stderr and exit status 2, before anything is written
to the workdir.
"""

import importlib
import logging
import os
import sys

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from deepgen.core import distributed
from deepgen.core.errors import UserError

MODES = ("train", "eval", "sample")
METHODS = ("bfn", "noisynet", "snap")


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
    if config.get("method") not in METHODS:
        raise UserError(f"config.method={config.get('method')!r} is not one of {METHODS}")
    return flag_values


def run(argv: list[str]) -> int:
    """Parse argv, then train, evaluate or sample; returns the process exit status."""
    try:
        flag_values = _parse(argv)
        config = flag_values.config
        experiment = importlib.import_module(f"experiments.{config.method}.train")
        experiment.validate(config)
        if distributed.distributed_requested(flag_values.distributed):
            distributed.initialize(
                coordinator_address=flag_values.coordinator_address,
                num_processes=flag_values.num_processes,
                process_id=flag_values.process_id,
            )
        workdir = os.path.abspath(flag_values.workdir)
        return experiment.run(config, workdir, mode=flag_values.mode) or 0
    except UserError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return error.exit_status


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
    status = run(sys.argv)
    if status == UserError.exit_status:
        # Skip interpreter teardown: background threads of a failed checkpoint restore would
        # otherwise print tracebacks after the one-line error.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    main()
