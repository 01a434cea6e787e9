"""kill -9 a real training run at every stage of a checkpoint save: the last good checkpoint always loads
and the command line always resumes to the losses of a run that was never stopped.

Each killed run is a `python -m slmbook.train` process of its own (`slmbook.train_cli.main` in a child
forked from a helper process that has imported torch once, so a kill costs a training step, not an
interpreter start). The child stops at one named stage of its first save (`checkpoint.stage_hook`), says
so on a pipe, and the test kills it by its pid with SIGKILL: no cleanup, no `finally`, no final save.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file

from slmbook import checkpoint
from slmbook import train_cli as cli
from slmbook.checkpoint import CheckpointError, load_model, read_state
from slmbook.data import load_stories
from slmbook.dataloader import write_token_file
from slmbook.tokenizer import CharTokenizer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32",
                                reason="kills forked POSIX processes")

# The helper: imports the training code once, then for each request forks a child that runs the CLI
# and stops at the requested stage of its first save; it reports the child's pid and how it ended.
ZYGOTE = r"""
import json, os, sys, time, traceback
import torch, torch._dynamo  # AdamW imports dynamo on first use: once here, not in every child
import slmbook.checkpoint as checkpoint
import slmbook.train_cli
torch.set_num_threads(1)  # as in the test process: the same kernels, so the same losses bit for bit
proto = sys.stdout
print("ready", file=proto, flush=True)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.dup(1)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)  # the run's own output goes nowhere; the pipe is for stage reports
        checkpoint.USE_RENAME_EXCHANGE = request["exchange"]
        def stop(stage):
            if stage == request["stage"]:
                os.write(fd, f"stopped {stage}\n".encode())
                time.sleep(600)  # until the test kills this process
        checkpoint.stage_hook = stop
        code = 99
        try:
            code = slmbook.train_cli.main(request["args"])
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    print(f"pid {pid}", file=proto, flush=True)
    _, status = os.waitpid(pid, 0)
    print(f"exit {pid} {status}", file=proto, flush=True)
"""


class Zygote:
    def __init__(self, stderr):
        self.process = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=stderr, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.child = None
        threading.Thread(target=lambda: [self.lines.put(x.strip()) for x in self.process.stdout], daemon=True).start()

    def next(self, timeout: float = 120) -> str:
        return self.lines.get(timeout=timeout)

    def run_and_kill(self, args: list[str], stage: str, exchange: bool, on_stop=None) -> str:
        """Run the CLI in a fresh child, kill -9 it when it reaches `stage` of a save; returns how it ended."""
        self.process.stdin.write(json.dumps({"args": args, "stage": stage, "exchange": exchange}) + "\n")
        self.process.stdin.flush()
        pid = self.child = int(self.next().removeprefix("pid "))
        report = self.next()
        if report == f"stopped {stage}":
            if on_stop is not None:
                on_stop()
            os.kill(pid, signal.SIGKILL)  # by its own pid
            report = self.next()
        kind, child, status = report.split()
        assert kind == "exit" and int(child) == pid
        self.child = None
        status = int(status)
        return "killed" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL else f"status {status}"

    def close(self):
        if self.child is not None:  # a test that failed half-way: no child may outlive it
            os.kill(self.child, signal.SIGKILL)
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    stories = load_stories("validation", source="sample", verbose=False)[:60]
    tokenizer = CharTokenizer.train(stories)
    folder = tmp_path_factory.mktemp("chars")
    write_token_file(stories[:50], tokenizer, folder / "train.bin", progress=False)
    write_token_file(stories[50:], tokenizer, folder / "validation.bin", progress=False)
    return folder


@pytest.fixture
def one_thread():
    """One thread per process: on two cores shared with other work, two threads per run are many times
    slower, and the runs compared bit for bit must use the same kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hidden(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def weights_digest(folder):
    """SHA-256 of the tensors' bytes (not of the file: safetensors writes its metadata in a per-process order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(folder / "model.safetensors")).items()):
        digest.update(name.encode() + tensor.numpy().tobytes())
    return digest.hexdigest()


def weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# (stage the save is killed at, renameat2 exchange or the two-rename fallback, step of the checkpoint
# that must load afterwards, relative to the step being saved: 0 = that step, -1 = the previous one)
FIRST_SAVE = [("writing model.safetensors", True, None), ("written", True, 0)]
LATER_SAVES = [
    ("begin", True, -1), ("temp", True, -1), ("writing model.safetensors", True, -1),
    ("writing optimizer.pt", True, -1), ("writing config.json", True, -1), ("writing training_state.json", True, -1),
    ("written", True, -1), ("swapped", True, 0),
    ("written", False, -1), ("moved old", False, 0), ("swapped", False, 0),
]


def test_kill_minus_9_at_every_stage_of_a_save_loses_nothing(tmp_path, data, one_thread, monkeypatch):
    stderr = open(tmp_path / "zygote.err", "w")
    zygote = Zygote(stderr)  # starts importing torch while this process trains the straight run
    root = tmp_path / "runs"
    root.mkdir()
    steps = 8
    args = ["--config", "tiny", "--steps", str(steps), "--warmup-steps", "2", "--batch-size", "2", "--context", "16",
            "--log-interval", "1", "--eval-interval", str(steps), "--eval-batches", "1", "--sample-tokens", "0",
            "--checkpoint-interval", "1", "--device", "cpu", "--data", str(data), "--no-progress"]
    run = root / "run"
    weights_at = {}  # step -> the never-stopped run's weights, recorded at each commit

    def record(stage):
        if stage == "swapped":
            weights_at[read_state(tmp_path / "straight", verify=False)["step"]] = weights_digest(tmp_path / "straight")

    monkeypatch.setattr(checkpoint, "stage_hook", record)
    assert cli.main([*args, "--out", str(tmp_path / "straight")]) == 0  # the run that is never stopped
    monkeypatch.setattr(checkpoint, "stage_hook", None)
    straight = read_state(tmp_path / "straight")["history"]["train"]
    assert sorted(weights_at) == list(range(1, steps + 1))
    assert [r["step"] for r in straight] == list(range(1, steps + 1))

    with stderr:
        try:
            assert zygote.next() == "ready"
            step = 0  # the step of the checkpoint on disk (0: none yet)
            for stage, exchange, expected in FIRST_SAVE + LATER_SAVES:
                saving = step + 1  # each child resumes from `step` and is killed in its first save
                seen = {}

                def on_stop(seen=seen, stage=stage):  # where the kill lands: the disk the moment before it
                    seen["hidden"] = hidden(root)
                    seen["run"] = run.is_dir()
                    new = [p for p in root.iterdir() if p.name.startswith(".run.new-")]
                    if stage == "writing model.safetensors" and new:
                        seen["partial"] = (new[0] / "model.safetensors").stat().st_size

                ended = zygote.run_and_kill([*args, "--out", str(run)], stage, exchange, on_stop)
                assert ended == "killed", (stage, ended, (tmp_path / "zygote.err").read_text()[-3000:])
                before_swap = stage not in ("moved old", "swapped")
                if stage in ("begin",):
                    assert seen["hidden"] == []
                elif before_swap:
                    assert len(seen["hidden"]) == 1 and seen["hidden"][0].startswith(".run.new-"), (stage, seen)
                if stage == "swapped":  # the new checkpoint in place, the old one not yet deleted
                    assert seen["run"] and len(seen["hidden"]) == 1, seen
                if stage == "moved old":  # between the two renames: the folder itself is gone
                    assert not seen["run"] and any(n.startswith(".run.old-") for n in seen["hidden"])
                if "partial" in seen and step:  # really mid-file: shorter than the complete weights
                    assert 0 < seen["partial"] < (run / "model.safetensors").stat().st_size

                if expected is None:  # the very first save, killed before it was complete
                    with pytest.raises(CheckpointError, match="does not exist"):
                        load_model(run)
                else:
                    step = saving + expected
                    load_model(run)  # the last good checkpoint loads (and recovery runs first)
                    state = read_state(run)
                    assert state["step"] == step, (stage, exchange)
                    assert [r["loss"] for r in state["history"]["train"]] == [r["loss"] for r in straight[:step]]
                    assert weights_digest(run) == weights_at[step], (stage, exchange, step)  # bit for bit
                assert hidden(root) == [], (stage, hidden(root))  # no temporary survives the next load
        finally:
            zygote.close()

    assert step < steps and cli.main([*args, "--out", str(run)]) == 0  # the CLI resumes and finishes
    resumed = read_state(run)["history"]
    assert [r["step"] for r in resumed["train"]] == list(range(1, steps + 1))
    assert [r["loss"] for r in resumed["train"]] == [r["loss"] for r in straight]  # bit for bit
    assert resumed["eval"][-1]["val_loss"] == read_state(tmp_path / "straight")["history"]["eval"][-1]["val_loss"]
    assert weights_equal(load_model(run), load_model(tmp_path / "straight"))
    assert hidden(root) == []
