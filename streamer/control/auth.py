"""Who may do what where: argon2 passwords, bearer tokens, roles granted on zone subtrees.

A role is granted on a zone and covers that zone's whole subtree. An action needs one of a
set of roles on *every* zone it touches: a commune operator cannot touch the next commune, and
a province admin can touch everything. Tokens are random; only their SHA-256 digest is stored
(with an expiry), so a dump of Redis gives no usable token. Pure decisions here; the API edge
(``api/core.py``) turns a refusal into 403 and an audit entry.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from common.secretfile import new_secret

from .models import USER_RE, Role, User, covers

TOKEN_TTL_S = 12 * 3600
USER_NAME = re.compile(USER_RE)
#: argon2id at argon2-cffi's default cost (RFC 9106's low-memory profile: 64 MiB, 3 passes)
#: until :func:`set_hash_cost`
_hasher = PasswordHasher()

VIEW = frozenset(Role)
OPERATE = frozenset({Role.OPERATOR, Role.ADMIN})
APPROVE = frozenset({Role.APPROVER, Role.ADMIN})
EMERGENCY = frozenset({Role.EMERGENCY, Role.ADMIN})
ADMIN = frozenset({Role.ADMIN})


class Forbidden(Exception):
    def __init__(self, message: str, zones: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.zones = list(zones)


def set_hash_cost(memory_kib: int, time_cost: int) -> None:
    """The cost of new password hashes (``password_hash_memory_kib``, ``_time_cost``). A stored
    hash keeps the cost it was made with: verifying reads it from the hash."""
    global _hasher
    if (memory_kib, time_cost) != (_hasher.memory_cost, _hasher.time_cost):
        _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(argon2_hash: str | None, password: str) -> bool:
    if argon2_hash is None:
        _hasher.hash(password)  # same cost for unknown users: no user enumeration by timing
        return False
    try:
        return _hasher.verify(argon2_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> tuple[str, str]:
    """A fresh bearer token and the digest under which it is stored."""
    token = new_secret(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def allowed(user: User, roles: frozenset[Role], zone: str) -> bool:
    return not user.disabled and any(
        g.role in roles and covers(g.zone, zone) for g in user.grants)


def require(user: User, roles: frozenset[Role], zones: Iterable[str], what: str) -> None:
    """Raise :class:`Forbidden` unless ``user`` holds one of ``roles`` over every zone."""
    zones = list(zones)
    denied = [z for z in zones if not allowed(user, roles, z)]
    if denied or (not zones and not any(g.role in roles for g in user.grants)):
        need = "/".join(sorted(r.value for r in roles))
        where = ", ".join(denied[:5]) or "any zone"
        raise Forbidden(f"{user.name} may not {what} in {where} (needs {need})", denied)


def visible(user: User, zone: str) -> bool:
    """Whether ``user`` may see ``zone``: it is inside, or on the path to, one of their grants."""
    return any(covers(g.zone, zone) or covers(zone, g.zone) for g in user.grants)
