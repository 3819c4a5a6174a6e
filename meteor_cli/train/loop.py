"""The training loop: AdamW, cosine schedule with warm-up, clipping, accumulation, DDP, resume.

Model-agnostic: what is trained and how a batch becomes a loss is a :class:`TrainTask`; this
module owns the order of the data, the optimisation, the checkpoints and the processes.

Run it on one process, or on several with torchrun (gloo on the CPU, nccl on CUDA, hccl on
Ascend; picked from the device)::

    meteor train ...                                        # one process
    torchrun --nproc-per-node 2 -m meteor_cli train ...     # DDP, same global batch semantics

Semantics that tests pin down
-----------------------------
* **Global batch.** One optimizer step consumes ``G = batch_size × world_size × grad_accum``
  samples: positions ``[s·G, (s+1)·G)`` of the epoch-wise seeded permutation of the data.
  Rank ``r`` takes micro-batch ``m`` at positions ``[(m·W + r)·B, …+B)`` of that window.
* **Loss normalisation.** The loss is the sum of per-target losses divided by the number of
  targets in the *whole global batch* (all ranks, all micro-batches), so 2 processes × batch B
  give the same update as 1 process × batch 2B (to float rounding), and so does accumulation.
* **Resume.** A checkpoint holds the model, optimizer, scheduler position, RNG states and the
  step (hence the data position); an interrupted-then-resumed CPU run ends with weights
  identical to an uninterrupted one.
* **Preemption.** SIGTERM (what SLURM sends before killing a job) finishes the current step,
  writes a checkpoint and raises :class:`PreemptedError` (exit code 75): resubmit with ``--resume``.
* **Divergence.** A non-finite loss stops training before the update is applied; the last good
  checkpoint is kept (exit code 7).

Checkpoint layout under ``out``::

    out/checkpoints/step-0000100/   model files (TrainTask.save) + trainer_state.json/.safetensors
    out/train_log.jsonl             one JSON line per step: step, epoch, loss, lr, samples/s, …
    out/<model files>               the final model, loadable with --model out
    out/.meteor.lock                while a run writes here: its PID and host (see meteor_cli.outdir)

The trainer state (optimizer, RNG states, step) is JSON + safetensors, never a pickle, so
resuming from a checkpoint someone else made runs no code (:mod:`meteor_cli.train.state`).
Only the newest ``keep_checkpoints`` checkpoints are kept (``--keep-last``).

Resume rules: the newest intact checkpoint is used (a damaged one is skipped with a warning);
changed settings are refused unless ``force``; a finished run reports ``already_complete``;
log lines after the checkpoint's step (a killed run's) are dropped, so the log never repeats a
step; temporary directories a killed run left are deleted. A fresh run into a directory that
holds another run is refused unless ``force`` (which deletes its checkpoints and log).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from meteor_cli.devices import Device
from meteor_cli.errors import ExitCode, InvalidInputError, MeteorError, PreemptedError, UsageError
from meteor_cli.outdir import DirectoryLock, remove_orphans, translating_write_errors, write_error
from meteor_cli.train.state import has_state, load_state, save_state


class TrainingDivergedError(MeteorError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""

    exit_code = ExitCode.DIVERGED


class TrainTask(Protocol):
    """What the loop needs from the model side."""

    def collate(self, samples: Sequence[Any]) -> Any:
        """Turn dataset items into one batch (on the CPU)."""

    def to_device(self, batch: Any, device: torch.device) -> Any:
        """Move a batch to the device."""

    def count(self, batch: Any) -> int:
        """Number of loss targets in the batch (e.g. answer tokens)."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The SUM of per-target losses of the batch (a scalar tensor)."""

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write the model (weights, config, tokenizer) into ``directory``."""

    def load(self, model: nn.Module, directory: Path) -> None:
        """Load weights written by :meth:`save` into ``model`` (in place, exactly)."""


def decay_groups(model: nn.Module, params: list[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on matrices only (not biases, norms or embeddings).

    The usual split for transformers: decaying a norm's gain or a token embedding shrinks what
    the model cannot re-scale elsewhere. One group when ``weight_decay`` is 0 (the default).
    """
    if not weight_decay:
        return [{"params": params, "weight_decay": 0.0}]
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, rest = [], []
    for p in params:
        (decay if p.ndim >= 2 and id(p) not in embeddings else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


@dataclass
class TrainConfig:
    """Optimisation settings (EAGLE's SFT recipe is lr 2e-5, warm-up 3 %, weight decay 0)."""

    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    #: Warm-up as a fraction of the total steps (linear from 0), then cosine to min_lr_ratio·lr.
    warmup: float = 0.03
    min_lr_ratio: float = 0.0
    epochs: float = 1.0
    max_steps: int | None = None
    #: Samples per process per micro-batch.
    batch_size: int = 4
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    #: Checkpoint every N optimizer steps (0: only at the end); keep the newest K (older are deleted).
    save_every: int = 0
    keep_checkpoints: int = 2
    seed: int = 0
    #: Autocast dtype ("bf16") or None for full precision.
    autocast: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1:
            raise UsageError("--batch-size and --grad-accum must be at least 1")
        if not 0 <= self.warmup < 1:
            raise UsageError(f"--warmup {self.warmup} must be in [0, 1)", "e.g. 0.03 for 3 % of the steps")
        if self.lr <= 0:
            raise UsageError(f"--lr {self.lr} must be positive")
        if self.keep_checkpoints < 1:
            raise UsageError(f"--keep-last {self.keep_checkpoints} must be at least 1",
                             "the newest checkpoint is what --resume continues from")


@dataclass
class DistInfo:
    """This process's place in a torch.distributed job (world 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: Device) -> DistInfo:
    """Join the process group torchrun set up (``RANK``/``WORLD_SIZE`` in the environment).

    The backend follows the device: gloo on the CPU, nccl on CUDA, hccl on Ascend NPUs.
    Without torchrun's variables this is a no-op returning a world of one.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}[device.type]
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total``: linear warm-up, cosine decay."""
    warm = int(math.ceil(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainResult:
    steps: int
    samples: int
    final_loss: float | None
    seconds: float
    resumed_from: int | None = None
    log: list[dict[str, Any]] = field(default_factory=list)
    #: The step this run started at (0, or the checkpoint's step when resuming).
    start_step: int = 0
    #: ``--resume`` found the run finished: nothing was trained.
    already_complete: bool = False

    @property
    def steps_this_run(self) -> int:
        return self.steps - self.start_step


class Trainer:
    """Train ``model`` on ``dataset`` (any sequence) with ``task``; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        dataset: Sequence[Any],
        task: TrainTask,
        cfg: TrainConfig,
        out: str | os.PathLike[str],
        *,
        device: Device = Device("cpu"),
        dist_info: DistInfo | None = None,
        progress: Callable[..., Any] | None = None,
        params: Sequence[nn.Parameter] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg, self.task, self.dataset, self.device = cfg, task, dataset, device
        self.out = Path(out)
        self.dist = dist_info or DistInfo()
        self.progress = progress
        self._warn_to = warn
        self.model = model.to(device.torch)
        trainable = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise UsageError("nothing to train: every parameter is frozen", "loosen --freeze")
        self.trainable = trainable
        self.optimizer = torch.optim.AdamW(decay_groups(model, trainable, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
        self.ddp_model: nn.Module = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type != "cpu" else None
            self.ddp_model = DistributedDataParallel(model, device_ids=ids)
        self.global_batch = cfg.batch_size * self.dist.world_size * cfg.grad_accum
        if len(dataset) < self.global_batch:
            raise UsageError(f"the data has {len(dataset)} samples, fewer than one global batch "
                             f"({self.global_batch} = batch size × processes × grad accumulation)",
                             "lower --batch-size or --grad-accum")
        per_epoch = len(dataset) // self.global_batch
        self.total_steps = cfg.max_steps or max(1, int(cfg.epochs * per_epoch))
        self.step = 0
        self._stop_requested = False

    def _warn(self, message: str) -> None:
        """A warning for the user (the CLI's ``run.warn``; :func:`warnings.warn` otherwise)."""
        if self._warn_to is not None:
            self._warn_to(message)
        else:
            import warnings

            warnings.warn(message, stacklevel=3)

    # -- data order ------------------------------------------------------------------------

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        return torch.randperm(len(self.dataset), generator=g)

    def _step_indices(self, step: int) -> list[int]:
        """Dataset indices of the global batch of ``step`` (drop-last within each epoch)."""
        per_epoch = len(self.dataset) // self.global_batch
        epoch, within = divmod(step, per_epoch)
        perm = self._permutation(epoch)
        return perm[within * self.global_batch:(within + 1) * self.global_batch].tolist()

    def _micro_batches(self, step: int) -> Iterator[list[int]]:
        window = self._step_indices(step)
        b, w = self.cfg.batch_size, self.dist.world_size
        for m in range(self.cfg.grad_accum):
            start = (m * w + self.dist.rank) * b
            yield window[start:start + b]

    # -- checkpoints -----------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"

    def checkpoints(self) -> list[Path]:
        """Checkpoint directories (``step-NNNNNNN`` holding a trainer state), newest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [p for p in self.checkpoint_dir.iterdir() if _CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()
                 and has_state(p)]
        return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[0] if found else None

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-N`` atomically (temp dir + rename), then delete all but the
        newest ``keep_checkpoints``; rank 0 only. A full disk is an :class:`OutputError` naming
        the device and the file; the partial checkpoint is removed."""
        target = self.checkpoint_dir / f"step-{self.step:07d}"
        if self.dist.is_main:
            from meteor_cli.artifacts import atomic_dir

            with atomic_dir(target) as tmp:
                try:
                    self.task.save(self.model, tmp)
                    save_state(self._state(), tmp)
                except OSError as exc:  # name the file where it was going, not the temporary one
                    raise write_error(_untemp(exc, tmp, target), target) from None
            for old in self.checkpoints()[self.cfg.keep_checkpoints:]:
                shutil.rmtree(old, ignore_errors=True)
        self._barrier()
        return target

    def _state(self) -> dict[str, Any]:
        import numpy as np

        return {
            "step": self.step, "total_steps": self.total_steps, "global_batch": self.global_batch,
            "dataset_size": len(self.dataset), "config": asdict(self.cfg), "optimizer": self.optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
        }

    def _check_compatible(self, state: dict[str, Any], path: Path, force: bool) -> None:
        """Refuse (or with ``force`` warn about) settings that differ from the checkpoint's."""
        if state["global_batch"] != self.global_batch:
            raise UsageError(
                f"{path} was trained with a global batch of {state['global_batch']}, this run uses "
                f"{self.global_batch}", "resume with the same --batch-size, --grad-accum and number of processes")
        saved, now = state.get("config") or {}, asdict(self.cfg)
        diffs = [f"{_FLAGS.get(k, k)} {_show(saved[k])} -> {_show(now[k])}" for k in RESUME_KEYS
                 if k in saved and _show(saved[k]) != _show(now[k])]
        if state.get("dataset_size") not in (None, len(self.dataset)):
            diffs.append(f"training samples {state['dataset_size']} -> {len(self.dataset)}")
        if not diffs:
            return
        message = f"{path} was trained with other settings: {'; '.join(diffs)}"
        if not force:
            raise UsageError(message, "rerun with the original values, or add --force to continue with the new ones "
                                      "(the result then differs from an uninterrupted run)")
        self._warn(f"{message}; continuing with the new ones (--force)")

    def resume(self, path: Path | None = None, *, force: bool = False) -> int | None:
        """Load the newest intact checkpoint (or ``path``); returns its step, or None if there is none.

        A damaged checkpoint (unreadable state or weights) is skipped with a warning and the
        next older one is tried; when none is intact this is an :class:`InvalidInputError`
        listing each one's problem. Changed settings are refused unless ``force``.
        """
        import numpy as np

        candidates = [path] if path is not None else self.checkpoints()
        if not candidates:
            return None
        problems: list[str] = []
        for cand in candidates:
            try:
                state = load_state(cand)
                step = int(state["step"])
                self._check_compatible(state, cand, force)
                self.task.load(self.model, cand)
                optimizer, rng = state["optimizer"], state["rng"]
            except MeteorError as exc:
                if not isinstance(exc, InvalidInputError):
                    raise
                problems.append(f"{cand.name}: {exc.message}")
            except Exception as exc:  # a damaged weights file raises whatever its reader raises
                problems.append(f"{cand.name}: {type(exc).__name__}: {str(exc)[:200]}")
            else:
                break
        else:
            raise InvalidInputError(f"no intact checkpoint to resume from in {self.checkpoint_dir}: "
                                    + "; ".join(problems),
                                    "delete the damaged checkpoints and rerun --resume, or start again without it")
        if problems:
            self._warn(f"skipping damaged checkpoint(s) {'; '.join(problems)}; resuming from {cand.name} instead")
        try:
            self.optimizer.load_state_dict(self._regroup(optimizer, state.get("config") or {}))
        except (ValueError, KeyError) as exc:
            raise UsageError(f"{cand}: its optimizer state does not fit the parameters this run trains ({exc})",
                             "resume with the same --freeze and model") from None
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        self.step = step
        return self.step

    def _regroup(self, saved: dict[str, Any], saved_cfg: dict[str, Any]) -> dict[str, Any]:
        """The saved optimizer state laid out in this run's parameter groups.

        With ``--force`` and a changed ``--weight-decay`` (0 ↔ non-zero), the groups differ: one
        group, or decayed matrices + the rest. Optimizer state is keyed by the position of a
        parameter across groups, so each parameter's moments are moved to its new position and
        the groups take this run's settings.
        """
        groups = saved.get("param_groups") or []
        if len(groups) == len(self.optimizer.param_groups):
            return saved
        old_order = [p for g in decay_groups(self.model, self.trainable, float(saved_cfg.get("weight_decay") or 0.0))
                     for p in g["params"]]
        if sum(len(g["params"]) for g in groups) != len(old_order):
            return saved  # not a regrouping: let load_state_dict name the mismatch
        new_index = {id(p): i for i, p in enumerate(p for g in self.optimizer.param_groups for p in g["params"])}
        current = self.optimizer.state_dict()
        state = {new_index[id(old_order[i])]: v for i, v in (saved.get("state") or {}).items()}
        return {"state": state, "param_groups": current["param_groups"]}

    def _truncate_log(self, log_path: Path, step: int) -> None:
        """Keep the log lines of steps ``<= step`` (a killed run logged steps after its last checkpoint)."""
        if not log_path.is_file():
            return
        kept, dropped = [], 0
        for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                dropped += 1  # a line cut by the kill
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            from meteor_cli.artifacts import atomic_write

            with translating_write_errors(log_path):
                atomic_write(log_path, "".join(x + "\n" for x in kept))

    def _prepare_out(self, resume: bool, force: bool) -> None:
        """Create ``out``, clear a killed run's temporary directories, refuse to mix two runs."""
        if self.dist.is_main:
            with translating_write_errors(self.out):
                self.out.mkdir(parents=True, exist_ok=True)
            removed = remove_orphans(self.checkpoint_dir, (".step-*",)) + remove_orphans(self.out, (".final.*",))
            if removed:
                self._warn(f"removed {len(removed)} temporary director{'y' if len(removed) == 1 else 'ies'} left by an "
                           f"interrupted run: {', '.join(p.name for p in removed[:3])}")
        self._barrier()
        if resume:
            return
        log_path = self.out / "train_log.jsonl"
        previous = self.checkpoints()
        if not previous and not log_path.is_file():
            return
        what = f"checkpoints up to step {int(previous[0].name[5:])}" if previous else "a train_log.jsonl"
        if not force:
            raise UsageError(f"{self.out} already holds a training run ({what})",
                             "add --resume to continue it, --force to start over (deletes its checkpoints and log), "
                             "or choose another --out")
        self._barrier()
        if self.dist.is_main:
            self._warn(f"--force: starting over in {self.out}; deleting its {what}")
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            log_path.unlink(missing_ok=True)
        self._barrier()

    # -- the loop --------------------------------------------------------------------------

    def _barrier(self) -> None:
        if self.dist.enabled:
            import torch.distributed as dist

            dist.barrier()

    def _all_sum(self, value: float) -> float:
        if not self.dist.enabled:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device.torch if self.device.type != "cpu" else "cpu")
        dist.all_reduce(t)
        return float(t.item())

    @contextlib.contextmanager
    def _sigterm(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            self._stop_requested = True

        try:
            previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: no signal handling
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.cfg.autocast:
            return contextlib.nullcontext()
        from meteor_cli.devices import default_dtype

        return torch.autocast(self.device.type, dtype=default_dtype(self.device, self.cfg.autocast))

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over one global batch; returns its log record."""
        t0 = time.perf_counter()
        lr = lr_at(self.step, self.total_steps, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = [self.task.collate([self.dataset[i] for i in idx]) for idx in self._micro_batches(self.step)]
        total = self._all_sum(float(sum(self.task.count(b) for b in batches)))
        if total <= 0:
            raise UsageError(f"step {self.step}: the global batch has no loss targets (no answer tokens)",
                             "check that the records have a `gpt` answer")
        self.ddp_model.train()
        loss_sum = 0.0
        for m, batch in enumerate(batches):
            batch = self.task.to_device(batch, self.device.torch)
            sync = m == len(batches) - 1 or not self.dist.enabled
            ctx = contextlib.nullcontext() if sync else self.ddp_model.no_sync()  # type: ignore[operator]
            with ctx, self._autocast():
                s = self.task.loss(self.ddp_model, batch)
                # DDP averages gradients over ranks; × world turns that into a sum over the global batch.
                (s.float() * (self.dist.world_size / total)).backward()
            loss_sum += float(s.detach())
        loss = self._all_sum(loss_sum) / total
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDivergedError(
                f"the loss became {loss} at step {self.step + 1}; training stopped before applying the update",
                f"the last good checkpoint is kept in {self.checkpoint_dir}; lower --lr or check the data")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.max_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        dt = time.perf_counter() - t0
        per_epoch = len(self.dataset) // self.global_batch
        return {"step": self.step, "epoch": round(self.step / per_epoch, 4), "loss": loss, "lr": lr,
                "grad_norm": grad_norm, "samples_per_s": self.global_batch / dt, "seconds": dt}

    def fit(self, *, resume: bool = False, force: bool = False) -> TrainResult:
        """Train to ``total_steps``; checkpoints, logs, SIGTERM and NaN handling included.

        Holds the lock on ``out`` throughout (rank 0). ``resume``: continue from the newest
        intact checkpoint (a run already at ``total_steps`` returns at once with
        ``already_complete``). ``force``: resume despite changed settings, or start over in a
        directory that holds another run.
        """
        lock = DirectoryLock(self.out, command="meteor train", enabled=self.dist.is_main, warn=self._warn)
        failure: BaseException | None = None
        try:
            lock.acquire()
        except MeteorError as exc:
            failure = exc
        if self._all_sum(1.0 if failure is not None else 0.0) > 0:  # every rank stops, not only rank 0
            raise failure or UsageError(f"{self.out} is in use by another run (rank 0 could not lock it)")
        try:
            return self._fit(resume, force)
        finally:
            lock.release()

    def _fit(self, resume: bool, force: bool) -> TrainResult:
        self._prepare_out(resume, force)
        resumed = self.resume(force=force) if resume else None
        if resume and resumed is None:
            self._warn(f"--resume: nothing to resume in {self.out} (no checkpoints yet); starting at step 0")
        log_path = self.out / "train_log.jsonl"
        if self.dist.is_main:
            self._truncate_log(log_path, self.step)
        start_step = self.step
        if resumed is not None and self.step >= self.total_steps:
            if not (self.out / "config.json").is_file():  # killed between the last checkpoint and the final model
                self.save_final()
            return TrainResult(self.step, self.step * self.global_batch, None, 0.0, resumed, [],
                               start_step=start_step, already_complete=True)
        records: list[dict[str, Any]] = []
        t_start = time.perf_counter()
        bar = self.progress(total=self.total_steps, initial=self.step, desc="training", unit="step") \
            if self.progress and self.dist.is_main else None
        try:
            with self._sigterm():
                while self.step < self.total_steps:
                    rec = self.train_step()
                    records.append(rec)
                    if self.dist.is_main:
                        with translating_write_errors(log_path), open(log_path, "a") as f:
                            f.write(json.dumps(rec) + "\n")
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                                            sps=f"{rec['samples_per_s']:.1f}")
                    stop = self._all_sum(1.0 if self._stop_requested else 0.0) > 0
                    if stop:
                        path = self.save_checkpoint()
                        raise PreemptedError(f"stopped by SIGTERM after step {self.step}; checkpoint saved to {path}",
                                             "rerun the same command with --resume")
                    if self.cfg.save_every and self.step % self.cfg.save_every == 0 and self.step < self.total_steps:
                        self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        self.save_checkpoint()
        self.save_final()
        return TrainResult(self.step, self.step * self.global_batch,
                           records[-1]["loss"] if records else None, time.perf_counter() - t_start, resumed, records,
                           start_step=start_step)

    def save_final(self) -> None:
        """Write the final model files into ``out`` (rank 0). Files are moved in one by one,
        ``config.json`` last, so a directory with a config.json always holds a complete model."""
        if self.dist.is_main:
            tmp: Path | None = None
            try:
                tmp = Path(tempfile.mkdtemp(prefix=".final.", dir=self.out))
                self.task.save(self.model, tmp)
                files = sorted((p for p in tmp.rglob("*") if p.is_file()), key=lambda p: p.name == "config.json")
                for f in files:
                    dest = self.out / f.relative_to(tmp)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(f, dest)
            except OSError as exc:
                raise write_error(_untemp(exc, tmp, self.out), self.out) from None
            finally:
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
        self._barrier()


#: Checkpoint directory names: ``step-`` and the zero-padded step.
_CHECKPOINT_NAME = re.compile(r"step-\d+")
#: Settings that must match the checkpoint's to resume exactly (checkpointing ones may change).
RESUME_KEYS = ("lr", "weight_decay", "betas", "warmup", "min_lr_ratio", "epochs", "max_steps", "batch_size",
               "grad_accum", "max_grad_norm", "seed", "autocast")
_FLAGS = {k: "--" + k.replace("_", "-") for k in RESUME_KEYS if k not in ("betas", "min_lr_ratio", "max_grad_norm")}


def _show(value: Any) -> str:
    """A setting as the message shows it (tuples and lists alike, so a JSON round trip compares equal)."""
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return repr(value)


def _untemp(exc: OSError, tmp: Path | None, target: Path) -> OSError:
    """``exc`` with its file inside the temporary directory ``tmp`` renamed to where it was going
    (inside ``target``), so the message names the file the user will look for."""
    if exc.filename and tmp is not None:
        with contextlib.suppress(ValueError):
            exc.filename = str(target / Path(os.fsdecode(exc.filename)).relative_to(tmp))
    return exc
