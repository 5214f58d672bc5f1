"""The one way a `crema-jax` subcommand declares its flags, prints its help and reports errors.

    COMMAND = command.Command("probe", __doc__, usage="--checkpoint=DIR --root=DIR --workdir=DIR")
    COMMAND.string("checkpoint", None, "workdir or step dir to read", required=True)

    @COMMAND.main
    def main(args):                # args.checkpoint, ..., args.positional
        ...

Each command owns a private absl FlagValues built afresh for every parse, so
- `crema-jax COMMAND --help` lists that command's flags (help text and default) and nothing else:
  not absl's, not JAX's, not another command's;
- running several commands in one process (tests, notebooks) never mixes their flags or values.

Errors end in ONE line on stderr, `crema-jax COMMAND: error: ...`: a bad flag (exit 2; a config
value a --config.FIELD= override set and validation refused is one too), and an input or setting
the command cannot use (exit 1: CommandError, ValueError, and missing or existing files, a
missing optional dependency). `--verbose` adds the traceback. Anything else is
a bug and keeps its traceback.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import re
import sys
import textwrap
import traceback
import types
import urllib.parse
from typing import Any, Callable, Sequence

from absl import flags, logging
from ml_collections import config_flags

PROGRAM = "crema-jax"
LOG_LEVELS = ("debug", "info", "warning", "error")
# Errors that mean "this input or setting cannot be used", reported in one line (ImportError:
# an optional dependency such as torch is missing; its message says how to install it; OSError:
# a file that cannot be read or written, a read-only folder, a full disk, a failed checkpoint
# save: the message names the path).
USER_ERRORS = (ValueError, OSError, ImportError)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, `timeout`, `kill`), raised as a Ctrl-C is (main.py installs the
    handler): the command's `finally` blocks then run (temporary files removed, the workdir lock
    released, workers stopped) before main's exit with 143 and its last line, `terminated`.
    Killed outright, an export had left its full-size temporary file behind, and a pretrain its
    lock. A pretrain's train loop handles SIGTERM itself while it runs (train/hooks.py: save the
    step), then the command raises this: the run is unfinished, whatever it saved."""


class CommandError(Exception):
    """An input or setting the command cannot use; the message says what was expected."""


class FlagValueError(CommandError):
    """A flag's value the command cannot use, found after parsing (a list's item, two flags
    that exclude each other): a usage error, exit 2 as absl's own flag errors."""


@dataclasses.dataclass
class _Flag:
    kind: str
    name: str
    default: Any
    help: str
    required: bool = False
    extra: dict = dataclasses.field(default_factory=dict)


class Command:
    """A subcommand: its flags, its help and its entry point."""

    def __init__(self, name: str, doc: str, *, usage: str = "", positional: str = ""):
        self.name = name
        self.summary = (doc or "").strip().split("\n\n")[0].strip()
        self.usage = usage
        self.positional = positional  # e.g. "RECORD..." ("" = no positional arguments)
        self._flags: list[_Flag] = []
        self._main: Callable | None = None
        self._add("enum", "log_level", "warning", "Log messages at and above this level.",
                  values=list(LOG_LEVELS))
        self._add("bool", "verbose", False, "On an error, print its traceback too (and log at "
                  "info level).")

    # ------------------------------------------------------------------------- declaring flags
    def _add(self, kind, name, default, help_text, *, required=False, **extra):
        if any(f.name == name for f in self._flags):
            raise ValueError(f"{self.name}: flag --{name} declared twice")
        self._flags.append(_Flag(kind, name, default, help_text, required, extra))

    def string(self, name, default, help_text, *, required=False):
        self._add("string", name, default, help_text, required=required)

    def integer(self, name, default, help_text, *, lower_bound=None, upper_bound=None):
        self._add("integer", name, default, help_text, lower_bound=lower_bound,
                  upper_bound=upper_bound)

    def float(self, name, default, help_text, *, valid=None):
        """A float flag; with `valid` (a runtime/ranges.Range: `.ok(value)`, `.text`) a value
        it refuses (NaN included) is a usage error naming the flag."""
        self._add("float", name, default, help_text, valid=valid)

    def boolean(self, name, default, help_text):
        self._add("bool", name, default, help_text)

    def enum(self, name, default, values, help_text, *, required=False):
        self._add("enum", name, default, help_text, required=required, values=list(values))

    def list(self, name, default, help_text, *, required=False):
        self._add("list", name, default, help_text, required=required)

    def multi_string(self, name, default, help_text):
        self._add("multi_string", name, default, help_text)

    def config_file(self, name, help_text, *, required=True):
        """An ml_collections config file flag: --NAME=FILE plus --NAME.SECTION.FIELD=VALUE."""
        self._add("config", name, None, help_text, required=required)

    def main(self, fn: Callable) -> Callable:
        """Decorator: fn(args) is the command's body; returns it unchanged."""
        self._main = fn
        return fn

    # ------------------------------------------------------------------------- parsing
    def _flag_values(self, argv: Sequence[str]) -> flags.FlagValues:
        fv = flags.FlagValues()
        definers = {"string": flags.DEFINE_string, "float": flags.DEFINE_float,
                    "bool": flags.DEFINE_boolean, "list": flags.DEFINE_list,
                    "multi_string": flags.DEFINE_multi_string}
        for f in self._flags:
            if f.kind == "config":
                config_flags.DEFINE_config_file(f.name, None, f.help, flag_values=fv,
                                                lock_config=True, sys_argv=list(argv))
            elif f.kind == "enum":
                flags.DEFINE_enum(f.name, f.default, f.extra["values"], f.help, flag_values=fv)
            elif f.kind == "integer":
                flags.DEFINE_integer(f.name, f.default, f.help, flag_values=fv,
                                     lower_bound=f.extra["lower_bound"],
                                     upper_bound=f.extra["upper_bound"])
            else:
                definers[f.kind](f.name, f.default, f.help, flag_values=fv)
            if f.kind == "float" and f.extra["valid"] is not None:
                flags.register_validator(f.name, f.extra["valid"].ok,
                                         message=f.extra["valid"].text, flag_values=fv)
        return fv

    def parse(self, argv: Sequence[str]) -> types.SimpleNamespace:
        """argv WITHOUT the program and command names -> a namespace of flag values plus
        `.positional`. Raises flags.Error (a usage error) with a one-line message."""
        repeated = self._repeated(argv)
        if repeated:
            raise flags.Error(repeated)
        argv = [f"{PROGRAM} {self.name}", *argv]
        fv = self._flag_values(argv)
        try:
            positional = fv(argv)[1:]
        except flags.IllegalFlagValueError as err:  # absl's words for a boolean had a tuple
            found = re.match(r"flag --([\w.]+)=(.*?): \('Non-boolean argument", str(err))
            if not found:
                raise
            name, value = found.groups()
            raise flags.Error(f"flag --{name}={value}: expected true or false (or --{name} / "
                              f"--no{name})") from None
        except (AttributeError, KeyError, TypeError) as err:  # a config override that misses
            configs = [f.name for f in self._flags if f.kind == "config"]
            raise flags.Error(_config_override_problem(argv, configs) or str(err)) from None
        if positional and not self.positional:
            raise flags.Error(f"unexpected arguments {positional}; flags are --name=value")
        values = {f.name: fv[f.name].value for f in self._flags}
        missing = [f"--{f.name}" for f in self._flags if f.required and (
            values[f.name] is None or values[f.name] == "" or values[f.name] == [])]
        if missing:
            raise flags.Error(f"{' and '.join(missing)} required (usage: {self.usage_line()})")
        for f in self._flags:
            if f.kind in ("string", "list", "multi_string") and values[f.name]:
                values[f.name] = _paths(f"--{f.name}", values[f.name])
        positional = _paths(self.positional or "argument", positional)
        return types.SimpleNamespace(**values, positional=positional)

    def _repeated(self, argv: Sequence[str]) -> str | None:
        """A flag that takes one value given more than once (absl keeps the last one silently:
        `--models=a --models=b` dropped a); None when there is none."""
        kinds = {f.name: f.kind for f in self._flags}
        counts: dict[str, int] = {}
        for arg in argv:
            if arg == "--":
                break
            if not arg.startswith("-"):
                continue
            name = arg.lstrip("-").split("=", 1)[0]
            if name not in kinds and name.startswith("no") and kinds.get(name[2:]) == "bool":
                name = name[2:]
            if kinds.get(name) not in (None, "multi_string", "config"):
                counts[name] = counts.get(name, 0) + 1
        name = next((n for n, k in counts.items() if k > 1), None)
        if name is None:
            return None
        listed = " (one comma-separated list)" if kinds[name] == "list" else ""
        return f"--{name} given {counts[name]} times; give it once{listed}"

    # ------------------------------------------------------------------------- help
    def usage_line(self) -> str:
        return " ".join(p for p in (PROGRAM, self.name, self.usage or "[--flag=value ...]",
                                    self.positional) if p)

    def help(self) -> str:
        lines = [f"usage: {self.usage_line()}", "", self.summary, "", "flags:"]
        for f in self._flags:
            if f.kind == "config":
                head = f"  --{f.name}=FILE, --{f.name}.SECTION.FIELD=VALUE"
            elif f.kind == "bool":
                head = f"  --[no]{f.name} (default: {str(f.default).lower()})"
            else:
                head = f"  --{f.name}=" + _default_text(f)
            if f.required:
                head += " (required)"
            lines.append(head)
            text = f.help + (f" One of: {', '.join(f.extra['values'])}."
                             if f.kind == "enum" and f.name != "log_level" else "")
            lines += textwrap.wrap(text, 96, initial_indent=" " * 6, subsequent_indent=" " * 6)
        return "\n".join(lines)

    # ------------------------------------------------------------------------- running
    def run(self, argv: Sequence[str]):
        """Parse argv (without program and command names) and run the command's body.

        --help prints the help and returns 0. Errors print one line and raise SystemExit."""
        argv = list(argv)
        if any(a in ("-h", "--help", "-help", "--helpshort", "--helpfull") for a in argv):
            print(self.help())
            return 0
        problem = self._config_file_problem(argv)
        if problem:
            self._fail(problem, code=1)
        try:
            args = self.parse(argv)
        except flags.Error as err:
            self._fail(str(err).splitlines()[0], code=2)
        _set_log_level("info" if args.verbose and args.log_level == "warning"
                       else args.log_level)
        if not args.verbose:
            _ignore_closed_event_loop_callbacks()
        try:
            return self._main(args)
        except BrokenPipeError:  # the reader of stdout left: crema_jax.main ends quietly
            raise
        except (CommandError, *USER_ERRORS) as err:
            if args.verbose or args.log_level == "debug":
                traceback.print_exc()
            flag = self._overriding_flag(err, argv)
            if flag:
                self._fail(f"flag --{flag}{_one_line(err).removeprefix('config')}", code=2)
            override = self._related_override(err, argv)
            if override:  # another field's override the refusal rests on: a usage error too
                self._fail(f"flag {override}: {_one_line(err)}", code=2)
            self._fail(_one_line(err), code=2 if isinstance(err, FlagValueError) else 1)

    def _overriding_flag(self, err: BaseException, argv) -> str | None:
        """The config flag whose --NAME.FIELD=VALUE override set the field `err` refuses
        (config_checks.ConfigValueError's `config_field`), else None."""
        field = getattr(err, "config_field", None)
        for f in self._flags:
            if field and f.kind == "config" and any(
                    a.startswith(f"--{f.name}.{field}=") for a in argv):
                return f.name
        return None

    def _related_override(self, err: BaseException, argv) -> str | None:
        """The first --NAME.FIELD=VALUE argument overriding one of the fields `err` also rests
        on (config_checks.ConfigValueError's `related`), else None."""
        for field in getattr(err, "related", ()):
            for f in self._flags:
                arg = next((a for a in argv if f.kind == "config"
                            and a.startswith(f"--{f.name}.{field}=")), None)
                if arg:
                    return arg
        return None

    def _config_file_problem(self, argv) -> str | None:
        """One line naming a --CONFIG=FILE that gives no config (missing, empty, a syntax
        error, raising, returning something else), before ml_collections' own loader would
        end in a traceback or a misleading "--config required"."""
        for f in self._flags:
            path = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{f.name}=")),
                        None)
            if f.kind != "config" or path is None:
                continue
            from crema_jax import config as config_lib  # here: --help answers without JAX

            try:
                config_lib.load_config_file(path)
            except ValueError as err:
                return f"--{f.name}: {_one_line(err)}"
        return None

    def _fail(self, message: str, *, code: int):
        sys.stdout.flush()
        print(f"{PROGRAM} {self.name}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(code)


def _paths(flag: str, value):
    """A path flag's value (or each of a list's) with file:// URLs made the local paths they
    name; memory:// refused: it lives inside one process, and what a command wrote there would
    be gone when it ends (or, read, is empty)."""
    if isinstance(value, (list, tuple)):
        return type(value)(_paths(flag, v) for v in value)
    if not isinstance(value, str):
        return value
    if value.startswith("memory://"):
        raise flags.Error(f"{flag}={value}: memory:// lives inside one process and is gone when "
                          "the command ends; use a local path or a store's URL (gs://, s3://)")
    scheme, sep, rest = value.partition("://")
    if (sep and scheme != "file" and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme)
            and not rest.strip("/")):
        raise flags.Error(f"{flag}={value}: the URL names no bucket or path; expected "  # it
                          f"{scheme}://BUCKET/PATH")  # had read as the local folder 'gs:'
    if value.startswith("file://"):
        parts = urllib.parse.urlparse(value)
        if parts.netloc not in ("", "localhost"):
            raise flags.Error(f"{flag}={value}: a file:// URL on host {parts.netloc!r}; expected "
                              "file:///PATH or a local path")
        return urllib.parse.unquote(parts.path)
    return value


def _config_override_problem(argv, config_flags: list[str]) -> str | None:
    """A one-line account of the first --NAME.a.b=v override naming no field of the config
    file, with the nearest field names."""
    from crema_jax import config as config_lib  # here: --help answers without importing JAX

    for name in config_flags:
        path = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)
        if path is None:
            continue
        try:
            config = config_lib.load_config_file(path)
        except Exception:  # noqa: BLE001 - the flag's own parser reports a bad file
            return None
        for arg in argv:
            if not arg.startswith(f"--{name}."):
                continue
            keys = arg.split("=", 1)[0][len(name) + 3:].split(".")
            node, where = config, name
            for key in keys:
                if not hasattr(node, "keys") or key not in node:
                    fields = list(node.keys()) if hasattr(node, "keys") else []
                    near = difflib.get_close_matches(key, fields, n=3)
                    hint = (f"did you mean {', '.join(f'{where}.{n}' for n in near)}?" if near
                            else f"its fields: {', '.join(sorted(fields))}" if fields else
                            f"{where} is a value, not a section")
                    return f"{arg.split('=', 1)[0]}: {where} has no field {key!r}; {hint}"
                node, where = node[key], f"{where}.{key}"
    return None


def _default_text(f: _Flag) -> str:
    if f.default is None:
        return "VALUE" if f.kind != "integer" else "N"
    if f.kind in ("list", "multi_string"):
        return ",".join(str(v) for v in f.default) if f.default else "''"
    return str(f.default) if f.default != "" else "''"


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return " ".join(text.split())


def _ignore_closed_event_loop_callbacks() -> None:
    """After a failed checkpoint read or save, TensorStore's late callbacks find the event loop
    Orbax used already closed and each prints an "Event loop is closed" traceback, and asyncio
    logs the step's other failed reads ("Task exception was never retrieved"), often after the
    command's one-line error: the same failure, already reported. They are dropped for this
    process from now on (the callbacks outlive the command); `--verbose` keeps them."""
    global _closed_loop_hook_installed
    if _closed_loop_hook_installed:
        return
    _closed_loop_hook_installed = True
    from crema_jax.runtime import checkpoint_errors  # here: --help answers without it

    checkpoint_errors.quiet_unretrieved_task_errors()
    previous = sys.unraisablehook

    def unraisablehook(unraisable):
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            previous(unraisable)
    sys.unraisablehook = unraisablehook


_closed_loop_hook_installed = False


def _set_log_level(level: str) -> None:
    logging.set_verbosity({"debug": logging.DEBUG, "info": logging.INFO,
                           "warning": logging.WARNING, "error": logging.ERROR}[level])


def parse_key_values(items: Sequence[str], *, flag: str) -> dict:
    """["key=value", ...] (a repeatable flag) -> {key: value}: a VALUE that reads as JSON (numbers,
    true/false, lists) becomes that value, True/False any case a bool, anything else a string."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--{flag}={item!r}: expected KEY=VALUE")
        if value.lower() in ("true", "false"):
            options[key] = value.lower() == "true"
            continue
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options
