"""More than one Redis for the tests (issue 13): a master, its replica and a Sentinel; a
one-node Redis Cluster. Real ``redis-server`` processes on 127.0.0.1 (Sentinel and
Cluster speak TCP only), on free ports, their files in a temp dir.

As ``redis_server.py``: never the system's service, ``--save "" --appendonly no``, each
process stopped by its own pid.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from .ports import free_port
from .redis_server import REDIS_SERVER, stop_process, tail_log
from .waiting import wait_for

TYPE_CHECKING = False
if TYPE_CHECKING:
    import redis

HOST = "127.0.0.1"
SERVICE = "eximhook"  # the master's name in the Sentinel, as [store] redis_service's default


class Node:
    """One ``redis-server`` (or Sentinel) on 127.0.0.1:``port``, its files in ``dir``."""

    def __init__(self, where: Path, name: str) -> None:
        self.dir, self.name = where / name, name
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [REDIS_SERVER, "--bind", HOST, "--port", str(self.port), "--dir", str(self.dir), "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
                # a replica's first sync at once, not after the 5 s Redis waits for more replicas
                "--repl-diskless-sync-delay", "0"]

    def start(self, timeout: float = 15.0) -> Node:
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a free port can be taken between free_port() and the bind
            self.port = free_port()
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, cwd=str(self.dir))
            try:  # answering, or exited (a port taken meanwhile: tried again)
                wait_for(f"{self.name} to answer on {HOST}:{self.port}", self._up_or_gone, timeout)
            except AssertionError as exc:
                self.stop()
                raise AssertionError(f"{exc}: {self.log()}") from None
            if self.proc.poll() is None:
                return self
            if "Address already in use" not in self.log():
                break
        raise AssertionError(f"{self.name} exited {self.proc.returncode if self.proc else '?'}: {self.log()}")

    def _up_or_gone(self) -> bool:
        return (self.proc is not None and self.proc.poll() is not None) or self.ping()

    def ping(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def client(self) -> redis.Redis:
        import redis

        return redis.Redis(HOST, self.port, socket_timeout=5)

    def log(self) -> str:
        return tail_log(self.dir)

    def stop(self) -> None:
        """SIGTERM to our pid (SIGKILL if it hangs), and wait for it."""
        stop_process(self.proc)


class Replica(Node):
    def __init__(self, where: Path, name: str, master: Node) -> None:
        super().__init__(where, name)
        self.master = master

    def argv(self) -> list[str]:
        return [*super().argv(), "--replicaof", HOST, str(self.master.port)]


class Sentinel(Node):
    """A Sentinel watching ``master`` as ``SERVICE``; quorum 1, so it fails over alone."""

    def __init__(self, where: Path, name: str, master: Node) -> None:
        super().__init__(where, name)
        self.master = master

    def argv(self) -> list[str]:
        conf = self.dir / "sentinel.conf"  # the Sentinel rewrites it: its own file
        conf.write_text(f"bind {HOST}\nport {self.port}\ndir {self.dir}\nlogfile {self.dir / 'redis.log'}\n"
                        f"sentinel monitor {SERVICE} {HOST} {self.master.port} 1\n"
                        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                        f"sentinel failover-timeout {SERVICE} 10000\n")
        return [REDIS_SERVER, str(conf), "--sentinel"]


class SentinelGroup:
    """A master, one replica and a Sentinel that knows both: ready for a failover."""

    def __init__(self, where: Path) -> None:
        self.master = Node(where, "master")
        self.replica = Replica(where, "replica", self.master)
        self.sentinel = Sentinel(where, "sentinel", self.master)

    def start(self) -> SentinelGroup:
        self.master.start()
        self.replica.start()
        # in sync before the Sentinel first asks it: else the Sentinel sees its link down,
        # and asks again only 10 s later
        wait_for("the replica in sync", lambda: self.replica.client().info("replication")["master_link_status"] == "up")
        self.sentinel.start()
        wait_for("the Sentinel knows the replica, in sync", self._replica_known)
        return self

    def _replica_known(self) -> bool:
        sentinel = self.sentinel.client()
        replicas = sentinel.sentinel_slaves(SERVICE)
        return any(r["port"] == self.replica.port and r["master-link-status"] == "ok"
                   and "disconnected" not in r["flags"] for r in replicas)

    @property
    def nodes(self) -> list[Node]:
        return [self.master, self.replica, self.sentinel]

    def master_port(self) -> int:
        """The master's port, as the Sentinel tells a client (SENTINEL MASTERS, as redis-py
        asks: GET-MASTER-ADDR-BY-NAME names the promoted replica before the switch)."""
        return int(self.sentinel.client().sentinel_masters()[SERVICE]["port"])

    def fail_over(self, timeout: float = 15.0) -> None:
        """SENTINEL FAILOVER, and wait until the replica is the master: in the Sentinel's
        view and in its own."""
        assert self.sentinel.client().execute_command("SENTINEL", "FAILOVER", SERVICE)
        wait_for("the replica promoted", lambda: self.master_port() == self.replica.port
                 and self.replica.client().role()[0] == b"master", timeout)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


class ClusterNode(Node):
    """A one-node Redis Cluster: every slot on this node, so any key works, yet the node
    refuses what a real cluster refuses (CROSSSLOT: keys of one command or script in
    two slots)."""

    def __init__(self, where: Path, name: str = "cluster") -> None:
        super().__init__(where, name)
        self.bus_port = 0

    def argv(self) -> list[str]:
        self.bus_port = free_port()
        return [*super().argv(), "--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / "nodes.conf"),
                "--cluster-port", str(self.bus_port)]

    def start(self, timeout: float = 15.0) -> ClusterNode:
        super().start(timeout)
        client = self.client()
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        wait_for("cluster_state:ok", lambda: b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO"), timeout)
        return self

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"
