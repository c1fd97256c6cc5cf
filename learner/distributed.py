"""One trainer made of N ranks (torch.distributed + DDP); the design is docs/distributed.md.

Rank 0 is the trainer everyone knows (the samples topic, dedup, probes, drift, guard, journal,
checkpoints, published versions); ranks 1..N-1 are **followers** that hold an identical copy of
the learner and only ever do what rank 0 tells them. Every call that changes the learner on
rank 0 is replayed on every rank, in the same order, over a gloo *control* group:

* ``learn_many``: rank 0 broadcasts the new samples, then samples the replay memory and
  broadcasts what it drew (the followers draw too, from their identical copy, and check that
  they drew the same: a diverged memory fails the trainer). Every rank builds the same whole
  micro-batch (new + replayed), computes the rows of its contiguous share (:meth:`Batch.shard`,
  the sum of its per-sample terms divided by ``B / W``), and DDP averages the gradients, which
  is then the gradient of the whole batch's mean loss. A share with no rows (a batch smaller
  than the world) computes row 0 with weight zero, so every rank joins every all-reduce. Clip,
  skip decisions (the all-reduced loss, the identical gradient norm) and the AdamW step are
  the same everywhere; so are heads, replay memory, strategy state, counters and version.
* ``on_drift`` and ``load`` (a restored checkpoint, a rollback): rank 0 applies them, then
  sends them; followers apply the same arguments.

Rank 0 heartbeats over the control group every quarter of ``dist_timeout_s`` while idle, so a
follower's wait for the next command never times out, and every collective has that timeout:
a dead or stuck rank fails the trainer (rank 0 fail-stops: no checkpoint, no ack) instead of
hanging it. :func:`launch` starts N ranks on this machine and stops all of them when one ends.

>>> shares(5, 2), shares(1, 2)
([(0, 3), (3, 5)], [(0, 1), (1, 1)])
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import logging
import math
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .config import LearnerConfig, MemoryConfig
from .learner import Learner, UpdateStats, _check_task, _check_texts
from .memory import MemoryItem
from .strategies import Batch

__all__ = ["DistributedLearner", "Ranks", "follow", "init", "launch", "ranks_from_env", "shares"]

log = logging.getLogger(__name__)


def shares(n: int, world: int) -> list[tuple[int, int]]:
    """Contiguous ``(lo, hi)`` row ranges of ``n`` rows over ``world`` ranks, the first
    ``n % world`` ranks one row longer (empty ranges when ``n < world``)."""
    base, extra = divmod(n, world)
    out, lo = [], 0
    for r in range(world):
        hi = lo + base + (1 if r < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the trainer (from torchrun's / :func:`launch`'s env)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


def ranks_from_env(environ=None) -> Ranks | None:
    """``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as torchrun sets them; None for one process.

    >>> ranks_from_env({"WORLD_SIZE": "2", "RANK": "1"})
    Ranks(rank=1, world_size=2, local_rank=1)
    >>> ranks_from_env({}) is None
    True
    """
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ValueError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers: {e}") from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise ValueError(f"RANK must be in [0, {world}), got {rank}")
    return Ranks(rank, world, local)


@dataclass
class _Group:
    ranks: Ranks
    backend: str
    control: object  # the gloo group carrying commands and Python objects


def init(config: LearnerConfig, ranks: Ranks) -> tuple[LearnerConfig, _Group]:
    """Join the process group (a rendezvous: every rank must call it) and pin this rank's
    device: ``cuda:<LOCAL_RANK>`` with NCCL, the CPU with gloo. Returns the config to build
    the rank's learner with, and the group to hand it."""
    cuda = torch.cuda.is_available() and config.device != "cpu"
    backend = config.dist_backend if config.dist_backend != "auto" else ("nccl" if cuda else "gloo")
    if backend == "nccl":
        if not cuda:
            raise ValueError("dist_backend nccl needs CUDA")
        torch.cuda.set_device(ranks.local_rank)
        config = dataclasses.replace(config, device=f"cuda:{ranks.local_rank}")
    elif config.device == "auto":
        config = dataclasses.replace(config, device="cpu")
    timeout = datetime.timedelta(seconds=config.dist_timeout_s)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world_size,
                                timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    log.info("rank %d of %d joined (%s, device %s)", ranks.rank, ranks.world_size, backend,
             config.device)
    return config, _Group(ranks, backend, control)


def _no_sync_kwargs() -> dict:
    """DDP arguments that skip its start-up broadcast and its per-forward buffer broadcast, by
    the names this torch knows (torch>=2.4 is all the package asks)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    names = inspect.signature(DistributedDataParallel.__init__).parameters
    kwargs = {"init_sync": False} if "init_sync" in names else {}
    kwargs["forward_sync_buffers" if "forward_sync_buffers" in names else "broadcast_buffers"] = False
    return kwargs


_NO_SYNC = _no_sync_kwargs()


class _Loss(nn.Module):
    """What DDP wraps: the learner's trainable modules, and a forward that is the learner's
    one-step loss on the batch set in ``pending`` (so every term, strategies' included, is
    inside the forward DDP watches for unused parameters)."""

    def __init__(self, learner: Learner, trainable: nn.Module) -> None:
        super().__init__()
        self.trainable = trainable
        self._learner = [learner]   # a list: not a submodule
        self.pending: tuple | None = None

    def forward(self) -> torch.Tensor:
        batch, feats = self.pending
        self.pending = None
        return Learner._step_loss(self._learner[0], batch, feats, adversarial=False)


class DistributedLearner(Learner):
    """A :class:`Learner` that is one rank of a trainer. On rank 0 it is used exactly like a
    Learner (by lifecycle/trainer.py); on the others :meth:`follow` runs until rank 0 stops."""

    def __init__(self, config: LearnerConfig | None = None, memory: MemoryConfig | None = None,
                 *, group: _Group) -> None:
        config = config if config is not None else LearnerConfig()
        if config.adv_epsilon > 0:
            raise ValueError("adv_epsilon must be 0 in a trainer of several ranks: FGM's second "
                             "backward pass is not supported under DDP")
        self.group = group
        self.rank = group.ranks.rank
        self.world_size = group.ranks.world_size
        self.failure: BaseException | None = None   # what stopped the heartbeat (rank 0)
        self._comm = threading.RLock()              # one command's collectives at a time
        self._ddp: nn.Module | None = None
        self._ddp_params: list[nn.Parameter] = []
        self._last_sent = time.monotonic()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        super().__init__(config, memory)
        if self.device.type == "cuda":   # the current device is per thread: this one's
            torch.cuda.set_device(self.device)
        # Identical initial state on every rank (LoRA's init used the same seed); dropout masks
        # must differ between ranks, or the shards would share them.
        torch.manual_seed(self.config.seed + 7919 * self.rank)
        if self.rank == 0:
            self._beat = threading.Thread(target=self._heartbeat, name="streamlearner-heartbeat",
                                          daemon=True)
            self._beat.start()

    # ----------------------------------------------------------------- the command channel

    def _bcast(self, obj=None):
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group.control)
        return box[0]

    def _send(self, command: tuple) -> None:
        self._bcast(command)
        self._last_sent = time.monotonic()

    def _heartbeat(self) -> None:
        every = self.config.dist_timeout_s / 4
        while not self._stop.wait(min(every, 1.0)):
            if time.monotonic() - self._last_sent < every or not self._comm.acquire(blocking=False):
                continue
            try:
                if not self._stop.is_set():
                    self._send(("noop",))
            except Exception as exc:   # a rank is gone: the trainer must stop (roles.py)
                self.failure = exc
                log.error("rank 0 lost the other ranks (%s: %s)", type(exc).__name__, exc)
                return
            finally:
                self._comm.release()

    def learn_many(self, task: str, texts: Sequence[str], labels: Sequence[str]) -> UpdateStats:
        if self.rank != 0:
            return super().learn_many(task, texts, labels)
        _check_task(task)
        texts, labels = _check_texts("texts", texts), _check_texts("labels", labels)
        if not texts or len(texts) != len(labels):
            return super().learn_many(task, texts, labels)   # no collective: raises or no-op
        with self._comm:
            self._send(("learn", task, texts, labels))
            return super().learn_many(task, texts, labels)

    def on_drift(self, task: str, *, updates: int = 20, lr_scale: float = 2.0,
                 replay_scale: float = 2.0) -> None:
        kwargs = {"updates": updates, "lr_scale": lr_scale, "replay_scale": replay_scale}
        with self._comm:
            super().on_drift(task, **kwargs)   # raises before changing anything
            if self.rank == 0:
                self._send(("drift", task, kwargs))

    def load(self, tensors: dict[str, torch.Tensor], metadata: dict, memory_state: dict) -> None:
        with self._comm:
            super().load(tensors, metadata, memory_state)   # checks everything first
            if self.rank == 0:
                self._send(("load", tensors, metadata, memory_state))

    def follow(self) -> int:
        """Followers: apply rank 0's commands until it says stop; returns the updates done."""
        if self.rank == 0:
            raise RuntimeError("rank 0 leads; it does not follow")
        done = 0
        while True:
            command = self._bcast()
            kind = command[0]
            if kind == "stop":
                return done
            if kind == "learn":
                self.learn_many(*command[1:])
                done += 1
            elif kind == "drift":
                self.on_drift(command[1], **command[2])
            elif kind == "load":
                self.load(*command[1:])
                log.info("rank %d loaded model version %d", self.rank, self.model_version)
            elif kind != "noop":
                raise RuntimeError(f"unknown command {kind!r} from rank 0")

    def stop(self) -> None:
        """Rank 0: stop the heartbeat and tell the followers to exit (best effort: a dead rank
        may be why we are stopping). Leaving the process group is the caller's."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=self.config.dist_timeout_s)
        if self.rank == 0:
            with self._comm:
                try:
                    self._send(("stop",))
                except Exception as exc:
                    log.warning("could not tell every rank to stop (%s: %s)", type(exc).__name__, exc)
        self._drop_ddp()

    # ----------------------------------------------------------------- the update hooks

    def _sample_replay(self, n: int) -> list[MemoryItem]:
        if self.rank == 0:
            drawn = self.replay.sample(n)
            self._bcast([dataclasses.astuple(m) for m in drawn])
            return drawn
        drawn = [MemoryItem(*fields) for fields in self._bcast()]
        mine = self.replay.sample(n)   # keeps this copy's RNG in step, and checks it
        if mine != drawn:
            raise RuntimeError(f"rank {self.rank}'s replay memory diverged from rank 0's")
        return drawn

    def _local_batch(self, batch: Batch) -> Batch:
        lo, hi = shares(len(batch.texts), self.world_size)[self.rank]
        if lo == hi:   # fewer rows than ranks: row 0 with weight zero keeps this rank in step
            shard = batch.shard(0, 1, divisor=math.inf)
            shard.extra["padding"] = True
            return shard
        shard = batch.shard(lo, hi, divisor=len(batch.texts) / self.world_size)
        shard.extra["lo"] = lo
        return shard

    def _wrapped(self) -> nn.Module:
        params = self._trainable_params()
        if len(params) != len(self._ddp_params) or any(a is not b for a, b in zip(params, self._ddp_params)):
            self._build_ddp(params)
        return self._ddp

    def _build_ddp(self, params: list[nn.Parameter]) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self._drop_ddp()
        # Every rank grew the same heads and loaded the same state; check rather than assume
        # (a float64 checksum per rank, compared on the control group).
        check = float(sum(p.detach().double().sum() for p in params))
        sums = [None] * self.world_size
        dist.all_gather_object(sums, (len(params), check), group=self.group.control)
        if len({s[0] for s in sums}) != 1 or max(s[1] for s in sums) - min(s[1] for s in sums) > 1e-9 * (1 + abs(check)):
            raise RuntimeError(f"ranks hold different parameters: {sums}")
        trainable = self.model.heads if self.config.frozen else self.model
        # find_unused_parameters: a rank's share may hold no row of some task, so that head
        # gets no gradient there (a head no rank used keeps grad None, as in one process).
        # init_sync off: the states are equal (checked above); buffers are constants.
        self._ddp = DistributedDataParallel(
            _Loss(self, trainable), device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=True, **_NO_SYNC)
        self._ddp_params = list(params)

    def _drop_ddp(self) -> None:
        # The old reducer's gradient hooks must be gone before a new one registers its own: an
        # old hook still firing would start all-reduces the other ranks never join.
        old, self._ddp, self._ddp_params = self._ddp, None, []
        if old is None:
            return
        remove = getattr(old.reducer, "_remove_autograd_hooks", None)
        if remove is not None:
            remove()
        else:   # no such method in this torch: the hooks go with the reducer, once collected
            del old
            gc.collect()

    def _step_loss(self, batch: Batch, feats_frozen: torch.Tensor | None, *,
                   adversarial: bool) -> torch.Tensor:
        ddp = self._wrapped()
        ddp.module.pending = (batch, feats_frozen)
        return ddp()

    def _loss_value(self, loss: torch.Tensor) -> float:
        # The mean over ranks of (share terms * W / B + parameter terms) is the whole batch's
        # loss; every rank then takes the same skip decision.
        total = torch.tensor([loss.detach().float().item()], dtype=torch.float64)
        dist.all_reduce(total, group=self.group.control)
        return total.item() / self.world_size

    def _abandon_step(self, loss: torch.Tensor) -> None:
        # DDP waits for the backward of every forward: run it, drop what it computed.
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)

    def _merge_local(self, batch: Batch, work: Batch) -> None:
        if work is batch or not any(s.name == "derpp" for s in self.strategies):
            return
        # DER++ remembers the new samples with their logits: each rank has its share's.
        mine = None if work.extra.get("padding") else (work.extra["lo"], work.store_logits)
        parts = [None] * self.world_size
        dist.all_gather_object(parts, mine, group=self.group.control)
        batch.store_logits = torch.cat([logits for _, logits in
                                        sorted((p for p in parts if p is not None), key=lambda p: p[0])])


def follow(config: LearnerConfig, memory: MemoryConfig, ranks: Ranks) -> int:
    """A follower rank's whole life: join, build the learner, follow rank 0; 0 once told to
    stop, 1 when rank 0 (or the group) is gone. SIGTERM and SIGINT are left to rank 0, which
    stops every rank once it has drained."""
    config, group = init(config, ranks)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: log.info("rank %d: waiting for rank 0 to stop", ranks.rank))
    try:
        learner = DistributedLearner(config, memory, group=group)
        done = learner.follow()
        log.info("rank %d stopped after %d updates at model version %d", ranks.rank, done,
                 learner.model_version)
        return 0
    except Exception as exc:
        log.error("rank %d stops: %s: %s", ranks.rank, type(exc).__name__, exc)
        return 1
    finally:
        try:
            dist.destroy_process_group()
        except Exception:
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _terminal_group() -> bool:
    """This process group is the terminal's foreground one (a Ctrl-C reaches all of it)."""
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def launch(command: Sequence[str], nproc: int, *, grace_s: float = 60.0,
           failed: int = 1) -> int:
    """Run ``command`` as ranks 0..nproc-1 of one trainer on this machine (the env torchrun
    would set) and wait. SIGTERM (and a SIGINT not from the terminal, which sends Ctrl-C to
    every rank itself) goes to rank 0, which drains and stops the others.
    When a rank fails, rank 0 is asked to stop (SIGTERM); once rank 0 has ended, whatever still
    runs after ``grace_s`` is killed. Returns 0 when every rank ended with 0, else rank 0's code
    if it failed, else ``failed``."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    port = _free_port()
    # The ranks share this machine's cores, as torchrun would have them (unless told otherwise).
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, WORLD_SIZE=str(nproc), RANK=str(rank), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS=threads)
        procs.append(subprocess.Popen(list(command), env=env))
        log.info("rank %d: pid %d", rank, procs[-1].pid)

    def to_leader(signum, _frame):
        if signum == signal.SIGINT and _terminal_group():
            return   # Ctrl-C: the terminal sent it to every rank already (a second one is "now")
        if procs[0].poll() is None:
            procs[0].send_signal(signal.SIGTERM)
    old = {s: signal.signal(s, to_leader) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        # Followers end with 0 only when rank 0 told them to stop (it is stopping too).
        while procs[0].poll() is None and all(p.poll() in (None, 0) for p in procs[1:]):
            time.sleep(0.2)
        failed_rank = next((r for r, p in enumerate(procs) if p.returncode not in (None, 0)), None)
        if failed_rank is not None:
            log.error("rank %d ended with code %s: stopping the trainer", failed_rank,
                      procs[failed_rank].returncode)
            if procs[0].poll() is None:
                procs[0].send_signal(signal.SIGTERM)   # drains: what it holds is whole
        deadline = time.monotonic() + grace_s
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    codes = [p.returncode for p in procs]
    if all(c == 0 for c in codes):
        return 0
    return codes[0] if codes[0] > 0 else failed
