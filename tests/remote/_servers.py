"""Real storage servers on 127.0.0.1 for the remote-data tests: Debian's ``xrootd`` and ``nginx``.

Both serve one data folder on free ports and log every read, so a test can
count the file bytes a run fetched from them. Waits poll with deadlines.

XRootD refuses to run as root: as root it is started with ``-R xrootd`` (the
user the Debian package creates), which must be able to read the data and
write the admin, pid and log folders. URLs are relative to ``oss.localroot``:
``root://127.0.0.1:PORT//file.root``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

__all__ = ["free_port", "wait_for_port", "XRootDServer", "NginxServer", "make_data_dir", "missing_reason",
           "prefetchers", "wait_for_prefetches"]

_READ = re.compile(r"fh=\d+ read (\d+)@\d+")
_READV = re.compile(r"fh=\d+ readV (\d+)@\d+")
_PGREAD = re.compile(r" pgread (\d+)@\d+")


def missing_reason(binary: str, package: str) -> str | None:
    """Why the tests needing ``binary`` cannot run here, or None."""
    if shutil.which(binary) is None and not os.path.exists(f"/usr/sbin/{binary}"):
        return (f"{binary} is not installed: run `sudo apt-get install {package}` (Debian/Ubuntu) to run the "
                "remote-data tests (.ci/run installs it)")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or 'server'} exited with status {proc.returncode} before listening on {port}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what or 'server'} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")
        time.sleep(0.02)


def prefetchers(cache_root: str) -> list[int]:
    """Pids of the node's background downloader (``python .../vinecore/_prefetcher.py ROOT``) for ``cache_root``."""
    import psutil

    from vinecore._prefetcher import SCRIPT

    root = os.path.abspath(str(cache_root))
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = p.info.get("cmdline") or []
        if SCRIPT in cmd and root in cmd and p.info.get("status") != psutil.STATUS_ZOMBIE:
            out.append(p.info["pid"])
    return out


def wait_for_prefetches(cache_root: str, timeout: float = 120.0) -> None:
    """Wait until the background downloader of ``cache_root`` has exited (it outlives ddr's workers)."""
    deadline = time.monotonic() + timeout
    while prefetchers(cache_root):
        if time.monotonic() > deadline:
            raise TimeoutError(f"background downloads into {cache_root} still running after {timeout:.0f} s")
        time.sleep(0.05)


def make_data_dir(prefix: str = "ddr-remote-") -> str:
    """A folder the xrootd user can read (tmp_path's parents are private to root)."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)
    return path


def _chown_for_server(path: str) -> None:
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("xrootd")
        os.chown(path, pw.pw_uid, pw.pw_gid)


class XRootDServer:
    """``xrootd`` serving ``data`` on a free port (``start``, ``stop``, ``restart`` on the same port)."""

    def __init__(self, data: str, workdir: str, *, name: str = "ddrtest", trace: bool = True) -> None:
        self.data, self.workdir, self.name = data, workdir, name
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        os.makedirs(workdir, exist_ok=True)
        os.chmod(workdir, 0o755)
        for sub in ("admin", "run", "logs"):
            os.makedirs(os.path.join(workdir, sub), exist_ok=True)
            _chown_for_server(os.path.join(workdir, sub))
        self.config = os.path.join(workdir, "xrootd.cfg")
        with open(self.config, "w") as f:
            f.write(f"xrd.port {self.port}\n"
                    "xrd.allow host localhost\nxrd.allow host 127.0.0.1\n"
                    f"oss.localroot {data}\n"
                    "all.export / nolock r/o\n"
                    f"all.adminpath {workdir}/admin\n"
                    f"all.pidpath {workdir}/run\n"
                    + ("xrootd.trace all\n" if trace else ""))  # logs every read and its length: bytes_read()

    @property
    def log(self) -> str:
        return os.path.join(self.workdir, "logs", self.name, "xrootd.log")

    @property
    def address(self) -> str:
        return f"root://127.0.0.1:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.address}//{name.lstrip('/')}"

    def start(self) -> "XRootDServer":
        cmd = ["xrootd", "-c", self.config, "-l", os.path.join(self.workdir, "logs", "xrootd.log"), "-n", self.name]
        if os.geteuid() == 0:
            cmd[1:1] = ["-R", "xrootd"]
        out = open(os.path.join(self.workdir, "stdout.txt"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        wait_for_port(self.port, 30, self.proc, f"xrootd (see {self.workdir}/stdout.txt)")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # a crash, as far as clients can tell
            self.proc.wait(30)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        deadline = time.monotonic() + 30
        while True:  # the port may linger for a moment after the kill
            try:
                self.start()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise

    def bytes_read(self) -> int:
        """File bytes served so far (read and vector-read requests in the trace log); metadata is not counted."""
        try:
            with open(self.log, errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return 0
        return sum(int(n) for rx in (_READ, _READV, _PGREAD) for n in rx.findall(text))

    def __enter__(self) -> "XRootDServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class NginxServer:
    """``nginx`` serving ``data`` over http and https (self-signed, ``cert`` for clients) on free ports.

    ``/slow/...`` serves the same files at 200 kB/s, ``/forbidden/...`` answers 403 and ``/unavailable/...``
    503. The access log records the body bytes of every response (``bytes_sent()``).
    """

    def __init__(self, data: str, workdir: str) -> None:
        self.data, self.workdir = data, workdir
        self.port, self.tls_port = free_port(), free_port()
        os.makedirs(workdir, exist_ok=True)
        self.cert, self.key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key, "-out",
                        self.cert, "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        self.access_log = os.path.join(workdir, "access.log")
        self.config = os.path.join(workdir, "nginx.conf")
        temp = "".join(f"{k}_temp_path {workdir}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        with open(self.config, "w") as f:
            f.write(f"""daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 256; }}
http {{
  {temp}
  log_format bytes '$request_method $uri $status $body_bytes_sent';
  access_log {self.access_log} bytes;
  max_ranges 1000;
  sendfile on;
  server {{
    listen 127.0.0.1:{self.port};
    listen 127.0.0.1:{self.tls_port} ssl;
    ssl_certificate {self.cert};
    ssl_certificate_key {self.key};
    root {data};
    location /slow/ {{ alias {data}/; limit_rate 200k; }}
    location /forbidden/ {{ return 403; }}
    location /unavailable/ {{ return 503; }}
  }}
}}
""")
        self.proc: subprocess.Popen | None = None

    def url(self, name: str, *, tls: bool = False) -> str:
        return (f"https://127.0.0.1:{self.tls_port}/{name.lstrip('/')}" if tls
                else f"http://127.0.0.1:{self.port}/{name.lstrip('/')}")

    def start(self) -> "NginxServer":
        out = open(os.path.join(self.workdir, "stdout.txt"), "ab")
        self.proc = subprocess.Popen(["nginx", "-p", self.workdir, "-c", self.config], stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        wait_for_port(self.port, 30, self.proc, f"nginx (see {self.workdir}/error.log)")
        wait_for_port(self.tls_port, 30, self.proc, "nginx (https)")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def bytes_sent(self, method: str = "GET") -> int:
        """Body bytes of the responses so far (``GET`` by default: file content, not HEAD metadata)."""
        total = 0
        try:
            with open(self.access_log) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 4 and parts[0] == method:
                        total += int(parts[3])
        except FileNotFoundError:
            pass
        return total

    def __enter__(self) -> "NginxServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
