"""known_hosts: reading it, matching a server's key against it, adding to it.

Host keys are always checked and never accepted silently. The files read are
``connection.known_hosts`` if set, else ssh_config's UserKnownHostsFile, else
``~/.ssh/known_hosts``; gpuhub's own ``known_hosts`` (written by ``gpuhub sites trust``) is
always read too. Hashed entries, wildcards and ``@revoked`` markers are understood.

paramiko's ``HostKeys`` is not used for this: it matches neither wildcards nor negated
patterns, reads an ``@revoked`` marker as a host name, and keeps one key per type and name.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gpuhub import paths
from gpuhub.transport.base import TransportError

if TYPE_CHECKING:
    import paramiko

    from gpuhub.transport.ssh_config import Endpoint


class HostKeyError(TransportError):
    """The server's host key is unknown, changed or revoked."""


class HostKeyUnknown(HostKeyError):
    """No known_hosts file has a key for this server yet."""


class HostKeyRefused(HostKeyError):
    """``sites trust`` refuses a key (it contradicts the published fingerprint or known_hosts)."""

    exit_code = 2


def gpuhub_known_hosts() -> Path:
    """gpuhub's own known_hosts file, where ``gpuhub sites trust`` writes."""
    return paths.user_config_dir() / "known_hosts"


def fingerprint(key_b64: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob given in base64."""
    import hashlib  # here, not at the top: a command run through a kept connection needs no OpenSSL

    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class KnownKey:
    path: Path
    lineno: int
    key_type: str
    key_b64: str
    revoked: bool = False

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_b64)

    @property
    def where(self) -> str:
        return f"{self.path} line {self.lineno}"


@dataclass(frozen=True)
class ServerKey:
    key_type: str
    key_b64: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_b64)

    @classmethod
    def of(cls, key: paramiko.PKey) -> ServerKey:
        return cls(key.get_name(), key.get_base64())


def _glob(pattern: str, name: str) -> bool:
    # fnmatch would read the brackets of "[host]:port" as a character class.
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name) is not None


def _hashed_match(entry: str, name: str) -> bool:
    import hashlib
    import hmac

    parts = entry.split("|")  # "", "1", salt, hash
    if len(parts) != 4:
        return False
    try:
        salt, expected = base64.b64decode(parts[2]), base64.b64decode(parts[3])
    except ValueError:
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), expected)


def _hosts_match(field: str, name: str) -> bool:
    name = name.lower()
    hit = False
    for pattern in field.split(","):
        negated = pattern.startswith("!")
        pattern = pattern[1:] if negated else pattern
        matched = _hashed_match(pattern, name) if pattern.startswith("|1|") else _glob(pattern.lower(), name)
        if matched and negated:
            return False
        hit = hit or matched
    return hit


def known_keys(files: tuple[Path, ...] | list[Path], name: str) -> list[KnownKey]:
    """Every known_hosts entry for ``name`` (``host`` or ``[host]:port``) in ``files``."""
    found = []
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise TransportError(f"cannot read known hosts file {path}: {exc.strerror or exc}") from None
        for lineno, line in enumerate(lines, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            marker = None
            if fields[0].startswith("@"):
                marker, fields = fields[0], fields[1:]
            if len(fields) < 3 or marker not in (None, "@revoked"):
                continue  # @cert-authority lines need certificate support
            hosts, key_type, key_b64 = fields[:3]
            if _hosts_match(hosts, name):
                found.append(KnownKey(path, lineno, key_type, key_b64, revoked=marker == "@revoked"))
    return found


def append_known_host(path: Path, name: str, key: ServerKey) -> str:
    """Add ``name key`` to the known_hosts file ``path``; return the line written."""
    line = f"{name} {key.key_type} {key.key_b64}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = ""
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            prefix = "" if handle.read(1) == b"\n" else "\n"
    with path.open("a", encoding="utf-8") as handle:
        handle.write(prefix + line)
    return line


def check_host_key(endpoint: Endpoint, offered: ServerKey, role: str, site: str, extra: tuple[Path, ...] = ()) -> None:
    """Raise HostKeyError unless ``offered`` is the known key of ``endpoint``."""
    known = known_keys((*endpoint.known_hosts_files, *extra), endpoint.key_name)
    for entry in known:
        if entry.revoked and entry.key_type == offered.key_type and entry.key_b64 == offered.key_b64:
            raise HostKeyError(
                f"host key of {endpoint.key_name} ({role}) is REVOKED in {entry.where}: "
                f"{offered.key_type} {offered.fingerprint}; refusing to connect"
            )
    valid = [k for k in known if not k.revoked]
    if any(k.key_type == offered.key_type and k.key_b64 == offered.key_b64 for k in valid):
        return
    if valid:
        old = next((k for k in valid if k.key_type == offered.key_type), valid[0])
        raise HostKeyError(
            f"HOST KEY CHANGED for {endpoint.key_name} ({role}): known {old.key_type} {old.fingerprint}, "
            f"offered {offered.key_type} {offered.fingerprint} — this may be an attack; if the site really "
            f"changed its keys, remove the old line from {old.path} (line {old.lineno}), e.g. "
            f"ssh-keygen -R '{endpoint.key_name}' -f {old.path}"
        )
    raise HostKeyUnknown(
        f"host key of {endpoint.key_name} ({role}) is not known: {offered.key_type} {offered.fingerprint} ; "
        f"if it matches the fingerprint the site publishes, run `gpuhub sites trust {site}`"
    )


def known_types(endpoint: Endpoint, extra: tuple[Path, ...] = ()) -> list[str]:
    return list(dict.fromkeys(k.key_type for k in known_keys((*endpoint.known_hosts_files, *extra), endpoint.key_name)))


# Host key types as the site file names them (connection.host_key_fingerprints) and as SSH does.
RSA_ALGOS = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
SHORT_TYPES = {
    "ed25519": ("ssh-ed25519",),
    "rsa": RSA_ALGOS,
    "ecdsa": ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"),
}


def short_key_type(key_type: str) -> str:
    """``ssh-ed25519`` -> ``ed25519``, ``ecdsa-sha2-nistp256`` -> ``ecdsa``, ``ssh-rsa`` -> ``rsa``."""
    key_type = key_type.lower()
    if key_type.startswith("ecdsa"):
        return "ecdsa"
    if key_type.startswith("rsa-sha2") or key_type == "ssh-rsa":
        return "rsa"
    return key_type.removeprefix("ssh-")
