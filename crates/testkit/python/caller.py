"""Calls functions through the official anvil-uplink client and prints RESULT <json>.

Usage: caller.py URL KEY SCENARIO [ARGS...]
"""
import json
import sys
import threading
import time

import anvil.server

url, key, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
extra = sys.argv[4:]


def outcome(fn, *args, **kwargs):
    try:
        return {"ok": anvil.server.call(fn, *args, **kwargs)}
    except Exception as e:  # noqa: BLE001 - the type is what the test checks
        return {
            "error": type(e).__name__,
            "module": type(e).__module__,
            "message": str(e),
            "error_type": (getattr(e, "error_obj", None) or {}).get("type"),
        }


def report(value):
    print("RESULT " + json.dumps(value), flush=True)


if scenario == "basics":
    # The app side of a device->app call; needs a server key to register.
    @anvil.server.callable
    def app_log(reading):
        return "logged %s" % (reading,)


try:
    anvil.server.connect(key, url=url, quiet=True)
except Exception as e:  # noqa: BLE001 - e.g. the server's certificate was refused
    report({"connect_error": "%s: %s" % (type(e).__name__, e)})
    sys.exit(0)
print("CONNECTED", flush=True)

if scenario == "basics":
    report({
        "add": outcome("add", 2, 3),
        "unicode": outcome("echo", "héllo wörld ✓ 日本語 🚀"),
        "kwargs": outcome("echo_kwargs", 1, unit="C", nested={"a": [1, 2]}),
        "value_error": outcome("fail_value", "offset must be positive"),
        "anvil_error": outcome("fail_no_function"),
        "missing": outcome("no_such_function", 1),
        "echo": outcome("anvil.private.echo", "keep-alive"),
        "origin": outcome("anvil.private.get_app_origin"),
        "nested": outcome("call_app", "app_log", 21.5),
        "big_int": outcome("echo", 2**70),
    })
elif scenario == "concurrent":
    n = int(extra[0])
    results = [None] * n

    def worker(i):
        results[i] = outcome("add", i, 1000)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report({"ok": sum(1 for i, r in enumerate(results) if r == {"ok": i + 1000}),
            "bad": [r for i, r in enumerate(results) if r != {"ok": i + 1000}][:5]})
elif scenario == "large":
    size = int(extra[0])
    text = "x" * size
    report({"length": outcome("length", text), "echo_len": len(outcome("echo", text).get("ok", ""))})
elif scenario == "hang":
    # The test kills the provider while this call waits.
    print("CALLING", flush=True)
    started = time.time()
    r = outcome("hang", 600)
    r["seconds"] = time.time() - started
    report(r)
elif scenario == "hold":
    seconds = float(extra[0])
    first = outcome("add", 1, 1)
    time.sleep(seconds)
    report({"first": first, "after": outcome("add", 2, 2)})
elif scenario == "call":
    args = json.loads(extra[1]) if len(extra) > 1 else []
    report(outcome(extra[0], *args))
else:
    report({"error": "unknown scenario " + scenario})
