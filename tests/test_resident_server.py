"""The resident server behind the thin forced commands (rds.resident, rds.forced): rdsma's pre-imported
server serves rds-serve and rds-wake on the descriptors the thin client hands it, and everything works
as before when it is not there, dies, or is replaced."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, Host, Tree, wait_for
from testkit import frames
from trustkit import request

from rds import forced

SOCK = "resident.sock"


def start_rdsma(host: Host, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([str(BIN / "rdsma"), "--foreground"], env=env or host.env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: server_pid(host) is not None and listening(host))
    return proc


@contextlib.contextmanager
def rdsma_running(host: Host, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """rdsma of ``host`` with its resident server listening, stopped however the block ends."""
    proc = start_rdsma(host, env)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def server_pid(host: Host) -> int | None:
    """The resident server's pid, from /proc: the child of rdsma running rds.resident."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"rds.resident" in cmd and str(host.path).encode() in cmd:
                return int(d.name)
    return None


def listening(host: Host) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(str(host.path / "run" / SOCK))
        return True
    except OSError:
        return False
    finally:
        s.close()


def asking(lower: str) -> bytes:
    """A request the home answers with an error ('stat' of no package): the session is not idle, so it
    logs its own 'served' line (an idle one is only counted, rds.log.idle_session)."""
    body = json.dumps(request("stat", lower)).encode()
    return struct.pack(">I", len(body)) + body


def serve(host: Host, lower: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[bytes], int]:
    """Run the venv's rds-serve as sshd would, asking one thing; returns it and its pid."""
    proc = subprocess.Popen([str(BIN / "rds-serve"), "--lower", lower, "--home", str(host.path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**(env or os.environ), "SSH_CLIENT": "192.0.2.7 40000 22"})
    out, err = proc.communicate(asking(lower), timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def served_by(host: Host, lower: str) -> list[int]:
    """The pids that logged 'served LOWER' in the home's log."""
    pids = []
    for line in (host.path / "log" / "rds.log").read_text().splitlines():
        if f"served {lower}:" in line:
            pids.append(int(line.split("[", 1)[1].split("]", 1)[0]))
    return pids


def test_rds_serve_is_served_by_the_resident_and_the_same_without(tree: Tree) -> None:
    tree.add("mgr")
    relay = tree.add("relay", "mgr")
    relay.home()
    with rdsma_running(relay):
        sock = relay.path / "run" / SOCK
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        assert oct((relay.path / "run").stat().st_mode & 0o777) == "0o700"
        proc, pid = serve(relay, "c1")
        assert proc.returncode == 0, proc.stderr
        first = frames(proc.stdout)
        assert first[0]["ok"] is True and first[0]["upper"] == "relay"
        [served] = served_by(relay, "c1")
        assert served != pid  # not the thin client: the resident's child served it
        wait_for(lambda: ended(served), 10)  # the child served this session and no other, then ended
    assert not sock.exists()  # the server took its socket with it
    proc2, pid2 = serve(relay, "c1")
    assert proc2.returncode == 0 and frames(proc2.stdout) == first
    assert served_by(relay, "c1")[-1] == pid2  # no resident: served in its own process, as before


def children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def open_session(host: Host, lower: str = "c1") -> subprocess.Popen[bytes]:
    """An rds-serve session kept open (its input a pipe this test holds), once its greeting has come."""
    proc = subprocess.Popen([str(BIN / "rds-serve"), "--lower", lower, "--home", str(host.path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    (n,) = struct.unpack(">I", proc.stdout.read(4))
    assert json.loads(proc.stdout.read(n))["ok"] is True
    return proc


def ended(pid: int) -> bool:
    """The process is gone, or dead and not yet reaped (it may go between any two looks at /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def close(proc: subprocess.Popen[bytes]) -> None:
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            f.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture
def relay(tree: Tree) -> Host:
    tree.add("mgr")
    host = tree.add("relay", "mgr")
    host.home()
    return host


def test_kill_9_of_the_serving_child_is_a_cut_the_lower_sees(relay: Host) -> None:
    with rdsma_running(relay):
        server = server_pid(relay)
        assert server is not None
        session = open_session(relay)
        [child] = children_of(server)
        os.kill(child, signal.SIGKILL)
        assert session.wait(10) == -signal.SIGKILL  # the thin client dies as its server process did
        assert session.stdout is not None and session.stdout.read() == b""  # the lower's stream ends: a cut
        # and the lower's retry is served again at once
        proc, _ = serve(relay, "c1")
        assert proc.returncode == 0 and frames(proc.stdout)[0]["ok"] is True
        close(session)


def test_kill_9_of_the_thin_client_ends_its_session(relay: Host) -> None:
    with rdsma_running(relay):
        server = server_pid(relay)
        assert server is not None
        session = open_session(relay)
        try:
            [child] = children_of(server)
            session.kill()
            session.wait(10)
            wait_for(lambda: ended(child), 10)
            wait_for(lambda: children_of(server) == [], 10)  # reaped
        finally:
            close(session)


def test_kill_9_of_the_server_falls_back_then_rdsma_starts_it_again(relay: Host) -> None:
    with rdsma_running(relay):
        server = server_pid(relay)
        assert server is not None
        session = open_session(relay)  # a session under way outlives its server
        os.kill(server, signal.SIGKILL)
        assert (relay.path / "run" / SOCK).exists()  # stale now: nobody listens
        proc, pid = serve(relay, "c1")
        assert proc.returncode == 0 and frames(proc.stdout)[0]["ok"] is True
        assert served_by(relay, "c1")[-1] == pid  # served in its own process
        assert session.stdin is not None
        session.stdin.close()  # the lower hangs up: the old session ends as ever
        assert session.wait(10) == 0
        close(session)
        wait_for(lambda: (server_pid(relay) or server) != server and listening(relay), 20)
        proc, pid = serve(relay, "c1")
        assert proc.returncode == 0 and served_by(relay, "c1")[-1] != pid  # the new server serves
    assert server_pid(relay) is None  # it ends with rdsma


def test_kill_9_of_rdsma_ends_its_server(relay: Host) -> None:
    rdsma = start_rdsma(relay)
    server = server_pid(relay)
    rdsma.kill()
    rdsma.wait()
    wait_for(lambda: server_pid(relay) is None, 10)
    proc, pid = serve(relay, "c1")
    assert proc.returncode == 0 and served_by(relay, "c1")[-1] == pid
    assert server is not None


def test_a_stale_socket_file_without_a_server(relay: Host) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(str(relay.path / "run" / SOCK))
    s.close()  # the file stays; nobody listens
    proc, pid = serve(relay, "c1")
    assert proc.returncode == 0 and frames(proc.stdout)[0]["ok"] is True and served_by(relay, "c1") == [pid]
    with rdsma_running(relay):  # the server replaces the stale file
        proc, pid = serve(relay, "c1")
        assert proc.returncode == 0 and served_by(relay, "c1")[-1] != pid


def test_one_server_per_home(relay: Host) -> None:
    with rdsma_running(relay):
        server = server_pid(relay)
        second = subprocess.run([str(BIN / "rdsma"), "--foreground"], env=relay.env(), capture_output=True,
                                text=True, timeout=30)
        assert second.returncode == 7 and "already running" in second.stderr
        other = subprocess.run([str(BIN / "python"), "-m", "rds.resident", str(relay.path)], stdin=subprocess.PIPE,
                               capture_output=True, timeout=30)
        assert other.returncode == 0  # it found the home's server lock held and left
        assert server_pid(relay) == server and listening(relay)


def raw(host: Host, data: bytes, fds: list[int] | None = None) -> bytes:
    """Send one message on the resident's socket as any local program could; what it answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    s.connect(str(host.path / "run" / SOCK))
    try:
        s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else [])
        return s.recv(256)
    except OSError:
        return b""
    finally:
        s.close()


def test_garbage_on_the_socket_is_refused_and_the_server_serves_on(relay: Host) -> None:
    with rdsma_running(relay):
        r, w = os.pipe()
        good = [forced.MAGIC, b"0.1.0", b"rds-serve", b"/", b"2", b"--lower", b"c1"]
        for data, fds in [(b"hello", None), (b"hello", [r, w, w]), (b"\0".join(good), None),
                          (b"\0".join(good), [r, w]), (b"x" * (forced.MAX_MESSAGE + 10), [r, w, w]),
                          (b"\0".join([forced.MAGIC, b"9.9.9", *good[2:]]), [r, w, w]),
                          (b"\0".join([*good[:2], b"rds-other", *good[3:]]), [r, w, w]),
                          (b"\0".join([*good[:4], b"99", *good[5:]]), [r, w, w])]:
            said = raw(relay, data, fds)
            assert said.startswith(forced.REFUSED), (data[:40], said)
        os.close(r)
        os.close(w)
        proc, pid = serve(relay, "c1")
        assert proc.returncode == 0 and served_by(relay, "c1")[-1] != pid


def test_another_user_is_not_served(relay: Host) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to be another user")
    import tempfile

    public = Path(tempfile.mkdtemp(prefix="rds-peer-", dir="/tmp"))
    try:
        with rdsma_running(relay):
            public.chmod(0o755)  # the socket reached by another user, as a mistake could: SO_PEERCRED still refuses
            os.link(relay.path / "run" / SOCK, public / SOCK)
            (public / SOCK).chmod(0o666)
            probe = ("import socket, os\n"
                     "os.setuid(65534)\n"
                     "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
                     f"s.connect({str(public / SOCK)!r})\n"
                     "print('connected')\n"
                     "s.settimeout(5)\n"
                     "try:\n"
                     "    s.send(b'x')\n"
                     "    print(repr(s.recv(64)))\n"
                     "except OSError as e:\n"
                     "    print('closed', e.errno)\n")
            out = subprocess.run([str(BIN / "python"), "-c", probe], capture_output=True, text=True, timeout=30)
            said = out.stdout.split()
            assert said[0] == "connected" and said[1:] in (["b''"], ["closed", "32"], ["closed", "104"]), out
            assert (relay.path / "run" / SOCK).stat().st_mode & 0o777 == 0o666  # the same file: it was reachable
    finally:
        import shutil

        shutil.rmtree(public)


def test_rds_wake_through_the_resident_wakes_rdsma_at_once(tree: Tree) -> None:
    tree.add("mgr")
    host = tree.add("c1", "mgr", "WatchTimeofOrders\t60m\n")
    host.home()
    with rdsma_running(host):
        log = host.path / "log" / "rds.log"
        wait_for(lambda: "rdsma: started" in log.read_text())
        proc = subprocess.Popen([str(BIN / "rds-wake"), "--home", str(host.path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "SSH_CLIENT": "192.0.2.9 1 22"})
        time.sleep(0.3)
        assert proc.poll() is None  # it waits for the word
        out, err = proc.communicate(b"\n", timeout=30)
        assert proc.returncode == 0, err
        assert out == b"rds-wake: woke its rdsma\n"
        text = log.read_text()
        line = [ln for ln in text.splitlines() if "startup request from 192.0.2.9" in ln][-1]
        assert int(line.split("[", 1)[1].split("]", 1)[0]) != proc.pid  # said by the resident's child


def test_dcmjexe_hands_the_startup_request_to_the_managing_servers_rdsma(tree: Tree) -> None:
    mgr = tree.add("mgr", push=True)
    relay = tree.add("relay", "mgr", "WatchTimeofOrders\t60m\n", push=True)
    tree.check_in_upward(["relay"])
    with rdsma_running(mgr), rdsma_running(relay):
        mgr_log = mgr.path / "log" / "rds.log"
        out = mgr.run("dcmjexe", "-r", tree.package(), "-h", "relay")
        job_no = int(out.stdout.strip())
        assert job_no > 0
        wait_for(lambda: relay.installed("/opt/installs").exists(), 30)  # pushed: relay polls only hourly
        wait_for(lambda: "startup requests sent for 1 job(s) dcmjexe handed over" in mgr_log.read_text(), 10)
        assert list((mgr.path / "run" / "wake.jobs").iterdir()) == []  # each taken once
        line = [ln for ln in mgr_log.read_text().splitlines() if "startup request to relay" in ln][-1]
        assert line.split()[2].startswith("rdsma[")  # sent by rdsma, not by dcmjexe
    # without the managing server's rdsma, dcmjexe sends it itself as before
    out = mgr.run("dcmjexe", "-r", tree.package(version="0200"), "-h", "relay")
    line = [ln for ln in mgr_log.read_text().splitlines() if "startup request to relay" in ln][-1]
    assert line.split()[2].startswith("dcmjexe[")


def test_code_changed_under_the_resident_is_served_at_once_and_the_resident_retires(
        relay: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade that keeps the version string (here a patched module in a copy of the package, as a
    local patch or a reinstall from a newer checkout would be): the next session runs the new code."""
    import shutil

    import rds

    code = tmp_path / "code"
    shutil.copytree(Path(rds.__file__).parent, code / "rds", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**relay.env(), "PYTHONPATH": str(code)}
    monkeypatch.chdir(Path(rds.__file__).parent.parent)  # a working directory holding the unpatched rds: not used
    with rdsma_running(relay, env) as rdsma:
        server = server_pid(relay)
        proc, pid = serve(relay, "c1", env)
        assert proc.returncode == 0 and served_by(relay, "c1")[-1] != pid  # the resident serves
        module = code / "rds" / "transport" / "serve.py"
        text = module.read_text()
        assert text.count("package byte(s)\")") == 1
        module.write_text(text.replace("package byte(s)\")", "package byte(s) (patched)\")"))
        proc, pid = serve(relay, "c1", env)
        assert proc.returncode == 0
        log = relay.path / "log" / "rds.log"
        last = [line for line in log.read_text().splitlines() if "served c1:" in line][-1]
        assert last.endswith("(patched)") and f"[{pid}]" in last  # the new code, in the session's own process
        wait_for(lambda: ended(server) and (server_pid(relay) or server) != server and listening(relay), 30)
        proc, pid = serve(relay, "c1", env)  # the resident rdsma started again serves the new code
        last = [line for line in log.read_text().splitlines() if "served c1:" in line][-1]
        assert proc.returncode == 0 and last.endswith("(patched)") and f"[{pid}]" not in last
        # rdsma itself runs the new code too: the same process (pid), started again on it
        text = log.read_text()
        assert f"rdsma[{rdsma.pid}] INFO rdsma: the installed rds changed (an upgrade): starting again" in text
        assert text.count(f"rdsma: started (pid {rdsma.pid},") == 2 and rdsma.poll() is None
        assert (relay.path / "run" / "rdsma.pid").read_text().strip() == str(rdsma.pid)


def test_rdsma_starts_again_on_upgraded_code_between_passes_never_in_one(relay: Host, tmp_path: Path) -> None:
    """A file of the package replaced while rdsma waits: it starts again on it at its next look, in the
    same process; its state and pid file say so, and it still stops on SIGTERM."""
    import shutil

    import rds

    code = tmp_path / "code"
    shutil.copytree(Path(rds.__file__).parent, code / "rds", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**relay.env(), "PYTHONPATH": str(code)}
    log = relay.path / "log" / "rds.log"
    with rdsma_running(relay, env) as rdsma:
        wait_for(lambda: "rdsma: started" in log.read_text())
        module = code / "rds" / "clock.py"
        module.write_text(module.read_text() + "\n# patched\n")
        os.kill(rdsma.pid, signal.SIGUSR1)  # a pass, then the look at the code
        wait_for(lambda: log.read_text().count(f"rdsma: started (pid {rdsma.pid},") == 2, 30)
        wait_for(lambda: server_pid(relay) is not None and listening(relay))  # its resident server, again
        assert rdsma.poll() is None
        status = relay.run("rdsma", "--status", env=env)
        assert str(rdsma.pid) in status.stdout
    assert rdsma.returncode is not None  # stopped by SIGTERM as before
