"""Fingerprints of passwords for changelog checksums.

A changed password must change the checksum of the repeatable that sets it,
but the checksum lives in the database, where it must not let anyone test
password guesses.  With the secrets file's random key it is a keyed HMAC
(fast, and useless without the file); a file without a key falls back to
salted scrypt (slow on purpose).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import OrderedDict
from typing import Final

from rolekit.secrets._secret import Secret

#: scrypt cost of :func:`fingerprint` without a key: ~16 MiB and tens of
#: milliseconds, so that a leaked checksum cannot cheaply be brute-forced
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_FINGERPRINT_CACHE_SIZE: Final = 1024

_fingerprint_cache: OrderedDict[tuple[bytes, bytes, str], str] = OrderedDict()
_fingerprint_lock = threading.Lock()


#: the dotenv key of the file's fingerprint key (no role key has this shape)
FINGERPRINT_KEY: Final = "rolekit.fingerprint_key"


def fingerprint(secret: Secret, *, salt: bytes, label: str, key: bytes | None = None) -> str:
    """Return a salted fingerprint of ``secret`` for changelog checksums.

    With *key* (the random key rolekit keeps in the secrets file itself, see
    :meth:`SecretsFile.fingerprint_key`) it is HMAC-SHA256 keyed with it: fast,
    and useless to whoever reads the changelog without the secrets file, since
    without the key no guess can be tested.  Without a key it falls back to
    the slow scrypt fingerprint described below.

    A changed password must change the checksum of the changeset that sets
    it, but the checksum is stored in the database and must not let anyone
    who reads it test password guesses cheaply.  So it is scrypt
    (n=2**14, r=8, p=1) of the password, salted with ``salt`` (a per-project
    or per-database random value) followed by ``label`` (the key, e.g.
    ``my_app_tom.password.dev``, so equal passwords of two roles differ).

    Results are kept in an in-process LRU cache keyed on the SHA-256 of the
    password, the salt and the label, so the cost is paid once per process.

    :raises ValueError: ``salt`` is empty (an unsalted fingerprint can be
        attacked with precomputed tables).
    """
    if not salt:
        raise ValueError("fingerprint salt must not be empty")
    raw = secret.reveal().encode("utf-8")
    if key is not None:
        message = b"\0".join((bytes(salt), label.encode("utf-8"), raw))
        return "hmac:" + hmac.new(key, message, hashlib.sha256).hexdigest()
    cache_key = (hashlib.sha256(raw).digest(), bytes(salt), label)
    with _fingerprint_lock:
        cached = _fingerprint_cache.get(cache_key)
        if cached is not None:
            _fingerprint_cache.move_to_end(cache_key)
            return cached
    digest = hashlib.scrypt(
        raw,
        salt=bytes(salt) + label.encode("utf-8"),
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=32,
    ).hex()
    with _fingerprint_lock:
        _fingerprint_cache[cache_key] = digest
        _fingerprint_cache.move_to_end(cache_key)
        while len(_fingerprint_cache) > _FINGERPRINT_CACHE_SIZE:
            _fingerprint_cache.popitem(last=False)
    return digest
