"""The master's listening sockets: one SO_REUSEPORT socket per listen address
per worker slot, and the steering program that decides which of them the
kernel may hand new connections to.

Theory of operation
-------------------
All sockets bound to one address with SO_REUSEPORT form a *reuseport group*;
the kernel keeps them in an array in the order they started listening and,
for each new connection (its SYN), picks one. Each worker slot ``i`` owns the
``i``-th socket of every group. The master creates and keeps the sockets, so
they outlive any worker: a reload hands slot ``i``'s socket to the new worker
of slot ``i`` and connections waiting in its accept queue are simply accepted
by the new worker instead of the old one. Nothing is closed, so nothing is
refused or reset.

A socket whose slot has no accepting worker (still starting, crashed, being
retired) would collect connections nobody accepts, and closing it would reset
them. So the master attaches a classic BPF program to each group
(``SO_ATTACH_REUSEPORT_CBPF``) that returns ``random % n`` mapped onto the
indices of the slots that *do* have a ready worker. Removing a slot is then:
steer away from it, let its worker accept what is already queued, close.
Slots are added at the end of the array and removed from the end, so the
array order always equals the slot order (closing the last socket does not
move any other; see ``reuseport_detach_sock`` in net/core/sock_reuseport.c).

If the kernel refuses the program, steering is off (logged once) and the
kernel's own hash spreads connections over every socket.

Sockets may also be *received* (``service.Handover``): a predecessor started
by USR2 hands over its groups whole, so slot ``i`` keeps its socket across
the upgrade; systemd hands over one socket per listener name, which becomes
slot 0 (with ``ReusePort=yes`` the other slots get sockets of their own
beside it; without, every slot shares it). A socket the service manager
owns is never closed by us: a listener removed by a reload keeps it aside,
and gets it back if it returns.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
from collections.abc import Iterable, Sequence

from fastproxy.config import Address, Listener
from fastproxy.service import Handover

log = logging.getLogger("fastproxy")

SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
_SKF_AD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_RANDOM
_BPF_LD_W_ABS = 0x20
_BPF_ALU_MOD_K = 0x94
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06
_BACKLOG = 65535  # capped by net.core.somaxconn


def steering_program(targets: Sequence[int]) -> bytes:
    """Classic BPF: ``A = random % len(targets); return targets[A]``."""
    if not targets:
        raise ValueError("no target sockets")
    ins = [(_BPF_LD_W_ABS, 0, 0, _SKF_AD_RANDOM), (_BPF_ALU_MOD_K, 0, 0, len(targets))]
    for i, target in enumerate(targets):
        ins.append((_BPF_JEQ_K, 0, 1, i))
        ins.append((_BPF_RET_K, 0, 0, target))
    ins.append((_BPF_RET_K, 0, 0, targets[0]))
    return b"".join(struct.pack("HBBI", *i) for i in ins)


def bind_socket(address: Address) -> socket.socket:
    """A non-blocking SO_REUSEPORT listening socket (IPv6 sockets are v6-only)."""
    family = socket.AF_INET6 if address.is_ipv6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted sockets inherit TCP_NODELAY on Linux: one setsockopt per
        # listener instead of one per connection.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address.host, address.port))
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"{address}: {exc.strerror}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


class ListenerGroup:
    """The sockets of one listen address, index = worker slot (see
    ``socket_for``); ``kept`` are the service manager's, never closed while
    the master runs."""

    def __init__(self, address: Address, name: str = "",
                 received: list[socket.socket] | None = None,
                 kept: Iterable[socket.socket] = ()) -> None:
        self.address = address
        self.name = name        # the listener's, which systemd's sockets are matched by
        self.sockets: list[socket.socket] = list(received or [])
        self.kept = set(kept)
        # slots beyond the received sockets need SO_REUSEPORT on them to join their group
        self.shared = bool(self.sockets) and not self.sockets[0].getsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEPORT)
        self._steering_ok = True
        self._steered: tuple[int, ...] | None = None

    def grow(self, count: int) -> None:
        if self.shared:
            return
        bind_to = _bound_address(self.sockets[0]) if self.sockets else self.address
        while len(self.sockets) < count:
            self.sockets.append(bind_socket(bind_to))

    def shrink(self, count: int) -> None:
        while len(self.sockets) > max(count, len(self.kept)):
            sock = self.sockets.pop()
            if sock not in self.kept:
                sock.close()

    def socket_for(self, slot: int) -> socket.socket:
        return self.sockets[slot % len(self.sockets)]

    def steer(self, slots: Iterable[int]) -> None:
        targets = tuple(sorted(s for s in set(slots) if s < len(self.sockets)))
        if not targets:
            targets = tuple(range(len(self.sockets)))
        if len(self.sockets) < 2 or targets == self._steered or not self._steering_ok:
            return
        code = steering_program(targets)
        buf = ctypes.create_string_buffer(code)
        fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))
        try:
            self.sockets[0].setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
        except OSError as exc:
            self._steering_ok = False
            log.warning("reuseport steering unavailable on %s (%s): retiring a worker "
                        "slot may reset connections still in its accept queue",
                        self.address, exc)
            return
        self._steered = targets

    def close(self) -> None:
        """Close every socket (at exit, or in a child; ``ListenerSet.release``
        keeps the service manager's)."""
        self.kept = set()
        self.shrink(0)


def _bound_address(sock: socket.socket) -> Address:
    host, port = sock.getsockname()[:2]
    return Address(str(host), int(port))


class ListenerSet:
    """All listening sockets of the master, keyed by listen address.

    Methods for the caller: ``apply(listeners, slots)`` binds (or takes
    from the handover) what a config needs and returns the groups it no
    longer needs (for the caller to ``release`` once their workers have
    drained them), ``resize(slots)``, ``sockets_for(slot, listeners)``,
    ``steer(slots)``, ``close()``. Raises OSError (from bind) leaving
    already-bound groups untouched.
    """

    def __init__(self, handover: Handover | None = None) -> None:
        self.groups: dict[str, ListenerGroup] = {}
        self.handover = handover or Handover({}, {})

    def apply(self, listeners: Sequence[Listener], slots: int,
              revivable: dict[str, ListenerGroup] | None = None) -> list[ListenerGroup]:
        wanted = {str(lst.listen): lst for lst in listeners}
        created: list[ListenerGroup] = []
        try:
            for key, listener in wanted.items():
                group = self.groups.get(key)
                if group is None and revivable and key in revivable:
                    group = self.groups[key] = revivable[key]
                    group.grow(slots)
                elif group is None:
                    received = self.handover.claim(listener.name, key)
                    group = ListenerGroup(listener.listen, listener.name, received,
                                          [s for s in received if self.handover.from_manager(s)])
                    created.append(group)
                    group.grow(slots)
                    self.groups[key] = group
        except BaseException:
            for group in created:
                self.groups.pop(str(group.address), None)
                self.release(group)
            raise
        removed = [g for k, g in self.groups.items() if k not in wanted]
        for group in removed:
            del self.groups[str(group.address)]
        return removed

    def resize(self, slots: int) -> None:
        """Grow every group to ``slots`` sockets (shrinking is ``retire``)."""
        for group in self.groups.values():
            group.grow(slots)

    def retire(self, slots: int) -> None:
        for group in self.groups.values():
            group.shrink(slots)

    def steer(self, slots: Iterable[int]) -> None:
        chosen = list(slots)
        for group in self.groups.values():
            group.steer(chosen)

    def sockets_for(self, slot: int, listeners: Sequence[Listener]) -> list[tuple[Listener, socket.socket]]:
        return [(lst, self.groups[str(lst.listen)].socket_for(slot)) for lst in listeners]

    def all_sockets(self) -> list[socket.socket]:
        """Every listening socket this master holds, handed-over ones set aside included."""
        return ([s for g in self.groups.values() for s in g.sockets]
                + self.handover.unclaimed())

    def by_address(self) -> dict[str, list[socket.socket]]:
        """Every group's sockets in slot order, for a successor (USR2)."""
        return {key: list(g.sockets) for key, g in self.groups.items()}

    def release(self, group: ListenerGroup) -> None:
        """Close a group no longer configured; the service manager's sockets
        are set aside, for a listener of that name that comes back."""
        if group.kept:
            self.handover.by_name.setdefault(group.name, []).extend(
                s for s in group.sockets if s in group.kept)
            group.sockets = [s for s in group.sockets if s not in group.kept]
            group.kept = set()
        group.close()

    def close(self) -> None:
        for group in self.groups.values():
            group.close()
        self.groups.clear()
        for sock in self.handover.unclaimed():
            sock.close()
        self.handover = Handover({}, {})
