"""Signals to a real master: crash respawn, reloads under load, worker count
changes, graceful and fast stops, master death, and the signal commands."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import TIMEOUT, connect, echo_handler, free_port, hash_handler, wait_until
from tests.integration.helpers import (
    Load,
    MiB,
    echo_ok,
    gone,
    kill_pids,
    port_refuses,
    recv_all,
    recv_exact,
    roundtrip,
    second_listener,
    wait_generation_serving,
    wait_only_generation,
    write_proxy_config,
)


def _echo_once(s: socket.socket, payload: bytes) -> bool:
    try:
        s.sendall(payload)
        return recv_exact(s, len(payload)) == payload
    except OSError:
        return False


# -- a worker dies ----------------------------------------------------------------------
def test_kill_9_worker_respawns_and_spares_other_connections(run_proxy, backend_factory) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address], workers=2)
    old_pids = proxy.worker_pids()
    conns = []
    try:
        # /stats says "running" a moment before the master steers connections to a
        # worker: open connections until both workers hold some (bounded).
        active: dict[int, int] = {}
        while len(conns) < 100:
            for _ in range(10):
                s = connect(proxy.ports["main"])
                conns.append(s)
                assert _echo_once(s, f"hello {len(conns):04d}".encode())

            def all_counted() -> bool:
                workers = proxy.stats()["workers"]
                return sum(w["counters"]["conn_active"] for w in workers) == len(conns)
            wait_until(all_counted, 10.0, f"{len(conns)} active sessions in per-worker stats")
            active = {w["pid"]: w["counters"]["conn_active"] for w in proxy.stats()["workers"]}
            if len(conns) >= 20 and min(active.values()) > 0:
                break
        total = len(conns)
        assert sorted(active) == old_pids
        assert min(active.values()) > 0, f"one worker got none of {total} connections: {active}"
        victim = max(active, key=lambda pid: active[pid])
        survivors_expected = total - active[victim]

        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: gone(victim), 10.0, "the killed worker to die")
        new_pids = proxy.wait_workers(2, timeout=15.0)
        assert victim not in new_pids
        assert len(set(new_pids) - set(old_pids)) == 1, (old_pids, new_pids)

        survivors = sum(_echo_once(s, f"again {i:04d}".encode() * 100)
                        for i, s in enumerate(conns))
        assert survivors == survivors_expected, (active, victim)
        # the dead worker's counters are kept, its gauge is not
        c = proxy.totals()
        assert c["conn_accepted"] == total
        assert c["conn_active"] == survivors_expected
        assert echo_ok(proxy.ports["main"])        # the respawned set serves new clients
    finally:
        for s in conns:
            s.close()


# -- reloads under continuous load --------------------------------------------------------
def test_hup_reload_20_times_under_load(run_proxy, backend_factory) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address], workers=2)
    start_gen = proxy.stats()["generation"]
    with Load(proxy.ports["main"]) as load:
        load.wait_for(20)
        for i in range(20):
            expected = start_gen + i + 1
            if i % 2 == 0:
                result = proxy.cli("reload", "--pidfile", str(proxy.pidfile))
                assert result.returncode == 0, result.stderr.decode()
                assert b"reloaded" in result.stdout
                assert proxy.stats()["generation"] == expected
            else:
                seq = proxy.stats()["reload_seq"]
                proxy.signal(signal.SIGHUP)
                wait_until(lambda seq=seq: proxy.stats()["reload_seq"] > seq, 30.0,
                           "reload outcome")
                assert proxy.stats()["reload_status"] == "ok"
            wait_generation_serving(proxy, expected, 2)
            load.wait_for(3)
        load.wait_for(20)
    assert load.failures == [], f"{len(load.failures)} of {load.done}: {load.failures[:10]}"
    assert load.done >= 100
    final = start_gen + 20
    assert proxy.stats()["generation"] == final
    wait_only_generation(proxy, final, 2)
    # counters of 20 retired generations are all still in the totals
    wait_until(lambda: proxy.totals()["conn_closed"] >= load.done, 10.0, "sessions to close")
    c = proxy.totals()
    assert c["conn_accepted"] == load.done
    assert c["conn_closed"] == load.done
    assert c["conn_active"] == 0
    assert c["bytes_in"] == c["bytes_out"] == 64 * load.done
    assert echo_ok(proxy.ports["main"])


def test_reload_with_broken_config_keeps_running(run_proxy, backend_factory) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address], workers=2)
    good = proxy.config_path.read_text()
    gen = proxy.stats()["generation"]
    pids = proxy.worker_pids()

    proxy.config_path.write_text(good.replace("workers = 2", "wrokers = 2"))
    result = proxy.cli("reload", "--pidfile", str(proxy.pidfile))
    assert result.returncode == 1, result
    err = result.stderr.decode()
    assert "config error: server.wrokers" in err, err
    assert echo_ok(proxy.ports["main"])
    assert proxy.stats()["generation"] == gen
    assert proxy.stats()["reload_status"] == "failed"

    proxy.config_path.write_text(good + "\nthis is [ not toml\n")
    result = proxy.cli("reload", "--pidfile", str(proxy.pidfile))
    assert result.returncode == 1, result
    assert "config error" in result.stderr.decode()
    assert echo_ok(proxy.ports["main"])
    assert proxy.stats()["generation"] == gen
    assert proxy.worker_pids() == pids

    proxy.config_path.write_text(good)     # and a good one is taken again
    result = proxy.cli("reload", "--pidfile", str(proxy.pidfile))
    assert result.returncode == 0, result.stderr.decode()
    assert proxy.stats()["generation"] == gen + 1


def test_reload_changes_worker_count_under_load(run_proxy, backend_factory) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address], workers=2)
    gen = proxy.stats()["generation"]
    with Load(proxy.ports["main"]) as load:
        load.wait_for(20)
        for step, count in enumerate((3, 1), start=1):
            write_proxy_config(proxy, [backend.address], workers=count)
            result = proxy.cli("reload", "--pidfile", str(proxy.pidfile))
            assert result.returncode == 0, result.stderr.decode()
            wait_only_generation(proxy, gen + step, count)
            load.wait_for(30)
    assert load.failures == [], f"{len(load.failures)} of {load.done}: {load.failures[:10]}"
    assert len(proxy.worker_pids()) == 1
    assert echo_ok(proxy.ports["main"])


def test_reload_adds_and_removes_a_listener(run_proxy, backend_factory) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address], workers=2)
    extra_port = free_port()
    assert port_refuses(extra_port)

    write_proxy_config(proxy, [backend.address], workers=2,
                       extra_listener=second_listener("extra", extra_port))
    result = proxy.cli("reload", "--pidfile", str(proxy.pidfile))
    assert result.returncode == 0, result.stderr.decode()
    assert echo_ok(extra_port, b"via the new listener")
    assert echo_ok(proxy.ports["main"])

    write_proxy_config(proxy, [backend.address], workers=2)
    result = proxy.cli("reload", "--pidfile", str(proxy.pidfile))
    assert result.returncode == 0, result.stderr.decode()
    assert echo_ok(proxy.ports["main"], b"old listener still serves")
    wait_until(lambda: port_refuses(extra_port), 20.0, "the removed listener to close")
    assert echo_ok(proxy.ports["main"])


def test_ttin_ttou_under_load(run_proxy, backend_factory) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address], workers=1)
    with Load(proxy.ports["main"]) as load:
        load.wait_for(20)
        proxy.signal(signal.SIGTTIN)
        assert len(proxy.wait_workers(2, timeout=15.0)) == 2
        load.wait_for(30)
        proxy.signal(signal.SIGTTOU)
        assert len(proxy.wait_workers(1, timeout=20.0)) == 1
        load.wait_for(30)
    assert load.failures == [], f"{len(load.failures)} of {load.done}: {load.failures[:10]}"
    assert echo_ok(proxy.ports["main"])


def test_ttou_then_ttin_at_once_keeps_the_worker_count(run_proxy, backend_factory) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address], workers=2)
    proxy.signal(signal.SIGTTOU)
    proxy.signal(signal.SIGTTIN)
    assert len(proxy.wait_workers(2, timeout=5.0)) == 2
    assert echo_ok(proxy.ports["main"])


def test_listener_removed_then_readded_while_old_worker_drains(run_proxy, backend_factory) -> None:
    backend = backend_factory(echo_handler)
    extra_port = free_port()
    proxy = run_proxy(upstreams=[backend.address], workers=1,
                      extra_listener=second_listener("extra", extra_port))
    assert echo_ok(extra_port)
    with connect(proxy.ports["main"]) as held:     # keeps the generation-1 worker draining
        assert _echo_once(held, b"held")
        write_proxy_config(proxy, [backend.address], workers=1)
        result = proxy.cli("reload", "--pidfile", str(proxy.pidfile))
        assert result.returncode == 0, result.stderr.decode()
        write_proxy_config(proxy, [backend.address], workers=1,
                           extra_listener=second_listener("extra", extra_port))
        result = proxy.cli("reload", "--pidfile", str(proxy.pidfile))
        assert result.returncode == 0, result.stderr.decode()
        for i in range(5):
            payload = f"re-added {i}".encode()
            assert roundtrip(extra_port, payload, timeout=2.0) == payload, i
        assert _echo_once(held, b"still held")


# -- stopping ----------------------------------------------------------------------------
def test_quit_lets_a_live_transfer_finish(run_proxy, backend_factory) -> None:
    backend = backend_factory(hash_handler)
    proxy = run_proxy(upstreams=[backend.address], workers=2)
    pids = proxy.worker_pids()
    total, chunk = 8 * MiB, 128 * 1024
    started = threading.Event()
    result: dict[str, object] = {}

    def transfer() -> None:
        digest = hashlib.sha256()
        try:
            with connect(proxy.ports["main"], timeout=30.0) as s:
                for i in range(total // chunk):
                    block = os.urandom(chunk)
                    digest.update(block)
                    s.sendall(block)
                    if i == 8:
                        started.set()
                    time.sleep(0.03)
                s.shutdown(socket.SHUT_WR)
                result["answer"] = recv_all(s, 1024)
        except OSError as exc:
            result["error"] = exc
        finally:
            started.set()
        result["expected"] = f"{total} {digest.hexdigest()}\n".encode()

    t = threading.Thread(target=transfer, daemon=True)
    t.start()
    assert started.wait(15.0)
    proxy.signal(signal.SIGQUIT)
    wait_until(lambda: port_refuses(proxy.ports["main"]), 10.0,
               "new connections to be refused after QUIT")
    t.join(40.0)
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    assert result["answer"] == result["expected"]
    assert proxy.proc.wait(30.0) == 0
    wait_until(lambda: all(gone(p) for p in pids), 10.0, "workers to exit")


def test_term_stops_fast_and_removes_pidfile(run_proxy, backend_factory) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address], workers=2)
    pids = proxy.worker_pids()
    assert proxy.pidfile.exists()
    with connect(proxy.ports["main"]) as idle:   # an open session must not hold TERM up
        assert _echo_once(idle, b"open")
        proxy.signal(signal.SIGTERM)
        assert proxy.proc.wait(15.0) == 0
    wait_until(lambda: all(gone(p) for p in pids), 10.0, "workers to exit")
    assert not proxy.pidfile.exists()
    assert port_refuses(proxy.ports["main"])


def test_master_sigkill_leaves_no_orphans(run_proxy, backend_factory) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address], workers=2)
    pids = proxy.worker_pids()
    assert len(pids) == 2
    try:
        proxy.signal(signal.SIGKILL)
        proxy.proc.wait(TIMEOUT)
        wait_until(lambda: all(gone(p) for p in pids), 15.0, "orphaned workers to exit")
        assert port_refuses(proxy.ports["main"])
    finally:
        kill_pids([p for p in pids if not gone(p)])


def _signal_command(proxy, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "fastproxy", *args], cwd=proxy.workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("command", ["stop", "quit"])
def test_stop_and_quit_commands(run_proxy, backend_factory, command: str) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address], workers=2)
    pids = proxy.worker_pids()
    assert echo_ok(proxy.ports["main"])
    # Like a supervisor, we reap the master while the command waits for it.
    cli = _signal_command(proxy, command, "--pidfile", str(proxy.pidfile), "--timeout", "20")
    try:
        assert proxy.proc.wait(TIMEOUT) == 0
        _, err = cli.communicate(timeout=30.0)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(TIMEOUT)
    assert cli.returncode == 0, err.decode()
    wait_until(lambda: all(gone(p) for p in pids), 10.0, "workers to exit")
    assert not proxy.pidfile.exists()
    assert port_refuses(proxy.ports["main"])


def test_stop_command_when_master_is_an_unreaped_zombie(run_proxy, backend_factory) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address], workers=1)
    # The master's parent (this test) only reaps it after the command returns.
    result = proxy.cli("stop", "--pidfile", str(proxy.pidfile), "--timeout", "5")
    assert proxy.proc.wait(TIMEOUT) == 0
    assert result.returncode == 0, result.stderr.decode()
