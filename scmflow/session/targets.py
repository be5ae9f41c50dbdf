"""SSH targets and options: where and as whom to log in, and how to connect."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SSHTarget:
    """Where and as whom to log in; the password never shows in repr or logs.

    `host` is the operator's name for the host, shown in every message. The rest is the
    route, usually filled from ssh_config by `scmflow.sshconfig.resolve_target`: `address`
    (HostName) is what to connect to, `via` the bastion whose direct-tcpip channel carries
    the connection (ProxyJump; it may have its own `via`).
    """

    host: str
    port: int = 22
    user: str = "root"
    password: str | None = field(default=None, compare=False)
    address: str | None = None
    host_key_alias: str | None = None
    identity_files: tuple[Path, ...] = ()
    identities_only: bool = False
    via: SSHTarget | None = None

    @property
    def connect_address(self) -> str:
        """The name or address the TCP connection (or the bastion's channel) goes to."""
        return self.address or self.host

    @property
    def known_names(self) -> tuple[str, ...]:
        """known_hosts names, as OpenSSH uses them: HostKeyAlias, else HostName (`[..]:port` off 22).

        The first is where a new key is recorded. Off port 22 the bare HostName follows: like
        OpenSSH ("checking without port identifier"), a matching key there is trusted too.
        """
        if self.host_key_alias:
            return (self.host_key_alias,)
        address = self.connect_address
        return (known_host_name(address, self.port),) + ((address,) if self.port != 22 else ())

    @property
    def known_name(self) -> str:
        """The name a new host key is recorded under."""
        return self.known_names[0]

    @property
    def route(self) -> str:
        """`host` plus the bastions in front of it, for messages."""
        hops = []
        hop = self.via
        while hop is not None:
            hops.append(hop.host)
            hop = hop.via
        return self.host + "".join(f" via {name}" for name in hops)

    def __repr__(self) -> str:
        hidden = "None" if self.password is None else "'******'"
        extra = "".join(
            f", {name}={value!r}"
            for name, value in (
                ("address", self.address if self.address != self.host else None),
                ("host_key_alias", self.host_key_alias),
                ("via", self.via),
            )
            if value is not None
        )
        return (
            f"SSHTarget(host={self.host!r}, port={self.port}, user={self.user!r}, password={hidden}{extra})"
        )


def _default_known_hosts() -> tuple[Path, ...]:
    return (Path.home() / ".ssh" / "known_hosts", Path("/etc/ssh/ssh_known_hosts"))


@dataclass(frozen=True)
class SSHOptions:
    """How to connect: host-key files and policy, timeouts, keepalives, client keys.

    A host that stops answering (link cut, machine frozen) is noticed without waiting for
    a command's own timeout: paramiko sends a keepalive after `keepalive_interval` idle
    seconds, and the kernel drops a connection whose data stays unacknowledged for
    `keepalive_interval * keepalive_count_max` seconds (TCP_USER_TIMEOUT). A command in
    flight, or started after the host went silent, therefore fails with RemoteError
    within `dead_peer_bound` seconds. Connecting gives up after `connect_timeout`
    (each of TCP connect, SSH handshake and authentication is bounded by it).
    """

    known_hosts: tuple[Path, ...] = field(default_factory=_default_known_hosts)
    accept_new_host_keys: bool = False
    connect_timeout: float = 15.0
    keepalive_interval: float = 5.0
    keepalive_count_max: int = 3
    key_filenames: tuple[Path, ...] = ()
    use_agent: bool = True
    # None: hash a new known_hosts entry when the file already holds hashed ones
    hash_known_hosts: bool | None = None
    # below OpenSSH's default MaxSessions (10)
    max_channels: int = 8

    @property
    def dead_peer_bound(self) -> float:
        """Seconds within which a command on a silent host fails (see the class docstring)."""
        return self.keepalive_interval * (self.keepalive_count_max + 1) + 2.0


def known_host_name(host: str, port: int) -> str:
    """The name OpenSSH files a host under: `host`, or `[host]:port` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"
