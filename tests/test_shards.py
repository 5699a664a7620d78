"""A study spread over shards: the merged results are the one-process study's, --report waits for every shard, and a
shard waits for the pretraining run another shard trains."""

import csv
import os
import shutil

import pytest
import torch
from test_benchmark import MINI

SHARDED = [*MINI, "bench.methods=[mdm,random,unet-scratch,filterbank]", "bench.budget_methods=[mdm]"]


def rows(path):
    """``results.csv`` without the seconds each run took (which differ between any two runs)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(path))]


def test_two_shards_and_a_report_give_the_one_process_results(tmp_path, configs_dir, capsys):
    from mdm import benchmark
    from mdm.common.config_io import load
    from mdm.common.errors import ConfigError
    from mdm.study.sweep import run_benchmark

    sharded, single = tmp_path / "sharded", tmp_path / "single"
    args = ["--config", os.path.join(configs_dir, "bench_demo.yaml"), "--out", str(sharded),
            *[a for o in SHARDED for a in ("--set", o)]]
    assert benchmark.main([*args, "--shard", "1/2"]) == 0  # the one pretraining run (mdm) and half the runs
    assert not (sharded / "results.csv").exists()
    with pytest.raises(ConfigError, match=r"run\(s\) of this study are not finished .*--shard K/N"):
        run_benchmark(load(os.path.join(configs_dir, "bench_demo.yaml"), [*SHARDED, f"bench.out_dir={sharded}"]),
                      torch.device("cpu"), torch.device("cpu"), log=lambda *_: None, report=True)
    assert benchmark.main([*args, "--shard", "2/2"]) == 0
    done = sorted(p.parent.relative_to(sharded).as_posix() for p in sharded.rglob("metrics.json"))
    assert len(done) == 2 * 4 + 2  # 2 fractions x 4 methods, and the budget curve's runs of mdm (steps 0, 2)
    assert benchmark.main([*args, "--report"]) == 0
    assert "this call took" in (sharded / "results.md").read_text()
    assert benchmark.main(["--shard", "3/2", *args]) == 2
    assert "--shard: '3/2' is not K/N" in capsys.readouterr().err

    single.mkdir()  # the same study in one process, from the same pretraining run (copied in)
    shutil.copytree(sharded / "pretrain_mdm", single / "pretrain_mdm")
    cfg = load(os.path.join(configs_dir, "bench_demo.yaml"), [*SHARDED, f"bench.out_dir={single}"])
    run_benchmark(cfg, torch.device("cpu"), torch.device("cpu"), log=lambda *_: None)
    for name in ("results.csv", "budget.csv"):
        assert rows(sharded / name) == rows(single / name), name
    assert (sharded / "verdicts.csv").read_text() == (single / "verdicts.csv").read_text()


class FakeRun:
    """A stand-in for ``runs.StudyRun``: what ``run_when_ready`` reads of a run."""

    def __init__(self, pretraining, cfg, done_list):
        self.pretraining, self.cfg, self.done, self.label, self.done_list = pretraining, cfg, False, "fake", done_list

    def run(self, device):
        self.done_list.append(self)


def test_a_shard_runs_what_is_ready_and_waits_for_another_shards_pretraining(tmp_path, monkeypatch):
    """Two runs: one reads a pretraining run that has finished, one a run another shard is still training; the ready
    one runs first, then the shard waits (polling) until the other's export appears, and says once what it waits
    for."""
    from types import SimpleNamespace

    from mdm.study import shards

    ready_run, training = tmp_path / "pretrain_mdm", tmp_path / "pretrain_ddpm"
    finished = {ready_run}
    monkeypatch.setattr(shards, "export_is_current", lambda run, steps: run in finished)
    polls = []

    def sleep(seconds):  # the other shard finishes after three polls
        polls.append(seconds)
        if len(polls) == 3:
            finished.add(training)

    monkeypatch.setattr(shards.time, "sleep", sleep)
    cfg = SimpleNamespace(bench=SimpleNamespace(pretrain_steps=4))
    order, said = [], []
    waiting, ready = FakeRun(training, cfg, order), FakeRun(ready_run, cfg, order)
    assert shards.run_when_ready([waiting, ready], torch.device("cpu"), said.append, poll=0.5) == 2
    assert order == [ready, waiting] and polls == [0.5] * 3
    assert [s for s in said if s.startswith("waiting")] == [f"waiting for pretrain_ddpm: {shards.WAITING}"]
