"""Bytes that autograd keeps for backward, counted once per storage.

``torch.autograd.graph.saved_tensors_hooks`` sees every tensor an op saves for backward
(including ``ctx.save_for_backward`` in custom Functions). Several ops often save views of the
same buffer (a gathered (B, d) block and its transpose), so bytes are summed over unique
storages, which is what stays resident until backward frees it. Used by the loss-memory test
and ``benchmarks/loss_memory.py`` to compare the loss implementations.
"""

from __future__ import annotations

import torch


class SavedTensorBytes:
    """Context manager: ``with SavedTensorBytes() as saved: loss = f(...)``; then ``saved.bytes``.

    Only tensors saved inside the block are counted; parameters and inputs saved by an op are
    included (they are pinned by the graph as well, even if something else also holds them).
    """

    def __init__(self) -> None:
        self._storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        self._storages[storage.data_ptr()] = storage.nbytes()
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())

    def __enter__(self) -> SavedTensorBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def allocator_peak_bytes(fn) -> int:
    """The CPU allocator's high-water mark while ``fn()`` runs, above the level at its start
    (torch.profiler's memory events; 0 when ``fn`` allocates nothing)."""
    import json
    import os
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(trace)
        with open(trace) as f:
            events = json.load(f)["traceEvents"]
    mem = [e["args"] for e in events if e.get("name") == "[memory]"]
    if not mem:
        return 0
    start = mem[0]["Total Allocated"] - mem[0]["Bytes"]  # level before the first (de)allocation
    return max(m["Total Allocated"] for m in mem) - start
