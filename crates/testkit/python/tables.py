"""Data tables through the official anvil-uplink client: every call the
tests check, with the outcome of each printed as RESULT <json>.

Usage: tables.py URL KEY SCENARIO
Scenarios: all (the interop tour), log N (add N readings, printing ACK <n>
after each acknowledged one), count (rows in readings).
The tables are made by the test: devices(name text, active bool, tags
simpleObject), readings(t datetime, celsius number, device link:devices,
note text, day date), groups(name text, members links:devices),
counters(name text, n number).
"""
import json
import sys
import threading
import time
from datetime import date, datetime, timedelta, timezone

import anvil.server
import anvil.tables as tables
import anvil.tables.query as q
from anvil.tables import app_tables

url, key, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
extra = sys.argv[4:]
anvil.server.connect(key, url=url, quiet=True)
r = {}


def check(name, fn):
    try:
        r[name] = {"ok": fn()}
    except Exception as e:  # noqa: BLE001 - the type is what the test checks
        r[name] = {"error": type(e).__name__, "message": str(e)}


def report():
    print("RESULT " + json.dumps(r, default=str), flush=True)


BASE = datetime(2026, 12, 2, 14, 0, tzinfo=timezone.utc)

if scenario == "log":
    # Each row acknowledged by the server is printed at once: the test
    # kills the server and counts them after the restart.
    for i in range(int(extra[0])):
        app_tables.readings.add_row(t=BASE + timedelta(seconds=i), celsius=float(i))
        print("ACK %d" % (i + 1), flush=True)
    print("DONE", flush=True)
    sys.exit(0)

if scenario == "serve_views":
    # The app's server code: hands views of `notes` to client-key callers.
    @anvil.server.callable
    def notes_for(owner):
        return app_tables.notes.client_readable(owner=owner)

    @anvil.server.callable
    def writable_notes_for(owner):
        return app_tables.notes.client_writable(owner=owner)

    app_tables.notes.add_row(owner="ada", text="one")
    app_tables.notes.add_row(owner="ada", text="two")
    app_tables.notes.add_row(owner="eve", text="secret")
    print("READY", flush=True)
    anvil.server.wait_forever()

if scenario == "use_views":
    # A client key: no access of its own to `notes`, only the views.
    check("direct", lambda: app_tables.notes.search() and "read")
    ro = anvil.server.call("notes_for", "ada")
    check("ro_search", lambda: sorted(n["text"] for n in ro.search()))
    check("ro_len", lambda: len(ro.search()))
    check("ro_get_other", lambda: ro.get(text="secret"))
    check("ro_add", lambda: ro.add_row(owner="ada", text="three") and "added")
    check("ro_update", lambda: ro.get(text="one").update(text="changed") or "updated")
    rw = anvil.server.call("writable_notes_for", "ada")
    check("rw_add", lambda: rw.add_row(owner="ada", text="three")["text"])
    check("rw_add_outside", lambda: rw.add_row(owner="eve", text="forged") and "added")
    check("rw_move_outside", lambda: rw.get(text="three").update(owner="eve") or "moved")
    check("rw_after", lambda: sorted(n["text"] for n in rw.search()))
    check("rw_delete", lambda: rw.get(text="three").delete() or "deleted")
    check("rw_final", lambda: sorted(n["text"] for n in rw.search()))
    report()
    sys.exit(0)

if scenario == "auto":
    # The app lets its server code create columns by adding rows.
    d = app_tables.devices.add_row(name="pico-9")
    check("add", lambda: app_tables.devices.add_row(
        name="pico-10", firmware="1.2", uptime=3600, ok=True, seen=BASE,
        parent=d, extra={"a": 1}, group=[d], nothing=None)["firmware"])
    # `d` was cached before `firmware` existed: reading it asks the server
    # whether columns may appear (can_auto_create) and fetches it afresh.
    check("can_auto_create", lambda: d["firmware"])
    check("columns", lambda: sorted((c["name"], c["type"]) for c in app_tables.devices.list_columns()))
    check("update", lambda: (d.update(battery=3.7), app_tables.devices.get(name="pico-9")["battery"])[1])
    report()
    sys.exit(0)

if scenario == "count":
    r["count"] = len(app_tables.readings.search())
    report()
    sys.exit(0)

# --- the tour ---------------------------------------------------------
dev1 = app_tables.devices.add_row(name="pico-1", active=True, tags={"room": "greenhouse", "n": [1, 2]})
dev2 = app_tables.devices.add_row(name="pico-2", active=False)
r["dev1_name"] = dev1["name"]
r["dev2_tags_before"] = dev2["tags"]

for i in range(250):
    app_tables.readings.add_row(
        t=BASE + timedelta(seconds=i),
        celsius=20 + i / 100,
        device=dev1 if i % 2 == 0 else dev2,
        note="reading %d %s" % (i, "warm" if i > 200 else "cold"),
        day=date(2026, 12, 2),
    )

check("len_all", lambda: len(app_tables.readings.search()))
check("iterate_all", lambda: len({row.get_id() for row in app_tables.readings.search()}))
check("small_pages", lambda: len([row for row in app_tables.readings.search(q.page_size(7))]))
check("by_link", lambda: sorted({row["device"]["name"] for row in app_tables.readings.search(device=dev1)}))
check("by_link_count", lambda: len(app_tables.readings.search(device=dev1)))
check("greater_than", lambda: len(app_tables.readings.search(celsius=q.greater_than(22))))
check("less_than_or_equal", lambda: len(app_tables.readings.search(celsius=q.less_than_or_equal_to(20.04))))
check("between_datetimes", lambda: len(app_tables.readings.search(
    t=q.between(BASE + timedelta(seconds=10), BASE + timedelta(seconds=20)))))
check("like", lambda: len(app_tables.readings.search(note=q.like("reading 1%"))))
check("like_is_case_sensitive", lambda: len(app_tables.readings.search(note=q.like("READING 1%"))))
check("ilike", lambda: len(app_tables.readings.search(note=q.ilike("READING 1%"))))
check("full_text", lambda: len(app_tables.readings.search(note=q.full_text_match("warm"))))
check("any_of_values", lambda: len(app_tables.readings.search(celsius=q.any_of(20.0, 20.02, 99))))
check("any_of_positional", lambda: len(app_tables.readings.search(q.any_of(device=dev2, celsius=20.0))))
check("all_of_positional", lambda: len(app_tables.readings.search(
    q.all_of(device=dev1, celsius=q.less_than(20.1)))))
check("not_", lambda: len(app_tables.readings.search(device=q.not_(dev1))))
check("none_of", lambda: len(app_tables.readings.search(celsius=q.none_of(20.0, 20.01))))
check("order_by_desc", lambda: [row["celsius"] for row in app_tables.readings.search(
    tables.order_by("celsius", ascending=False))][:3])
check("order_two_columns", lambda: [row["celsius"] for row in app_tables.readings.search(
    tables.order_by("device"), tables.order_by("t", ascending=False), q.page_size(3))][:2])
check("slice", lambda: [row["celsius"] for row in app_tables.readings.search()[120:123]])
first = app_tables.readings.search(tables.order_by("t"))[0]
check("datetime_round_trip", lambda: first["t"] == BASE)
check("datetime_value", lambda: first["t"].isoformat())
check("date_round_trip", lambda: first["day"] == date(2026, 12, 2))
check("get", lambda: app_tables.devices.get(name="pico-1")["active"])
check("get_none", lambda: app_tables.devices.get(name="nobody"))
check("get_two", lambda: app_tables.readings.get(day=date(2026, 12, 2)))
check("get_by_id", lambda: app_tables.devices.get_by_id(dev1.get_id())["name"])
check("get_by_id_missing", lambda: app_tables.devices.get_by_id("[1,999999]"))
check("has_row", lambda: app_tables.devices.has_row(dev1))
check("simple_object", lambda: app_tables.devices.get(name="pico-1")["tags"])


def update():
    dev2.update(active=True, tags={"fixed": True})
    dev2["name"] = "pico-2b"
    again = app_tables.devices.get_by_id(dev2.get_id())
    return [again["name"], again["active"], again["tags"]]


check("update", update)


def delete():
    row = app_tables.readings.add_row(celsius=-1.0, note="scratch")
    rid = row.get_id()
    row.delete()
    gone = app_tables.readings.get_by_id(rid)
    try:
        row["celsius"]
        read = "read"
    except tables.RowDeleted:
        read = "RowDeleted"
    return [gone, read]


check("delete", delete)


def links():
    g = app_tables.groups.add_row(name="all", members=[dev1, dev2])
    found = app_tables.groups.search(members=[dev1])
    return [len(found), sorted(m["name"] for m in g["members"]),
            sorted(m["name"] for m in list(found)[0]["members"])]


check("links", links)
check("list_columns", lambda: [(c["name"], c["type"]) for c in app_tables.readings.list_columns()])

# Bad input: a clear error, nothing written.
before = len(app_tables.readings.search())
check("wrong_type", lambda: app_tables.readings.add_row(celsius="hot") and "added")
check("unknown_column", lambda: app_tables.readings.add_row(kelvin=3) and "added")
check("link_to_wrong_table", lambda: app_tables.readings.add_row(device=list(app_tables.groups.search())[0]) and "added")
check("oversized", lambda: app_tables.readings.add_row(note="x" * (1024 * 1024 + 1)) and "added")
check("no_such_table", lambda: app_tables.nosuch.add_row(x=1))
check("rows_unchanged", lambda: len(app_tables.readings.search()) - before)
check("to_csv", lambda: app_tables.devices.to_csv().get_bytes().decode())
check("search_to_csv", lambda: app_tables.readings.search(celsius=q.less_than(20.02)).to_csv().get_bytes().decode())
check("csv_content_type", lambda: app_tables.devices.to_csv().content_type)


# A transaction that conflicts and retries: four threads each add one to
# a counter five times, reading and writing inside @in_transaction with a
# pause between, so that they race. Every increment must land.
counter = app_tables.counters.add_row(name="hits", n=0)
attempts = [0]
lock = threading.Lock()


@tables.in_transaction
def increment():
    with lock:
        attempts[0] += 1
    row = app_tables.counters.get(name="hits")
    n = row["n"]
    time.sleep(0.02)
    row["n"] = n + 1


def worker():
    for _ in range(5):
        increment()


threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check("counter", lambda: app_tables.counters.get(name="hits")["n"])
r["attempts"] = attempts[0]


@tables.in_transaction
def abort_midway():
    app_tables.counters.add_row(name="aborted", n=1)
    raise ValueError("changed my mind")


check("rolled_back", abort_midway)
check("rolled_back_rows", lambda: len(app_tables.counters.search(name="aborted")))


def nested():
    with tables.Transaction():
        with tables.Transaction():
            pass


check("nested_transaction", nested)

def batches():
    a = app_tables.counters.add_row(name="ba", n=1)
    b = app_tables.counters.add_row(name="bb", n=2)
    with tables.batch_update:
        a["n"] = 10
        b["n"] = 20
    values = sorted(r["n"] for r in app_tables.counters.search(name=q.any_of("ba", "bb")))
    with tables.batch_delete:
        a.delete()
        b.delete()
    return [values, len(app_tables.counters.search(name=q.any_of("ba", "bb")))]


check("batches", batches)
check("delete_all_rows", lambda: (app_tables.groups.delete_all_rows(), len(app_tables.groups.search()))[1])
check("search_delete_all", lambda: (app_tables.readings.search(note=q.like("%warm")).delete_all_rows(),
                                    len(app_tables.readings.search()))[1])

# Media: more than one chunk each way.
import anvil  # noqa: E402
blob = anvil.BlobMedia("image/png", b"\x89PNG" + bytes(range(250)) * 1200, name="p.png")


def media():
    app_tables.photos.add_row(name="a", image=blob)
    got = app_tables.photos.get(name="a")["image"]
    return [got.content_type, got.name, got.length, got.get_bytes() == blob.get_bytes()]


def media_copy():
    got = app_tables.photos.get(name="a")["image"]
    app_tables.photos.add_row(name="b", image=got)
    copy = app_tables.photos.get(name="b")["image"]
    return [copy.get_bytes() == blob.get_bytes(), copy.name]


def media_cleared():
    row = app_tables.photos.get(name="b")
    row["image"] = None
    return app_tables.photos.get(name="b")["image"]


check("media", media)
check("media_copy", media_copy)
check("media_cleared", media_cleared)
check("media_too_big", lambda: app_tables.photos.add_row(
    name="big", image=anvil.BlobMedia("application/octet-stream", b"x" * (5 * 1024 * 1024))) and "added")
check("media_rows", lambda: len(app_tables.photos.search()))
check("media_in_text_column", lambda: app_tables.photos.add_row(name=blob) and "added")
report()
