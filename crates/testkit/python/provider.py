"""A device/computer providing functions through the official anvil-uplink client.

Usage: provider.py URL KEY [NAME]
Prints READY once connected, then serves until killed.
"""
import sys
import time

import anvil.server

url, key = sys.argv[1], sys.argv[2]
name = sys.argv[3] if len(sys.argv) > 3 else "provider"


@anvil.server.callable
def add(a, b):
    return a + b


@anvil.server.callable
def whoami():
    return name


@anvil.server.callable
def fail_value(message):
    raise ValueError(message)


@anvil.server.callable
def fail_no_function():
    raise anvil.server.NoServerFunctionError("raised on purpose")


@anvil.server.callable
def hang(seconds):
    time.sleep(seconds)
    return "woke"


@anvil.server.callable
def echo(value):
    return value


@anvil.server.callable
def echo_kwargs(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@anvil.server.callable
def length(text):
    return len(text)


@anvil.server.callable
def greet_user():
    # What the official Pico W library's require_user=True does: ask the
    # server who the user of the calling browser session is (the nested
    # call carries this call's call-stack-id) and refuse without one.
    email = anvil.server.call("anvil.private.users.get_current_user_email", allow_remembered=True)
    if not email:
        raise anvil.server.PermissionDenied("You must log in to call greet_user")
    return "hello " + email


@anvil.server.callable
def call_app(fn, *args):
    # A call from inside a call: uplink -> server direction, nested.
    return anvil.server.call(fn, *args)


anvil.server.connect(key, url=url, quiet=True)
print("READY", flush=True)
anvil.server.wait_forever()
