"""bench.threads: /proc per-thread readings of a live process, and the report (synthetic)."""

from __future__ import annotations

import asyncio
import os
import threading

from bench import threads


def test_thread_stats_read_this_process_and_name_the_model_thread():
    from streams.handoff import ModelThread

    with ModelThread(name="streamlearner-model") as mt:
        async def main():
            return await mt.run(threading.get_native_id)

        tid = asyncio.run(main())
        stats = threads.thread_stats(os.getpid())
    assert stats[str(os.getpid())]["name"] == "event loop"
    assert stats[str(tid)]["name"] == "model_0"   # the OS-level name the product gives it
    assert all(s["cpu"] >= 0 and s["voluntary"] >= 0 and s["runqueue"] >= 0
               for s in stats.values())


def test_the_report_has_a_row_per_thread(tmp_path):
    row = {"process": 0, "thread": "serving_0", "cores": 0.75, "ms_per_event": 0.83,
           "voluntary_per_s": 72.0, "involuntary_per_s": 315.0, "runqueue_cores": 0.2}
    result = {"args": {"role": "worker", "threads": 2, "replicas": 1, "set": [], "lo": 0.2,
                       "hi": 0.9, "events": 9000},
              "seconds": 25.0, "window_seconds": 7.0, "events": 6272, "events_per_second": 908.0,
              "threads": [row, dict(row, thread="event loop", cores=0.19)],
              "machine": {"busy": 1.87, "idle": 0.1, "steal": 0.0}, "broker_cores": 0.02}
    threads.report(result, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "**908 events/s**" in md and "| 0 | serving_0 | 0.75 | 0.830 | 72 | 315 | 0.20 |" in md
    assert (tmp_path / "threads.png").stat().st_size > 0
