"""DiskList: items on disk, offsets in memory; readable from forked and spawned processes; the
file goes with the list, and only with its owner."""

import gc
import multiprocessing as mp
import os
import pickle

from pseudolabel.core.spill import DiskList


def _read(lst, i, q):
    q.put(lst[i])


def test_items_come_back_in_any_order_and_memory_is_offsets_only(tmp_path):
    lst = DiskList(dir=tmp_path)
    items = [{"counts": "x" * n, "size": [n, n]} for n in (5, 500, 0, 50)]
    assert [lst.append(it) for it in items] == [0, 1, 2, 3]
    assert len(lst) == 4 and [lst[i] for i in (3, 0, 2, 1)] == [items[3], items[0], items[2], items[1]]
    assert lst.nbytes == os.path.getsize(lst.path) > 555
    assert "x" * 500 not in pickle.dumps(lst).decode("latin-1")  # a worker gets offsets, not items


def test_forked_and_spawned_readers_and_cleanup_by_the_owner_only(tmp_path):
    lst = DiskList(dir=tmp_path)
    for n in range(3):
        lst.append([n] * n)
    lst[0]  # the parent has its file open before the fork, as a DataLoader's main process does
    for method in ("fork", "spawn"):
        ctx = mp.get_context(method)
        q = ctx.Queue()
        p = ctx.Process(target=_read, args=(lst, 2, q))
        p.start()
        assert q.get(timeout=60) == [2, 2]
        p.join(60)
        assert p.exitcode == 0 and os.path.exists(lst.path)  # a child never deletes it
    path = lst.path
    del lst
    gc.collect()
    assert not os.path.exists(path)
