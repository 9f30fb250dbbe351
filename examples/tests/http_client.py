"""Calls the `server` example over HTTP with nothing but Python's standard library.

usage: python3 http_client.py HOST:PORT TOKEN
"""

import json
import sys
import urllib.error
import urllib.request

addr, token = sys.argv[1], sys.argv[2]


def call(method, args, token=token, raw=None):
    """POSTs `args` to /Greeter/<method>: (status, body bytes)."""
    data = raw if raw is not None else json.dumps(args).encode()
    request = urllib.request.Request(f"http://{addr}/Greeter/{method}", data=data, method="POST")
    if token is not None:
        request.add_header("authorization", f"Bearer {token}")
    request.add_header("rpc-timeout-ms", "10000")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


status, body = call("hello", {"name": "Ada"})
assert status == 200, (status, body)
print("hello:", json.loads(body))

status, body = call("greet", {"name": "Ada", "language": "French"})
assert status == 200, (status, body)
print("greet:", json.loads(body))

status, body = call("greet", {"name": "Ada", "language": "Klingon"})
print(f"typed error {status}:", json.loads(body)["error"]["value"])

status, body = call("repeat", {"name": "Ada", "times": 2})
assert status == 200, (status, body)
print("stream:", [json.loads(line) for line in body.splitlines()])

status, body = call("hello", {"name": "Ada"}, token=None)
print(f"refused {status}:", json.loads(body)["error"]["kind"])

big = json.dumps({"name": "a" * (9 << 20)}).encode()
status, body = call("hello", None, raw=big)
print(f"too large {status}:", json.loads(body)["error"]["kind"])
