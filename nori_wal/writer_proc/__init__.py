"""The writer service: one process per directory group-commits what producers send over ZeroMQ.

    from nori_wal.writer_proc import WriterProcess
    with WriterProcess.spawn(WalConfig(dir="wal", fsync_policy=FsyncPolicy.always())) as writer:
        ...  # WalClient(writer.endpoint) or WalClient.for_dir("wal")

``process`` starts and stops the child (ready handshake, lifeline); ``server``
is its loop; ``endpoint`` says where a directory's writer listens.
"""

from .process import WriterProcess

__all__ = ["WriterProcess"]
