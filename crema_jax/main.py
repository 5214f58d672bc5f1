"""The `crema-jax` command: `crema-jax COMMAND [--flag=value ...]`, one module per subcommand
(crema_jax/cli/). Only the chosen command's module is imported."""
import importlib
import os
import signal
import sys
import threading
import traceback

from absl import flags

from crema_jax.cli import COMMANDS, command
from crema_jax.runtime import host_malloc, platforms


def usage() -> str:
    lines = ["usage: crema-jax COMMAND [--flag=value ...]", "", "commands:"]
    width = max(len(name) for name in COMMANDS)
    for name, (_, help_text, _) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {help_text}")
    lines += ["", "`crema-jax COMMAND --help` lists a command's flags."]
    return "\n".join(lines)


def run(argv=None) -> None:
    """Entry point of the console script (argv None: this process's arguments)."""
    from_process = argv is None
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in COMMANDS:
        print(f"crema-jax: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module_name, _, hugetlb = COMMANDS[name]
    if from_process:  # before JAX starts (and into a re-executed process's environment)
        platforms.use_tpu_only_when_present()
    if from_process and hugetlb:  # before anything allocates: see runtime/host_malloc.py
        host_malloc.reexec_with_hugetlb()
    if not flags.FLAGS.is_parsed():  # absl logging and Grain workers expect parsed flags
        flags.FLAGS([argv[0]])
    if from_process:
        _terminate_as_interrupt()
    module = importlib.import_module(module_name)
    verbose = "--verbose" in argv or "--verbose=true" in argv
    try:
        sys.exit(module.COMMAND.run(argv[2:]) or 0)
    except BrokenPipeError:  # `crema-jax ... | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # 128 + SIGPIPE, as a shell reports it
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: one line, no traceback (`--verbose`
        if not from_process and verbose:  # keeps it)
            raise
        if verbose:
            traceback.print_exc()
        terminated = isinstance(err, command.Terminated)
        # After a progress line; 128 + the signal's number, as a shell reports it.
        print(f"\ncrema-jax {name}: {'terminated' if terminated else 'interrupted'}",
              file=sys.stderr)
        code = 128 + (signal.SIGTERM if terminated else signal.SIGINT)
        if from_process and _jax_backend_started():
            _exit_now(code)
        sys.exit(code)


def _terminate_as_interrupt() -> None:
    main_pid = os.getpid()

    def handle(signum, frame):
        if os.getpid() != main_pid:  # a forked child: end as SIGTERM ends it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise command.Terminated()
    signal.signal(signal.SIGTERM, handle)
    previous = sys.unraisablehook

    def send_again(unraisable):
        # An interrupt raised while Python ran a callback that cannot raise (a garbage
        # collector callback such as XLA's, a __del__) is printed and dropped, and the command
        # went on as if never signalled: a SIGTERM during a pretrain's start-up ended it with
        # exit 0 after all its steps. The signal is sent again a moment later, from another
        # thread (sent from here, its handler would run inside this hook and be dropped too),
        # so the handler runs at the main thread's next step after the callback.
        value = unraisable.exc_value
        if isinstance(value, KeyboardInterrupt) and os.getpid() == main_pid:
            number = signal.SIGTERM if isinstance(value, command.Terminated) else signal.SIGINT
            later = threading.Timer(0.01, os.kill, (main_pid, number))
            later.daemon = True
            later.start()
        else:
            previous(unraisable)
    sys.unraisablehook = send_again


def _jax_backend_started() -> bool:
    """Whether this process started a JAX backend (XLA's threads: see _exit_now); a command
    that never did (prepare) leaves through the interpreter's usual shutdown."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()


def _exit_now(code: int) -> None:
    """Ends the process without the interpreter's shutdown. A Ctrl-C that interrupted XLA's
    compiler left it in a state that crashed that shutdown (a segmentation fault, exit 139,
    in most Ctrl-Cs during a pretrain's compile). The command's own `finally` blocks have run
    by now (saves waited for, locks released, input workers closed); worker processes left
    are stopped, and multiprocessing's own exit handler run (it releases the semaphores of a
    worker pool, which its resource tracker had otherwise reported as leaked, with a
    traceback, under the one line), output streams flushed."""
    import multiprocessing
    import multiprocessing.util
    for child in multiprocessing.active_children():
        child.terminate()
    multiprocessing.util._exit_function()  # what atexit runs for multiprocessing
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
