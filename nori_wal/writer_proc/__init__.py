"""The writer service: one process per directory group-commits what producers send over ZeroMQ.

    from nori_wal.writer_proc import WriterProcess
    with WriterProcess.spawn(WalConfig(dir="wal", fsync_policy=FsyncPolicy.always())) as writer:
        ...  # WalClient(writer.endpoint) or WalClient.for_dir("wal")

``process`` starts and stops the child (ready handshake, lifeline); ``server``
opens and runs a writer in this process (start-up, signals); ``loop`` is the
writer loop; ``group`` the pure part of one pass (requests into one write and
its replies); ``threads`` the flush thread and the signal/lifeline watcher;
``endpoint`` claims an ipc:// path (DIR/WRITER is ``nori_wal.endpoint_file``'s).
"""

from .process import WriterProcess

__all__ = ["WriterProcess"]
