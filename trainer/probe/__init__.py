"""Measure this machine with torch and write a device profile the planner uses like a catalog
device::

    python -m trainer.probe --out profile.yaml [--name NAME] [--quick] [--no-comm] [--cpu]
    vlscale plan --hardware-file profile.yaml --device NAME ...

Modules, each importing only those above it:

- ``timing``: host wall-time and CUDA-event timers;
- ``kernels``: the kernels timed on either device (GEMM grid, bandwidth, per-kernel overhead,
  SDPA);
- ``reference``: the fixed reference kernel (the speed index's yardstick);
- ``assembly``: what both profiles assemble alike (source line, origins, α–β fits);
- ``collectives``: gloo / NCCL collectives between 2 local ranks, and FSDP2's per-collective cost;
- ``cpu``, ``cuda``: the probe of each device kind;
- ``__main__``: the command line (GPU 0 when torch sees one, unless ``--cpu``).

Every fit is torch-free, in ``vlscale.calibrate.probe_fits``.
"""
