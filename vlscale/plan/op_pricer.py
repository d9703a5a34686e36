"""Prices ops on one rank (``vlscale.costs.compute.op_time``) and keeps the priced table that
``vlscale plan --ops`` prints; the same op is priced once, however often a step repeats it."""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
from dataclasses import dataclass, field
from functools import reduce

from vlscale.costs.compute import OpTime, RankResources, op_time
from vlscale.costs.ops import Op
from vlscale.errors import ConfigError

# every field of an op but its name, as one tuple (a C-level getter: read for every op priced)
_PRICE_KEY = operator.attrgetter(*(f.name for f in dataclasses.fields(Op) if f.name != "name"))


@dataclass
class OpPricer:
    """Prices ops on one rank and remembers them (the ``--ops`` table)."""

    res: RankResources
    efficiency: float  # framework efficiency γ
    table: list[OpTime] = field(default_factory=list)
    # the same op priced once: a SigLIP ring on W ranks repeats its block ops W times
    _seen: dict = field(default_factory=dict)
    _runs: list = field(default_factory=list)  # (priced ops, times repeated), in table order

    def __call__(self, ops) -> float:
        total = 0.0
        priced = []
        for op in ops:
            t = self._price(op)
            priced.append(t)
            total += t.time_s
        self.table.extend(priced)
        self._runs.append((priced, 1))
        return self._finite(total)

    def repeat(self, ops, times: int) -> float:
        """Price ``ops`` done ``times`` times over (a ring's blocks): each priced once, the
        table and the sum as if the list had been written out ``times`` times — the same
        additions in the same order, so the same float, in O(len(ops)) op pricing."""
        priced = [self._price(op) for op in ops]
        self.table.extend(priced * times)  # one shared entry per repetition
        self._runs.append((priced, times))
        total = reduce(operator.add, [t.time_s for t in priced] * times, 0.0)
        return self._finite(total)

    def total(self, value, keep=lambda t: True) -> float:
        """``sum(value(t) for t in self.table if keep(t))``, the same float (the same values in
        the same order through the same ``sum``), evaluating ``value`` once per distinct entry."""
        return sum(
            itertools.chain.from_iterable(
                [value(t) for t in priced if keep(t)] * times for priced, times in self._runs
            )
        )

    def _price(self, op) -> OpTime:
        key = _PRICE_KEY(op)  # the price does not depend on the name
        priced = self._seen.get(key)
        if priced is None:
            unnamed = dataclasses.replace(op, name="")
            priced = self._seen[key] = op_time(unnamed, self.res, self.efficiency)
        return dataclasses.replace(priced, op=op)

    @staticmethod
    def _finite(total: float) -> float:
        if not math.isfinite(total):  # e.g. --utilisation 1e-300: FLOPs / (u · peak) overflows
            raise ConfigError(
                "config",
                f"the ops would take {total} s; the sizes or efficiencies are out of range "
                "(check --utilisation and --global-batch)",
            )
        return total
