"""Child Python processes for the tests, forked from a server that has imported TensorFlow.

Each test that runs an entry point (``train_main.py``, ``-m training.evaluate``, a child
pytest) in a process of its own paid for importing TensorFlow, Keras and the project again
(4-7 CPU-s of every such child), and the suite starts about twenty of them. :func:`Popen`
and :func:`run` take the arguments of their ``subprocess`` namesakes; a command line
``[sys.executable, script | -m module | -c code, args...]`` is run in a process forked from a
server (one per test process, started on first use) that has imported those modules and run
nothing, so the child starts with them imported and nothing else done. Everything else, and
any environment that differs from the server's in what is read at import time (``TF_*``,
``PYTHON*``, ...), runs as a real ``subprocess`` (:data:`FORKED` counts which way it went).

The child is a real process (its own pid, signals, exit status, process group with
``start_new_session``) that ends through the interpreter's own shutdown, as an exec'd one
does. What a forked child cannot show is the interpreter's start: TensorFlow's import-time
lines went to the server. Tests about a process's start-up (its first lines on stderr, a clean
``-I`` interpreter, a fresh clone) use ``subprocess`` itself.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading

# What the server imports after TensorFlow (imported quietly, as the entry points do): the
# entry points' dependencies, never an entry point itself (running it as ``__main__`` must not
# find it imported).
PRELOAD = ("keras", "models", "augment", "tinyimagenet_tfrecords.pipeline",
           "training.runner", "training.data")
# Environment variables that can act at import time; a request whose values differ from the
# server's runs as a real subprocess. TF_CONFIG is read when a run starts; GRPC_VERBOSITY is
# set by every entry point before it imports TensorFlow, as the server did (plumbing.cli).
_IMPORT_ENV_PREFIXES = ("TF_", "XLA_", "KERAS", "CUDA", "PYTHON", "LD_", "OMP_", "MKL")
_RUNTIME_ENV = {"TF_CONFIG", "PYTHONFAULTHANDLER"}
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# How many commands were forked and how many ran as a real subprocess (tests check this).
FORKED = {"forked": 0, "subprocess": 0}
# CPU seconds (user+sys) of the forked children that ended: the server, not this process,
# waited for them, so they are not in this process's RUSAGE_CHILDREN (conftest adds them).
CHILD_CPU = [0.0]


def _import_env(env) -> dict:
    return {k: v for k, v in env.items()
            if k.startswith(_IMPORT_ENV_PREFIXES) and k not in _RUNTIME_ENV}


def _target(args):
    """``(kind, what, argv)`` for a forkable command line, else None."""
    args = [os.fspath(a) for a in args] if not isinstance(args, (str, bytes)) else None
    if not args or len(args) < 2 or args[0] != sys.executable:
        return None
    if args[1] in ("-m", "-c") and len(args) >= 3:
        kind, what, rest = args[1], args[2], args[3:]
        argv0 = "-c" if kind == "-c" else what
        return kind, what, [argv0, *rest]
    if args[1].startswith("-"):
        return None  # interpreter options (-I, -X ...): a real interpreter
    return "script", args[1], args[1:]


# --- the server ------------------------------------------------------------------------------


def _send(sock, obj, fds=()):
    payload = json.dumps(obj).encode()
    socket.send_fds(sock, [struct.pack("!I", len(payload))], list(fds))
    sock.sendall(payload)


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _recv(sock, maxfds=0):
    head, fds = b"", []
    while len(head) < 4:
        data, got, _, _ = socket.recv_fds(sock, 4 - len(head), maxfds)
        if not data:
            raise EOFError
        head += data
        fds += got
    (n,) = struct.unpack("!I", head)
    return json.loads(_recv_exact(sock, n)), fds


def _wait_and_report(pid, status_sock, others):
    _, status, usage = os.wait4(pid, 0)
    others.pop(status_sock.fileno(), None)
    _send(status_sock, {"returncode": os.waitstatus_to_exitcode(status),
                        "cpu": usage.ru_utime + usage.ru_stime})
    status_sock.close()


def _serve(control_fd: int) -> None:
    """The server's loop: one request (command, environment, stdio) per child."""
    from plumbing import cli  # pylint: disable=import-outside-toplevel
    cli.import_tensorflow_quietly()
    import importlib  # pylint: disable=import-outside-toplevel
    for name in PRELOAD:
        importlib.import_module(name)
    control = socket.socket(fileno=control_fd)
    _send(control, {"ready": os.getpid()})
    others = {}  # status sockets of the children still running, by fd
    while True:
        try:
            request, fds = _recv(control, maxfds=4)
        except EOFError:
            os._exit(0)  # the test process is gone
        stdin, stdout, stderr, status_fd = fds
        pid = os.fork()
        if pid == 0:
            control.close()
            os.close(status_fd)
            for sock in list(others.values()):
                fd = sock.detach()  # detached: no finalizer closes a reused fd later
                if fd >= 0:
                    os.close(fd)
            _become(request, stdin, stdout, stderr)
            _run_target(request)  # exceptions and SystemExit end the process as usual
            return
        for fd in (stdin, stdout, stderr):
            os.close(fd)
        status_sock = socket.socket(fileno=status_fd)
        _send(status_sock, {"pid": pid})
        others[status_fd] = status_sock

        threading.Thread(target=_wait_and_report, args=(pid, status_sock, others),
                         daemon=True).start()


def _become(request, stdin, stdout, stderr) -> None:
    """Makes the forked child look like a fresh interpreter started with ``request``."""
    if request["new_session"]:
        os.setsid()
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # TMPDIR is read again
    import faulthandler  # pylint: disable=import-outside-toplevel
    if os.environ.get("PYTHONFAULTHANDLER"):
        faulthandler.enable()
    else:
        faulthandler.disable()
    # A started interpreter handles SIGINT unless it was ignored when it started.
    if request["sigint_ignored"]:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    import random  # pylint: disable=import-outside-toplevel
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()


def _run_target(request) -> None:
    import runpy  # pylint: disable=import-outside-toplevel
    kind, what, argv = request["kind"], request["what"], request["argv"]
    sys.argv = list(argv)
    if kind == "-m":
        sys.path[0] = os.getcwd()
        sys.modules.pop(what, None)  # run as __main__, not found imported
        runpy.run_module(what, run_name="__main__", alter_sys=True)
        return
    import types  # pylint: disable=import-outside-toplevel
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = __builtins__
    if kind == "-c":
        sys.path[0] = ""
        source, filename = what, "<string>"
    else:
        path = os.path.abspath(what)
        sys.path[0] = os.path.dirname(path)
        main.__file__ = what
        with open(path, "rb") as f:
            source, filename = f.read(), what
    sys.modules["__main__"] = main
    exec(compile(source, filename, "exec"), main.__dict__)  # pylint: disable=exec-used


# --- the test side ---------------------------------------------------------------------------


class _Server:
    """The server process of this test process and the socket that sends it requests."""

    def __init__(self, env):
        self.key = _import_env(env)
        parent, child = socket.socketpair()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(child.fileno())],
            cwd=_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            pass_fds=[child.fileno()])
        child.close()
        self.sock = parent
        self.lock = threading.Lock()
        try:
            _recv(self.sock)
        except EOFError:
            self.log.seek(0)
            raise RuntimeError("the fork server did not start:\n"
                               + self.log.read().decode(errors="replace")[-3000:]) from None

    def start(self, request, stdio):
        status, theirs = socket.socketpair()
        with self.lock:
            _send(self.sock, request, [*stdio, theirs.fileno()])
        theirs.close()
        reply, _ = _recv(status)
        return reply["pid"], status


_SERVER: list[_Server] = []


def _server(env):
    if not _SERVER:
        _SERVER.append(_Server(env))
        atexit.register(lambda: _SERVER[0].sock.close())
    return _SERVER[0] if _SERVER[0].key == _import_env(env) else None


class _Forked:
    """A forked child with the ``subprocess.Popen`` interface the tests use."""

    def __init__(self, args, pid, status, stdin, stdout, stderr):
        self.args, self.pid, self._status = args, pid, status
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.returncode = None
        self._readers = {}

    def _collect(self, block: bool, timeout=None):
        if self.returncode is not None:
            return True
        self._status.settimeout(None if block and timeout is None else
                                (timeout if block else 0.0))
        try:
            reply, _ = _recv(self._status)
        except (socket.timeout, BlockingIOError):
            return False
        except EOFError:  # the server died before the child: its status is lost
            reply = {"returncode": -signal.SIGKILL, "cpu": 0.0}
        self._status.close()
        self.returncode = reply["returncode"]
        CHILD_CPU[0] += reply["cpu"]
        return True

    def poll(self):
        self._collect(block=False)
        return self.returncode

    def wait(self, timeout=None):
        if not self._collect(block=True, timeout=timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def _read_all(self, name):
        stream = getattr(self, name)
        chunks = []
        thread = threading.Thread(target=lambda: chunks.append(stream.read()), daemon=True)
        thread.start()
        self._readers[name] = (thread, chunks)

    def communicate(self, input=None, timeout=None):  # pylint: disable=redefined-builtin
        del input  # the tests send none
        import time  # pylint: disable=import-outside-toplevel
        end = None if timeout is None else time.monotonic() + timeout
        for name in ("stdout", "stderr"):
            if getattr(self, name) is not None and name not in self._readers:
                self._read_all(name)
        for thread, _ in self._readers.values():
            thread.join(None if end is None else max(0.0, end - time.monotonic()))
            if thread.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if end is None else max(0.0, end - time.monotonic()))
        out = [self._readers[n][1][0] if n in self._readers else None
               for n in ("stdout", "stderr")]
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None:
                stream.close()
        return tuple(out)

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)


def _stdio(spec, default_fd, mode, text):
    """(fd for the child, our end or None, fd to close after sending)."""
    if spec is None:
        return default_fd, None, None
    if spec == subprocess.DEVNULL:
        fd = os.open(os.devnull, os.O_RDWR)
        return fd, None, fd
    if spec == subprocess.PIPE:
        r, w = os.pipe()
        ours, theirs = (r, w) if mode == "r" else (w, r)
        stream = io.open(ours, mode if text else mode + "b")  # text: the locale's, as subprocess
        return theirs, stream, theirs
    fd = spec if isinstance(spec, int) else spec.fileno()
    return fd, None, None


def Popen(args, *, cwd=None, env=None, stdin=None, stdout=None, stderr=None, text=False,
          start_new_session=False, sigint_ignored=None, **kwargs):  # pylint: disable=invalid-name
    """``subprocess.Popen(args, ...)``, forked from the server where it can be (module doc).

    ``sigint_ignored``: True starts the child with SIGINT ignored, as a shell's background job
    does, False with it handled (``subprocess`` callers set either in ``preexec_fn``); None
    inherits this process's, as an exec'd child does.
    """
    env = dict(os.environ if env is None else env)
    target = _target(args)
    server = _server(env) if target is not None and not kwargs else None
    if server is None:
        FORKED["subprocess"] += 1
        if sigint_ignored is not None:
            disposition = signal.SIG_IGN if sigint_ignored else signal.SIG_DFL
            kwargs["preexec_fn"] = lambda: signal.signal(signal.SIGINT, disposition)
        return subprocess.Popen(args, cwd=cwd, env=env, stdin=stdin, stdout=stdout,
                                stderr=stderr, text=text, start_new_session=start_new_session,
                                **kwargs)
    FORKED["forked"] += 1
    kind, what, argv = target
    ends = [_stdio(stdin, 0, "w", text), _stdio(stdout, 1, "r", text),
            _stdio(stderr, 2, "r", text)]
    request = {"kind": kind, "what": what, "argv": argv, "env": env,
               "cwd": os.path.abspath(os.fspath(cwd)) if cwd is not None else os.getcwd(),
               "new_session": bool(start_new_session),
               # An exec'd child inherits an ignored SIGINT (a background job's pytest).
               "sigint_ignored": (signal.getsignal(signal.SIGINT) == signal.SIG_IGN
                                  if sigint_ignored is None else bool(sigint_ignored))}
    try:
        pid, status = server.start(request, [e[0] for e in ends])
    finally:
        for _, _, close in ends:
            if close is not None:
                os.close(close)
    return _Forked(list(args), pid, status, *(e[1] for e in ends))


def run(args, *, capture_output=False, timeout=None, check=False, **kwargs):
    """``subprocess.run`` through :func:`Popen`."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    proc = Popen(args, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    done = subprocess.CompletedProcess(args, proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done


if __name__ == "__main__":
    sys.path[0] = _ROOT  # the server imports the project, not this folder's test modules
    _serve(int(sys.argv[1]))
