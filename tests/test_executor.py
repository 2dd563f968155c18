"""The step executor: funnel arithmetic, resume, recompute on config change, process pool, kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from openmedreason.run.executor import Shard, execute, step_outputs
from openmedreason.run.store import iter_rejected
from toy_steps import DropOdd, Gen, Num, OddConfig

HERE = Path(__file__).parent


def shards(n_items: int, per_shard: int) -> list[Shard]:
    items = list(range(1, n_items + 1))
    return [
        Shard(index=i, items=tuple(items[s : s + per_shard]), fingerprint=f"fp{s}")
        for i, s in enumerate(range(0, n_items, per_shard))
    ]


def kept_ids(root: Path, step: str) -> list[str]:
    ids: list[str] = []
    for p in step_outputs(root, step):
        ids += pq.read_table(p, columns=["id"]).column("id").to_pylist()
    return ids


def snapshot(root: Path) -> dict:
    """Everything a run produced that must not depend on how it was run."""
    out = {}
    for step in ("gen", "drop_odd"):
        for kind in ("kept", "rejected"):
            rows = []
            for p in step_outputs(root, step, kind):
                rows += pq.read_table(p).to_pylist()
            out[f"{step}/{kind}"] = sorted(rows, key=lambda r: r["id"])
    return out


def test_funnel_counts_and_rejects_keep_fields(tmp_path):
    res = execute(tmp_path, [Gen(), DropOdd()], shards(23, 5), batch_size=3, first_batch=2)
    gen, odd = res["steps"]["gen"], res["steps"]["drop_odd"]
    # 23 numbers x 2 copies; multiples of five (5,10,15,20) rejected
    # fan-out: 23 numbers read, each becomes 2 records
    assert gen == {"in": 46, "inputs": 23, "kept": 38, "rejected": {"test.multiple_of_five": 8}, "shards_done": 5}
    assert odd["inputs"] == odd["in"]
    assert odd["in"] == gen["kept"]
    assert odd["in"] == odd["kept"] + sum(odd["rejected"].values())
    assert odd["rejected"] == {"test.odd": 19}
    ids = kept_ids(tmp_path, "drop_odd")
    assert len(ids) == len(set(ids)) == odd["kept"]
    rejected = list(iter_rejected(step_outputs(tmp_path, "drop_odd", "rejected"), Num))
    rec, info = rejected[0]
    assert rec.tags and info["reject_reason"] == "test.odd" and info["reject_step"] == "drop_odd"
    assert info["reject_value"] == float(rec.value)


def test_rerun_skips_finished_work(tmp_path):
    calls = tmp_path / "calls.txt"
    steps = [Gen(), DropOdd({"calls_file": str(calls)})]
    first = execute(tmp_path / "run", steps, shards(20, 5), batch_size=4)
    n_calls = len(calls.read_text().splitlines())
    assert n_calls > 0
    again = execute(tmp_path / "run", steps, shards(20, 5), batch_size=4)
    assert again == first
    assert len(calls.read_text().splitlines()) == n_calls  # nothing recomputed


def test_config_change_recomputes_that_step_and_later_only(tmp_path):
    run = tmp_path / "run"
    execute(run, [Gen(), DropOdd()], shards(10, 5))
    gen_marker = run / "gen" / "_markers" / "00000.done.json"
    mtime = gen_marker.stat().st_mtime_ns
    res = execute(run, [Gen(), DropOdd({"sleep": 0.001})], shards(10, 5))
    assert gen_marker.stat().st_mtime_ns == mtime  # upstream untouched
    assert res["steps"]["drop_odd"]["in"] == res["steps"]["gen"]["kept"]
    # a changed upstream config invalidates the downstream step too
    res2 = execute(run, [Gen({"copies": 3}), DropOdd({"sleep": 0.001})], shards(10, 5))
    assert res2["steps"]["gen"]["in"] == 30
    assert res2["steps"]["drop_odd"]["in"] == res2["steps"]["gen"]["kept"]
    assert len(kept_ids(run, "drop_odd")) == res2["steps"]["drop_odd"]["kept"]


def test_fewer_shards_drop_stale_outputs(tmp_path):
    run = tmp_path / "run"
    execute(run, [Gen(), DropOdd()], shards(20, 5))
    res = execute(run, [Gen(), DropOdd()], shards(10, 5))
    assert res["steps"]["gen"]["in"] == 20
    assert len(kept_ids(run, "gen")) == res["steps"]["gen"]["kept"]


def test_process_pool_matches_in_process(tmp_path):
    a = execute(tmp_path / "a", [Gen(), DropOdd()], shards(30, 4), batch_size=5)
    b = execute(tmp_path / "b", [Gen(), DropOdd()], shards(30, 4), batch_size=5, workers=2)
    assert a == b
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")


def test_one_to_one_step_that_loses_a_record_fails(tmp_path):
    class Lossy(DropOdd):
        name = "lossy"

        def process(self, batch):
            res = super().process(batch)
            res.kept = res.kept[1:]
            return res

    with pytest.raises(RuntimeError, match="lost or invented"):
        execute(tmp_path, [Gen(), Lossy()], shards(10, 5))


KILL_SCRIPT = """
import sys
sys.path.insert(0, {here!r})
from pathlib import Path
from openmedreason.run.executor import execute
from test_executor import shards
from toy_steps import Gen, DropOdd
execute(Path(sys.argv[1]), [Gen(), DropOdd({{"sleep": 0.02}})], shards(60, 3), batch_size=2, first_batch=1)
"""


def test_kill_and_resume_gives_identical_output(tmp_path):
    clean = tmp_path / "clean"
    clean_funnel = execute(clean, [Gen(), DropOdd({"sleep": 0.02})], shards(60, 3), batch_size=2, first_batch=1)
    script = tmp_path / "job.py"
    script.write_text(KILL_SCRIPT.format(here=str(HERE)))
    killed = tmp_path / "killed"
    for wait_markers in (3, 9, 14):  # kill three times at different depths, then finish
        proc = subprocess.Popen([sys.executable, str(script), str(killed)])
        deadline = time.time() + 60
        while time.time() < deadline:
            done = list((killed / "drop_odd" / "_markers").glob("*.json")) if killed.exists() else []
            if len(done) >= wait_markers or proc.poll() is not None:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed_funnel = execute(killed, [Gen(), DropOdd({"sleep": 0.02})], shards(60, 3), batch_size=2, first_batch=1)
    assert resumed_funnel == clean_funnel
    assert snapshot(killed) == snapshot(clean)
    ids = kept_ids(killed, "drop_odd")
    assert len(ids) == len(set(ids))
    assert not list(killed.rglob("*.tmp"))


class StopAfter(DropOdd):
    """Raises StopRun (as the LLM budget does) once the calls file has ``limit`` lines."""

    name = "stop_after"

    def process(self, batch):
        from openmedreason.run.steps import StopRun

        calls = Path(self.config.calls_file)
        n = len(calls.read_text().splitlines()) if calls.exists() else 0
        if n >= 3 and not Path(str(calls) + ".go").exists():
            raise StopRun("budget reached (toy)")
        return super().process(batch)


def test_stop_run_keeps_finished_work_and_resumes(tmp_path):
    from openmedreason.run.steps import StopRun

    calls = tmp_path / "calls.txt"
    step = StopAfter({"calls_file": str(calls)})
    with pytest.raises(StopRun) as info:
        execute(tmp_path / "run", [Gen(), step], shards(20, 5), batch_size=4)
    partial = info.value.funnel
    assert partial["steps"]["stop_after"]["shards_done"] < 4
    Path(str(calls) + ".go").touch()
    full = execute(tmp_path / "run", [Gen(), step], shards(20, 5), batch_size=4)
    clean = execute(tmp_path / "clean", [Gen(), DropOdd()], shards(20, 5), batch_size=4)
    assert full["steps"]["stop_after"] == clean["steps"]["drop_odd"]
    # every batch was processed exactly once over the stopped run and its resume
    assert len(calls.read_text().splitlines()) == clean_batches(tmp_path / "clean")


def clean_batches(root: Path) -> int:
    return len(list((root / "drop_odd" / "_markers").glob("*-*.json")))


class FlagConfig(OddConfig):
    flag: str = ""


class WaitOnShard(DropOdd):
    name = "wait_on_shard"
    Config = FlagConfig

    def process(self, batch):
        from openmedreason.run.steps import Pending

        if any(r.value // 10 == 7 for r in batch) and not Path(self.config.flag).exists():
            raise Pending("waiting for a remote batch (toy)")
        return super().process(batch)


@pytest.mark.parametrize("workers", [1, 2])
def test_pending_shard_lets_others_finish(tmp_path, workers):
    from openmedreason.run.steps import Pending

    flag = tmp_path / "ready"
    step = WaitOnShard({"flag": str(flag)})
    with pytest.raises(Pending) as info:
        execute(tmp_path / "run", [Gen(), step], shards(20, 5), batch_size=4, workers=workers)
    assert info.value.shards == [1]  # number 7 lives in shard 1 (6..10)
    assert info.value.funnel["steps"]["wait_on_shard"]["shards_done"] == 3
    flag.touch()
    res = execute(tmp_path / "run", [Gen(), step], shards(20, 5), batch_size=4, workers=workers)
    assert res["steps"]["wait_on_shard"]["shards_done"] == 4
