"""Redaction of secrets in console, file and log output, and in the errors rlm_toolkit raises (the reference
for ``rust/redact.rs``).

In this order, each over the whole text:

1. Registered secrets (``RLM`` registers its client's API key and the password of its ``base_url``) become
   ``[REDACTED]``.
2. Tokens shaped like API keys, ``sk-`` + 20 or more of ``[A-Za-z0-9_-]`` not preceded by such a character,
   become ``sk-[REDACTED]``.
3. Bearer tokens: ``bearer`` in any case, then one space, ``%20`` or ``+`` (the URL-encoded forms), then 20 or
   more of ``[A-Za-z0-9._~+/=%-]``: the token becomes ``[REDACTED]``, the prefix stays as written.
4. URL passwords: in ``scheme://user:password@host``, the password becomes ``[REDACTED]``. As URL parsers
   read it, the user name ends at the first ``:`` and the password at the last ``@`` before the host, which
   ends at a ``/``, ``?``, ``#``, space or control character. A user name alone (``https://user@host``) is
   kept: register a token used as user name with ``register_url_secrets``.

Text with lone surrogates is redacted as any other (a surrogate is one more non-ASCII character).
"""

from __future__ import annotations

import builtins
import re
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any
from urllib.parse import unquote

from . import _backend
from .errors import InvalidSecretError

REDACTED = "[REDACTED]"
_KEY_SHAPED = re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{20,}")
_BEARER = re.compile(r"([Bb][Ee][Aa][Rr][Ee][Rr](?: |%20|\+))[A-Za-z0-9._~+/=%-]{20,}")
_URL_PASSWORD = re.compile(r"(://[^\x00-\x20\x7f/?#:]*:)[^\x00-\x20\x7f/?#]+(?=@)")
_AUTHORITY_END = re.compile(r"[\x00-\x20\x7f/?#]")
_secrets: list[str] = []
_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Never write ``value`` to a log, the console or an error message from now on, in any thread.

    Any non-empty value is registered, however short: a key of a few characters is then replaced wherever
    those characters occur, which makes the output hard to read but never shows the key. ``""`` is ignored.
    """
    if not isinstance(value, str):
        raise TypeError(f"register_secret() takes the secret as a str, not {type(value).__name__}")
    if not value:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidSecretError(
            "register_secret() was given a str with lone surrogates, which no HTTP client can send; "
            "pass the secret as the text the server expects"
        ) from None
    with _lock:
        if value in _secrets:
            return
        _secrets.append(value)
    native = _native_module()
    if native is not None:
        native.add_secret(value)


def register_url_secrets(url: str) -> None:
    """Register the credentials in ``url``'s user info: the password (as written and percent-decoded), or
    for a user name alone (``https://TOKEN@host``, where the token is the credential) the user name."""
    _, scheme_end, rest = url.partition("://")
    authority = _AUTHORITY_END.split(rest, maxsplit=1)[0]
    userinfo, at, _ = authority.rpartition("@")
    if not scheme_end or not at:
        return
    user, colon, password = userinfo.partition(":")
    credential = password if colon else user
    for form in (credential, unquote(credential)):
        register_secret(form)


def reference_redact(text: str) -> str:
    """The pure-Python definition (used by the reference backend and the tests)."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _KEY_SHAPED.sub("sk-" + REDACTED, text)
    text = _BEARER.sub(r"\g<1>" + REDACTED, text)
    return _URL_PASSWORD.sub(r"\g<1>" + REDACTED, text)


_loaded_native: ModuleType | None = None


def _native_module() -> ModuleType | None:
    """The native module; None only when it is missing and the pure-Python backend is the one chosen
    (``RLM_TOOLKIT_BACKEND=python``). Missing under the Rust backend, it is a ``BackendError``."""
    global _loaded_native
    if _loaded_native is None:
        try:
            from . import _core
        except ImportError:
            if _backend.resolve() == "python":
                return None
            _backend.load("rust")  # raises the BackendError that says how to get the native module
            raise
        _loaded_native = _core
    return _loaded_native


def redact(text: str) -> str:
    """``text`` with secrets replaced (by the Rust implementation unless the native module is absent and
    the pure-Python backend chosen)."""
    native = _native_module()
    return native.redact(text) if native is not None else reference_redact(text)


def _redacted_value(value: Any) -> Any:
    """``value`` with its str parts redacted: a str, or the strs inside lists, tuples and dicts."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted_value(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_redacted_value(item) for item in value)
    if isinstance(value, dict):
        return {_redacted_value(key): _redacted_value(item) for key, item in value.items()}
    return value


def _exception_chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception reachable from it through causes, contexts and exception groups."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        members = getattr(current, "exceptions", ()) if _is_exception_group(current) else ()
        linked = [current.__cause__, current.__context__, *members]
        pending.extend(link for link in linked if isinstance(link, BaseException))


def _is_exception_group(error: BaseException) -> bool:
    group_type = getattr(builtins, "BaseExceptionGroup", None)  # Python 3.11 and later
    return group_type is not None and isinstance(error, group_type)


def redact_exception_chain(error: BaseException) -> None:
    """Redact, in place, ``error`` and the exceptions chained to it (``__cause__``, ``__context__``, the
    members of an exception group): the str parts of ``args``, of the instance's attributes (such as
    ``openai.APIError.message`` and ``.body``, ``OSError.strerror``) and of ``__notes__``. ``str``,
    ``repr`` and the traceback Python prints then hold no secret, as long as they are built from those."""
    for current in _exception_chain(error):
        attributes = [("args", current.args), *vars(current).items()]
        # OSError keeps these outside __dict__, and its str() is built from them rather than from args.
        attributes += [(name, getattr(current, name, None)) for name in ("strerror", "filename", "filename2")]
        for name, value in attributes:
            redacted = _redacted_value(value)
            if redacted is not value and redacted != value:
                try:
                    setattr(current, name, redacted)
                except (AttributeError, TypeError):  # a read-only attribute: its text is left as it is
                    pass
