"""What the command lines share: flags parsed into one-line errors, configs by name, a short console, Ctrl-C.

Every bad input ends in one line on stderr, `error: FIELD=VALUE is not allowed:
WHAT IS ALLOWED`, and exit status 2, before JAX compiles anything. A config is a
path to a config file, or the name of one in icl_theory/configs (`--config=classify`);
a relative path that does not exist from the current folder is also looked up
from the repository root, so the README's commands work from any folder.
"""

from __future__ import annotations

import difflib
import glob
import importlib.util
import logging as pylogging
import os
import re
import sys
from typing import Any, Callable, NoReturn, Sequence

from absl import flags, logging

from icl_theory.engine import progress
from icl_theory.engine.validation import ConfigError

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def fail(message: str) -> NoReturn:
  """Prints one line on stderr and exits with status 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def only_flags(argv: Sequence[str]) -> None:
  """Fails (one line) on positional arguments left after absl parsed the flags."""
  if len(argv) > 1:
    fail(f"arguments={' '.join(argv[1:])!r} are not allowed: only --flags (see --helpshort)")


def check_subset(name: str, values: Sequence[str], allowed: Sequence[str]) -> None:
  """Fails (one line) unless every one of a list flag's `values` is in `allowed`."""
  unknown = sorted(set(values) - set(allowed))
  if unknown:
    fail(f"{name}={','.join(unknown)!r} is not allowed: a subset of {','.join(allowed)}")


def config_names() -> list[str]:
  """The configs that can be given by name (`--config=NAME`)."""
  return sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(CONFIGS_DIR, "*.py"))
                if not os.path.basename(p).startswith("_"))


def resolve_config_path(value: str) -> str:
  """A config flag's value (a name or a path, optionally with ':ARGS') as a path that exists; ConfigError if none."""
  path, sep, args = value.partition(":")
  candidates = [path]
  if not os.path.isabs(path):
    candidates.append(os.path.join(_REPO_ROOT, path))
    if os.sep not in path and not path.endswith(".py"):
      candidates.append(os.path.join(CONFIGS_DIR, f"{path}.py"))
  for candidate in candidates:
    if os.path.isfile(candidate):
      return os.path.abspath(candidate) + sep + args
  raise ConfigError(f"config={value!r} is not allowed: no such file; a path to a config file or one of the "
                    f"names {', '.join(config_names())}")


def _load_config(path: str) -> Any:
  """The ConfigDict a config file's get_config() returns (to check overrides before absl parses them)."""
  path, _, args = path.partition(":")
  spec = importlib.util.spec_from_file_location("_icl_theory_cli_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(args) if args else module.get_config()


def _fields(config: Any, prefix: str = "") -> dict[str, Any]:
  """Every field path of a ConfigDict ('base.steps', ...) and its value."""
  out = {}
  for key, value in config.items():
    out[prefix + key] = value
    if hasattr(value, "items"):
      out.update(_fields(value, prefix + key + "."))
  return out


_OVERRIDE = re.compile(r"^--?config\.([^=]+)(?:=(.*))?$")


def _check_overrides(argv: Sequence[str], config: Any) -> None:
  """Every --config.FIELD=VALUE names a field of the config (ConfigError with a did-you-mean otherwise)."""
  fields = _fields(config)
  for arg in argv:
    match = _OVERRIDE.match(arg)
    if not match:
      continue
    field, value = match.group(1), match.group(2)
    if field not in fields:
      close = difflib.get_close_matches(field, list(fields), n=1)
      hint = f"did you mean {close[0]!r}? " if close else ""
      top = sorted(k for k in fields if "." not in k)
      raise ConfigError(f"{field}={value!r} is not allowed: not a field of the config; {hint}"
                        f"fields: {', '.join(top)}")


def _flag_value_error(error: Exception) -> str:
  """absl's message for a value of the wrong type, as one line naming the field."""
  text = " ".join(str(error).split())
  match = re.search(r"--config\.([\w.]+)=(\S*): (.*)", text)
  if match:
    field, value, why = match.groups()
    return f"{field}={value!r} is not allowed: {why}"
  return text


def prepare_argv(default_config: str, argv: list[str] | None = None) -> None:
  """Before the config flag is defined: config names become paths, and bad --config.FIELD overrides fail.

  `ml_collections.config_flags` reads the command line's overrides as soon as the
  flag is defined (at import of the entry point) and raises a chained traceback for
  an unknown field; so the entry points call this first, on `sys.argv` (changed in place).
  """
  argv = sys.argv if argv is None else argv
  for i in range(len(argv) - 1):  # '--config NAME' as '--config=NAME'
    if argv[i] in ("--config", "-config"):
      argv[i:i + 2] = [f"--config={argv[i + 1]}"]
      break
  config_path = default_config
  try:
    for i, arg in enumerate(argv):
      match = re.match(r"^(--?config)=(.*)$", arg)
      if match:
        config_path = resolve_config_path(match.group(2))
        argv[i] = f"{match.group(1)}={config_path}"
    _check_overrides(argv[1:], _load_config(config_path))
  except ConfigError as error:
    fail(str(error))


def flags_parser(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every failure as one line and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.IllegalFlagValueError as error:
    fail(_flag_value_error(error))
  except flags.Error as error:
    fail(" ".join(str(error).split()))
  except (OSError, AttributeError, KeyError, TypeError, ValueError) as error:
    fail(" ".join(str(error).split()))


def setup_console() -> None:
  """Short progress lines (time and message), and nothing below INFO from the libraries."""
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  handler.setFormatter(pylogging.Formatter(progress.FORMAT, progress.DATE_FORMAT))
  progress.quiet_libraries(handler)
  # JAX's notice about a missing TPU runtime reads like an error on a CPU or GPU machine.
  pylogging.getLogger("jax._src.xla_bridge").setLevel(pylogging.ERROR)


def latest_checkpoint(workdir: str | None) -> int | None:
  """The step of the newest checkpoint under `workdir` (a run's or any group's of a sweep), or None."""
  if not workdir:
    return None
  steps = [int(name) for folder in glob.glob(os.path.join(workdir, "**", "checkpoints"), recursive=True)
           for name in os.listdir(folder) if name.isdigit()]
  return max(steps) if steps else None


def interrupted(workdir: str | None) -> NoReturn:
  """Ctrl-C: one line saying what is kept and how to resume; exit status 130."""
  step = latest_checkpoint(workdir)
  kept = f"the checkpoint at step {step} is kept in {workdir}" if step is not None else "no checkpoint was written yet"
  print(f"interrupted: {kept}; rerun the same command to resume", file=sys.stderr)
  sys.exit(EXIT_INTERRUPTED)


def run(main: Callable[[list[str]], None]) -> NoReturn:
  """absl's app.run with our flag parser and console (after `prepare_argv`); then the process ends at once.

  Its exit status is main's (0, or what it passed to sys.exit). The interpreter's own
  teardown is skipped: with JAX's backend loaded it takes about 0.25 s of every command
  (an A/B of whole processes), and by then everything the command writes is written,
  atomically, and closed. An exception main does not handle still ends with its traceback.
  """
  from absl import app  # the entry points' own dependency: library code never starts an app
  setup_console()
  try:
    app.run(main, flags_parser=flags_parser)
    code: Any = 0
  except SystemExit as done:
    code = done.code
  if isinstance(code, str):  # sys.exit("message") prints the message and exits 1
    print(code, file=sys.stderr)
    code = 1
  jax = sys.modules.get("jax")
  if jax is not None and jax.distributed.is_initialized():  # the processes' shutdown barrier, as at a normal exit
    jax.distributed.shutdown()
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0 if code is None else int(code))
