"""The torch.distributed internals hpo relies on, in one place.

The store a process group was started with (torchrun's rendezvous, or the
group's own TCPStore) is reachable by every rank while the group lives, and
outlives a rank that stops: the one place a follower can leave the reason it
failed for rank 0 to read after the group's collectives broke. torch keeps it
behind a private accessor; ``tests/test_distributed.py`` checks it against
the installed torch, so an upgrade that moves it fails there by name.
"""

from __future__ import annotations


def default_store():
    """The key-value store of the default process group (``set``, ``get``, ``check``)."""
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()
