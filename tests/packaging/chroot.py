"""Fresh Debian systems for the release and package tests: debootstrap into a temp dir.

Each command runs in its own mount namespace (``unshare --mount``): /proc, /sys and /dev
are mounted for it and vanish with it, so a killed test leaves no mount behind on the
machine. ``net=False`` adds a network namespace with only its own loopback: what runs
there can reach nothing, and its Exim can take port 25 without meeting the machine's.
Nothing starts services (a policy-rc.d that refuses, as in Debian's own build chroots):
there is no systemd as PID 1 here, and the tests start what the units start themselves.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
RELEASES = {"bookworm": "12", "trixie": "13"}
DEBOOTSTRAP = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
# ${PATH} of a login shell of root's on Debian: no pyenv, no venv of the machine's
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's, from ca-certificates


class ChrootError(AssertionError):
    """A command in the chroot failed: its output is in the message."""


class Chroot:
    def __init__(self, root: Path, release: str) -> None:
        self.root, self.release = root, release

    @classmethod
    def make(cls, root: Path, release: str) -> Chroot:
        """Debian ``release``, minbase (essential packages and apt), from Debian's archive."""
        done = subprocess.run([DEBOOTSTRAP, "--variant=minbase", release, str(root), MIRROR],
                              capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise ChrootError(f"debootstrap {release}: {done.stdout[-3000:]}{done.stderr[-3000:]}")
        shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
        # the certificate authorities this machine's admin added (a proxy's, say): the
        # chroot's ca-certificates takes them in when it is installed, and pip trusts them
        local_cas = Path("/usr/local/share/ca-certificates")
        if local_cas.is_dir():
            shutil.copytree(local_cas, root / "usr" / "local" / "share" / "ca-certificates", dirs_exist_ok=True)
        policy = root / "usr" / "sbin" / "policy-rc.d"
        policy.write_text("#!/bin/sh\n# eximhook's package tests: no service starts here\nexit 101\n")
        policy.chmod(0o755)
        return cls(root, release)

    def run(self, script: str, *, net: bool = True, timeout: float = 1800, check: bool = True,
            ) -> subprocess.CompletedProcess[str]:
        """``script`` (sh) as root in the chroot; stdout and stderr together."""
        r = shlex.quote(str(self.root))
        # the root a mount point of its own: tests in there make mount namespaces of their
        # own (unshare --propagation private), which a plain directory as / refuses
        mounts = (f"mount --bind {r} {r} && mount -t proc proc {r}/proc && mount -t sysfs sys {r}/sys && "
                  f"mount --rbind /dev {r}/dev && mount -t tmpfs -o mode=1777 shm {r}/dev/shm && "
                  f"mount -t tmpfs -o mode=0755 run {r}/run")
        if not net:
            mounts = f"ip link set lo up && {mounts}"
        inner = f"{mounts} && exec chroot {r} /bin/sh -c {shlex.quote('set -e; ' + script)}"
        argv = ["unshare", "--mount", "--propagation", "private", *([] if net else ["--net"]), "sh", "-c", inner]
        env = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}
        if (self.root / CA_BUNDLE.lstrip("/")).exists():
            env["PIP_CERT"] = CA_BUNDLE  # pip's own bundle knows no CA of the machine's
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                              check=False, env=env)
        if check and done.returncode != 0:
            raise ChrootError(f"in {self.release} ({self.root}), exit {done.returncode}:\n$ {script}\n"
                              f"{done.stdout[-6000:]}")
        return done

    def apt_install(self, *packages: str) -> None:
        self.run("apt-get update -qq && apt-get install -y -qq --no-install-recommends "
                 + " ".join(map(shlex.quote, packages)) + " >/dev/null")

    def copy_in(self, source: Path, dest: str) -> Path:
        """A copy of the file ``source`` at ``dest`` in the chroot."""
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        return target


def copy_checkout(checkout: Path, target: Path) -> Path:
    """What a clean clone of ``checkout`` holds (the files git tracks, and new ones not
    ignored: no venv, build or cache of this machine's), copied to ``target``."""
    listed = subprocess.run(["git", "-C", str(checkout), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    for name in filter(None, listed.decode("utf-8", "surrogateescape").split("\0")):
        source = checkout / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, not yet in the index
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name, follow_symlinks=False)
    return target
