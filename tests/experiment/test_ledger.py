"""The SQLite ledger: one claim per cell across processes, finished cells never lost or redone."""

import multiprocessing

from unlearn_audit.experiment.ledger import Ledger


def test_claim_finish_and_no_second_claim(tmp_path):
    a = Ledger(tmp_path / "l.sqlite")
    b = Ledger(tmp_path / "l.sqlite")  # a second connection, as a second process would have
    a.add("c1", "eval", {"x": 1}, [], 0)
    b.add("c1", "eval", {"x": 1}, [], 0)  # registering twice is harmless
    assert len(a.cells()) == 1
    assert a.claim("c1")
    a.finish("c1", {"value": 42}, 1.5)
    assert not b.claim("c1")  # done: never handed out again
    assert b.get("c1").result == {"value": 42} and b.get("c1").status == "done"


def test_a_cell_held_by_a_dead_process_is_reclaimed(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.add("c1", "eval", {}, [], 0)
    with ledger.transaction() as c:
        c.execute("UPDATE cells SET status='running', owner=? WHERE id='c1'", ("localhost-never:999999",))
    # a foreign host is assumed alive; a dead pid on this host is not
    assert not ledger.claim("c1")
    import socket

    with ledger.transaction() as c:
        c.execute("UPDATE cells SET owner=? WHERE id='c1'", (f"{socket.gethostname()}:999999",))
    assert ledger.claim("c1")


def claim_all(path, ids, queue):
    ledger = Ledger(path)
    queue.put([i for i in ids if ledger.claim(i)])


def test_two_processes_never_claim_the_same_cell(tmp_path):
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    ids = [f"c{i}" for i in range(60)]
    for n, i in enumerate(ids):
        ledger.add(i, "eval", {"n": n}, [], n)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=claim_all, args=(str(path), ids, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert not set(got[0]) & set(got[1])
    assert set(got[0]) | set(got[1]) == set(ids)
