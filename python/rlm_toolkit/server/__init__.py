"""An embedded, OpenAI-compatible chat-completions server for offline testing.

:class:`LocalServer` speaks enough of the OpenAI HTTP API for the official
``openai`` client (sync and async, streaming or not) to work against it
unchanged; point the client at ``server.base_url`` with ``server.api_key``::

    with LocalServer() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "hi"}])

Endpoints
    ``POST /v1/chat/completions`` and ``GET /v1/models``. Any bearer token (or
    none) is accepted.

Where each part lives (each module's docstring states its behaviour)
    * ``local_server.py``: :class:`LocalServer` (starting and stopping, the
      routes, queueing replies and faults) and :func:`main_serve`.
    * ``replies.py``: what is answered: the deterministic default answers and
      the replies scripted with :meth:`LocalServer.queue_reply`.
    * ``protocol.py``: how it is sent: request validation, completion and
      stream chunk bodies, error bodies and the usage numbers.
    * ``faults.py``: what :meth:`~LocalServer.fail_next`,
      :meth:`~LocalServer.hang_next`, :meth:`~LocalServer.drop_next`,
      :meth:`~LocalServer.malform_next` and :meth:`~LocalServer.keep_alive_next`
      do to a request.
"""

from __future__ import annotations

from .faults import MalformedKind
from .local_server import DEFAULT_MODELS, LOCAL_API_KEY, LocalServer, main_serve

__all__ = ["DEFAULT_MODELS", "LOCAL_API_KEY", "LocalServer", "MalformedKind", "main_serve"]
