"""The floor of any Python proxy on this machine: a byte relay that parses nothing.

    python bench/python_floor.py LISTEN_PORT UPSTREAM_PORT

One process, one raw ``select.epoll`` loop, no classes, no HTTP: each client
connection gets its own upstream connection (opened at accept, as a pooled
keep-alive connection would be), and every read on one side is written to
the other. Per request it makes the same system calls as the least an HTTP
proxy with keep-alive upstreams can make (two wake-ups, two ``recv``, two
``send``) and as little Python as possible around them. What it costs per
request is a lower bound for fastproxy's HTTP engine, which must also parse
and rewrite both heads. Listens and connects on 127.0.0.1 only; it runs
until killed (bench.py starts and stops it as target ``python-floor``).
"""

from __future__ import annotations

import select
import socket
import sys

HOST = "127.0.0.1"


def serve(listen_port: int, upstream_port: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, listen_port))
    listener.listen(4096)
    listener.setblocking(False)
    epoll = select.epoll()
    epoll.register(listener.fileno(), select.EPOLLIN)
    peer: dict[int, socket.socket] = {}  # fd -> the other side's socket
    own: dict[int, socket.socket] = {}   # fd -> its socket
    lfd = listener.fileno()
    while True:
        for fd, _ in epoll.poll():
            if fd == lfd:
                _accept(listener, epoll, peer, own, upstream_port)
                continue
            sock = own.get(fd)
            if sock is None:
                continue
            try:
                data = sock.recv(65536)
                if data:
                    peer[fd].sendall(data)  # small answers: the send buffer has room
                    continue
            except OSError:
                pass
            _close_pair(fd, epoll, peer, own)


def _accept(listener: socket.socket, epoll: select.epoll, peer: dict[int, socket.socket],
            own: dict[int, socket.socket], upstream_port: int) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except BlockingIOError:
            return
        upstream = socket.create_connection((HOST, upstream_port), timeout=5)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            own[sock.fileno()] = sock
            epoll.register(sock.fileno(), select.EPOLLIN)
        peer[client.fileno()] = upstream
        peer[upstream.fileno()] = client


def _close_pair(fd: int, epoll: select.epoll, peer: dict[int, socket.socket],
                own: dict[int, socket.socket]) -> None:
    other = peer.pop(fd)
    peer.pop(other.fileno(), None)
    for sock in (own.pop(fd), other):
        own.pop(sock.fileno(), None)
        try:
            epoll.unregister(sock.fileno())
        except OSError:
            pass
        sock.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
