"""The fork server: a Python process that has imported ipykernel and an assignment's modules
once, and forks a kernel from itself into each submission's sandbox (see kernel_forks.py).

It runs as `python -c <this file's text> LISTEN_FD PRELOAD_JSON FOLDER`, started by the grader with
the sandbox's environment and nothing else; it imports no module of the grader. Student code
never runs in it: only in the kernels it forks, each of which first enters its own sandbox
(every namespace of the bubblewrap process waiting there, and its cgroup), gives up every
privilege, its limits set, and only then starts the kernel. The server answers one request at a
time on the listening socket it was handed: one JSON line in, one JSON line out.
"""
import sys

if sys.path and sys.path[0] == "":  # as ipykernel_launcher does: no working folder in sys.path
    del sys.path[0]
sys.modules["debugpy"] = None  # as kernel_command.LAUNCHER does: no debugger in a grading kernel

import ctypes  # noqa: E402
import fcntl  # noqa: E402
import gc  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
NS_GET_USERNS = 0xB701  # ioctl: the user namespace that owns a namespace
# Entered in nsenter's order: the user namespace first (it grants the rights to enter the rest).
NAMESPACES = [("user", 0x10000000), ("cgroup", 0x02000000), ("ipc", 0x08000000), ("uts", 0x04000000),
              ("net", 0x40000000), ("pid", 0x20000000), ("mnt", 0x00020000)]
IMPORTS_SET: dict[str, str] = {}  # environment variables the preloaded modules set (main)
RLIMITS = {"as": resource.RLIMIT_AS, "fsize": resource.RLIMIT_FSIZE, "cpu": resource.RLIMIT_CPU,
           "nproc": resource.RLIMIT_NPROC}


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _prctl(option: int, arg: int, what: str) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), what)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities(keep_effective: bool) -> None:
    """No capability left to regain: the bounding and ambient sets emptied and, unless a change
    of user is still to come (which clears them), the effective and permitted sets too."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        _prctl(PR_CAPBSET_DROP, cap, f"dropping capability {cap} from the bounding set")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "clearing ambient capabilities")
    if not keep_effective:
        header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
        _check(_libc.capset(ctypes.byref(header), data), "capset")


def _enter(request: dict, target_fd: int) -> None:
    """In the forked child: join the sandbox's cgroup and namespaces, its root and its folder.
    `target_fd` is a pidfd of the sandbox's waiting process: what was opened through its pid is
    its own only if it is still alive once everything is open (a pid is reused only once freed)."""
    target = int(request["target"])
    for procs in request["cgroup_procs"]:
        with open(procs, "w") as file:
            file.write(str(os.getpid()))
    root = os.open(f"/proc/{target}/root", os.O_RDONLY | os.O_DIRECTORY)
    cwd = os.open(f"/proc/{target}/cwd", os.O_RDONLY | os.O_DIRECTORY)
    theirs = {name: os.open(f"/proc/{target}/ns/{name}", os.O_RDONLY) for name, _ in NAMESPACES}
    # bubblewrap may nest the command's user namespace in the one that owns its other
    # namespaces: that owner is entered first (it grants the rights to enter the rest), the
    # command's own last, before the root changes (a chrooted process cannot enter one).
    owner = fcntl.ioctl(theirs["mnt"], NS_GET_USERNS)
    try:
        signal.pidfd_send_signal(target_fd, 0)
    except OSError:
        raise OSError("the sandbox ended before its kernel could enter it") from None
    # Read before any is entered: once in the sandbox's mount namespace, /proc is the sandbox's.
    current = {name: os.stat(f"/proc/self/ns/{name}").st_ino for name, _ in NAMESPACES}
    joined = set()

    def join(fd: int, name: str) -> None:
        if os.fstat(fd).st_ino == current[name]:
            return  # the same namespace (the user namespace of a grader that runs as root)
        _check(_libc.setns(fd, dict(NAMESPACES)[name]), f"entering the sandbox's {name} namespace")
        current[name] = os.fstat(fd).st_ino
        joined.add(name)

    join(owner, "user")
    for name, _ in NAMESPACES:
        if name != "user":
            join(theirs[name], name)
    join(theirs["user"], "user")
    if any(current[name] != os.fstat(fd).st_ino for name, fd in theirs.items()):
        raise OSError("a namespace entered is not the sandbox's")
    missing = set(request["namespaces"]) - joined
    if missing:
        raise OSError(f"the sandbox shares these namespaces with the grader: {sorted(missing)}")
    for fd in [owner, *theirs.values()]:
        os.close(fd)
    os.fchdir(root)
    os.chroot(".")
    os.fchdir(cwd)
    os.close(root)
    os.close(cwd)


def _give_up_privileges(request: dict, keep_fd: int) -> None:
    """In the grandchild, inside the sandbox's pid namespace: what bubblewrap and setpriv do for
    a command, without exec: a session of its own, the sandbox's user (nobody under a root
    grader), no capabilities, no_new_privs, the submission's limits, no file of the server."""
    # The server's files go first, before anything else can look at this process.
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server's own handler (main) is not the kernel's
    os.setsid()
    uid, gid = request["uid"], request["gid"]
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")
    if uid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        _drop_capabilities(keep_effective=True)
        os.setresuid(uid, uid, uid)  # clears the effective and permitted capabilities
    else:
        _drop_capabilities(keep_effective=False)
    _prctl(PR_SET_DUMPABLE, 1, "dumpable")  # as after an exec: its own /proc files stay its own
    for name, value in request["rlimits"].items():
        resource.setrlimit(RLIMITS[name], (value, value))
    # The sandbox's waiting process learns whom to wait for: bubblewrap ends when the kernel does.
    with open(request["waiter"], "w") as waiter:
        os.unlink(request["waiter"])  # a pipe left behind would block a learner's walk over files
        waiter.write(str(os.getpid()))
    os.environ.clear()
    os.environ.update(request["environment"])
    os.environ.update(IMPORTS_SET)  # what the modules set as they were imported (scikit-learn's KMP_*)
    if "numpy.random" in sys.modules:  # seeded once in the server: each kernel gets its own seed
        sys.modules["numpy.random"].seed()
    sys.argv = ["-c", *request["argv"]]


def _run_kernel() -> int:
    from ipykernel import kernelapp
    try:
        kernelapp.launch_new_instance()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return 0


def _report(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode(errors="replace")[:4000])
    except OSError:
        pass


def _kernel_from_inside(request: dict, ready: int) -> int:
    """The first process inside the sandbox's pid namespace: it forks the kernel and ends (0),
    leaving the kernel to the sandbox's own init, inside, as any orphan of the sandbox is. The
    kernel says on `ready` whether it could give up everything, and only then runs."""
    if os.fork() != 0:
        return 0
    try:
        _give_up_privileges(request, ready)
    except BaseException as err:
        _report(ready, f"{type(err).__name__}: {err}")
        raise
    _report(ready, "ok")
    os.close(ready)
    code = _run_kernel()
    import atexit
    atexit._run_exitfuncs()
    return code


def _fork_kernel(request: dict, target_fd: int) -> dict:
    """Fork a child that enters the sandbox and forks there (a pid namespace takes only
    children) the process that forks the kernel. The kernel's answer travels back up pipes."""
    status_read, status_write = os.pipe()
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server's handler is the server's alone
        try:
            os.close(status_read)
            _enter(request, target_fd)
            os.close(target_fd)
            ready_read, ready_write = os.pipe()
            inside = os.fork()
            if inside == 0:
                code = 1
                try:
                    os.close(ready_read)
                    os.close(status_write)
                    code = _kernel_from_inside(request, ready_write)
                finally:
                    os._exit(code)  # never back into the server's loop
            os.close(ready_write)
            os.waitpid(inside, 0)  # it ends as soon as it has forked the kernel
            answer = os.read(ready_read, 4096) or b"the kernel process ended before it started"
            os.write(status_write, answer)
        except BaseException as err:
            _report(status_write, f"{type(err).__name__}: {err}")
        finally:
            os._exit(0)
    os.close(status_write)
    chunks = []
    while chunk := os.read(status_read, 4096):
        chunks.append(chunk)
    os.close(status_read)
    os.waitpid(child, 0)
    answer = b"".join(chunks).decode(errors="replace")
    return {"ok": True} if answer == "ok" else {"ok": False, "error": answer or "no answer"}


def _read_request(connection: socket.socket) -> tuple[dict, int]:
    """One JSON line, and the pidfd that came with its first bytes."""
    data, fds, _, _ = socket.recv_fds(connection, 65536, 1)
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ValueError("a request comes with exactly one pidfd")
    while not data.endswith(b"\n"):
        more = connection.recv(65536)
        if not more:
            os.close(fds[0])
            raise ValueError("the request ended before its line did")
        data += more
    return json.loads(data), fds[0]


def main() -> None:
    listener, folder, server = socket.socket(fileno=int(sys.argv[1])), sys.argv[3], os.getpid()

    def end(signum, frame):  # the grader is gone: so are the server's socket and folder
        if os.getpid() == server:  # never in a process forked from it before it reset this
            shutil.rmtree(folder, ignore_errors=True)
            os._exit(0)

    signal.signal(signal.SIGTERM, end)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, "parent death signal")
    if os.getppid() == 1:  # the grader ended before the line above
        end(None, None)
    started_with = dict(os.environ)
    for name in ["ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", *json.loads(sys.argv[2])]:
        try:
            importlib.import_module(name)
        except BaseException:  # the kernel imports it again, and says what is wrong
            pass
    IMPORTS_SET.update({k: v for k, v in os.environ.items() if started_with.get(k) != v})
    gc.collect()
    gc.freeze()  # the kernels' garbage collector leaves these objects, and their pages, shared
    while True:  # nothing a client does (hanging up, sending garbage) ends the server
        try:
            connection, _ = listener.accept()
        except OSError:
            continue
        with connection:
            target_fd = -1
            try:
                request, target_fd = _read_request(connection)
                answer = _fork_kernel(request, target_fd)
            except Exception as err:
                answer = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            finally:
                if target_fd >= 0:
                    os.close(target_fd)
            try:
                connection.sendall((json.dumps(answer) + "\n").encode())
            except OSError:  # the client gave up waiting: it starts that kernel from nothing
                pass


if __name__ == "__main__":
    main()
