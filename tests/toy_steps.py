"""Toy steps for executor tests: a fan-out source step and a 1:1 filter, over integers."""

from __future__ import annotations

import os
import time
from typing import Sequence

from openmedreason.reasons import reason
from openmedreason.records import Record
from openmedreason.run.steps import Rejected, Step, StepConfig, StepResult

FIVE = reason("test.multiple_of_five", "toy: source number divisible by five")
ODD = reason("test.odd", "toy: odd value")


class Num(Record):
    value: int
    tags: list[str] = []


class GenConfig(StepConfig):
    copies: int = 2


class Gen(Step[int, Num]):
    name = "gen"
    version = "1"
    Config = GenConfig
    output = Num
    one_to_one = False

    def process(self, batch: Sequence[int]) -> StepResult[Num]:
        out: StepResult[Num] = StepResult()
        for n in batch:
            for k in range(self.config.copies):
                rec = Num(id=f"{n}-{k}", value=n * 10 + k, tags=[str(n)])
                if n % 5 == 0:
                    out.rejected.append(Rejected(rec, FIVE, value=n))
                else:
                    out.kept.append(rec)
        return out


class OddConfig(StepConfig):
    sleep: float = 0.0
    calls_file: str | None = None


class DropOdd(Step[Num, Num]):
    name = "drop_odd"
    version = "1"
    Config = OddConfig
    output = Num

    def process(self, batch: Sequence[Num]) -> StepResult[Num]:
        if self.config.calls_file:
            with open(self.config.calls_file, "a") as fh:
                fh.write(f"{len(batch)}\n")
        if self.config.sleep:
            time.sleep(self.config.sleep)
        out: StepResult[Num] = StepResult()
        for r in batch:
            if r.value % 2:
                out.rejected.append(Rejected(r, ODD, value=r.value, detail="odd"))
            else:
                out.kept.append(r)
        return out
