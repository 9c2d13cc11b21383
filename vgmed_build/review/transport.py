"""The HTTP client under the Label Studio SDK: httpx's, less the reference cycle each response makes.

httpx (0.28, 0.29) wraps every response body in a stream that refers back to the response, so a response
and its body are freed only by the cyclic garbage collector, not when the last reference goes. Review
push and pull send one request per batch (and Label Studio's gunicorn workers close each connection,
so each request also leaves its connection in the cycle): the bodies waiting for a collection grew with
the number of batches (0.46 -> 0.86 MB of peak memory for a pull of 100 -> 800 tasks; at a full
collection's usual pace, hundreds of MB for millions of tasks). Once a response is read whole, its
stream is dropped and the response goes with its last reference (encode/httpx#3733 discusses the fix
upstream). Imported only when a client is made: start-up does not import httpx.
"""

from __future__ import annotations

import httpx


class AcyclicClient(httpx.Client):
    """``httpx.Client`` whose read responses hold no cycle."""

    def send(self, request: httpx.Request, **kwargs) -> httpx.Response:
        response = super().send(request, **kwargs)
        if response.is_closed:  # read whole (a streamed response is closed, and freed, by its reader)
            response.stream = httpx.ByteStream(b"")  # the read body stays in response.content
        return response
