"""The fitting loop (docs/method.md §2.4–2.7): one engine for the CLI, the widgets and torchrun.

``fit_iter`` is a generator of plain event dataclasses. A front end iterates it (a napari
generator worker yields from it; the CLI prints from it); it yields at least once per optimizer
step, so a worker can quit within one step, and its last event is always :class:`FitFinished`.

One fitting step (docs/method.md §2.5): a shuffled batch of fitting cubes (fresh order every epoch,
seeded ``torch.Generator`` on the CPU), a fresh uniformly random rotation per cube, cube0 and
cube1 rotated and centre-cropped in one batched ``grid_sample`` call, target = rotated cube1,
input = ``F⁻¹(M·F(rotated cube0))``, loss = Fourier-masked Noise2Noise loss with ``M`` and the
rotated mask ``M_R``; Adam.

Every ``update_every`` epochs the *wedges are updated*: the model runs on every un-rotated
fitting cube0 and its prediction replaces the cube's unobserved frequencies; the targets
(cube1) never change. The network's input normalization (``loc``/``scale``, docs/method.md §2.6) is
computed from the model inputs (centre crops of the fitting cube0s, masked with ``M``) at the
start and after every wedge update.

Files (``out_dir``, written by rank 0 only): ``latest.pt`` (every epoch), ``best.pt`` (lowest
validation loss; lowest fitting loss without validation cubes; the best ``best_by`` signal when
one is chosen), ``epoch_NNNN.pt`` (every ``checkpoint_every`` epochs), ``stopped.pt`` (when
``should_stop()`` fired) and ``losses.csv`` (``epoch,fit_loss,val_loss,seconds`` and the
progress signals of core.fit.signals, measured every ``signal_every`` epochs). Resuming from any of them continues exactly
(mid-epoch for ``stopped.pt``). The checkpoints hold no cubes: the wedge-updated cube0s go to
``fit_state_NNNN.pt`` at each wedge update, named by the checkpoints (core.fit.state).

Several tomograms: ``pairs=[HalfPair, ...]`` — pooled cubes, each masked with its own pair's
wedge (core.fit.data); one pair is exactly the single-pair fit.

Several GPUs: launch with ``torchrun --nproc-per-node N -m napari_deepdewedge.cli fit ...``.
The CLI calls :func:`init_distributed_from_env`; ``fit_iter`` then wraps the model in
``DistributedDataParallel`` and splits every batch across the ranks so that the *global* batch
is ``batch_size`` (the result matches a single-process run with the same batch size up to
float rounding, and ``fit_iter(..., emulate_ranks=N)`` in one process bit for bit: it runs
each rank's share as its own forward and backward, on the same kernels as the ranks).

Where the pieces live: this module holds the loop and its phases (``_Run``: the steps of an
epoch, the end of an epoch with the wedge update, the checkpoints); ``setup.py`` sets a fit up
or restores it to resume; ``steps.py`` holds one fitting step, the validation loss, the input
normalization and the wedge update; ``config.py``/``settings.py`` the settings, ``events.py``
the events, ``log.py`` the loss log, ``preview.py`` previews, ``payload.py`` the checkpoint
payload, ``parallel.py`` devices/AMP/DDP, ``resume.py`` the resume rule.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from .config import FitConfig
from .events import (  # noqa: F401  (re-exported: the events fit_iter yields)
    CheckpointSaved, EpochDone, FitEvent, FitFinished, FitStarted, PreviewReady, StepDone, WedgesUpdated,
)
from .log import EpochRecord, EpochTally, LossLog
from .parallel import (  # noqa: F401  (amp_enabled … init_distributed_from_env: re-exported)
    amp_enabled, configure_backends, distributed_info, init_distributed_from_env,
)
from .schedule import lr_at
from . import setup, steps


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
class _Run:
    """One fit: set up (or restored) once, then the loop's phases as methods — the steps of an
    epoch, the wedge update, the checkpoints and the preview."""

    def __init__(self, tomo0, tomo1, config, *, mask, pairs, resume, resume_dir, init_from, preview_slab,
                 emulate_ranks=1):
        cfg, self.pairs = setup.checked_pairs(tomo0, tomo1, config, mask, pairs)
        self.dev = setup.devices(cfg)
        self.emulate = setup.emulated_ranks(emulate_ranks, self.dev.world)
        self.payload, self.cfg, self.resume_dir = setup.resume_point(resume, resume_dir, cfg, self.pairs)
        self.data = setup.cube_data(self.cfg, self.pairs, self.payload, self.resume_dir, self.dev.device)
        self.cubes, self.state_ref = self.data.cubes, self.data.state_ref
        self.fit0, self.val0 = self.cubes.fit_pairs[:, 0:1], self.cubes.val_pairs[:, 0:1]
        self.m = setup.model_and_optimizer(self.cfg, self.data, self.dev, self.payload, init_from, self.crop_masks)
        self.steps_per_epoch = -(-self.data.n_fit // self.cfg.batch_size)
        self.stopped = False  # set by epoch_steps when should_stop() fired
        self._set_up_files(preview_slab)

    # the masks of cubes ``index``: centre crops (fitting) and the extraction edge (wedge updates)
    def crop_masks(self, index):
        return self.cubes.wedges.crop(self.cubes.fit_index[index])

    def extraction_masks(self, index):
        return self.cubes.wedges.extraction(self.cubes.fit_index[index])

    def val_extraction_masks(self, index):
        return self.cubes.wedges.extraction(self.cubes.val_index[index])

    def _set_up_files(self, preview_slab) -> None:
        from .preview import Previewer
        from .signals import SIGNALS, SignalProbe, check_best_by
        from .state import carry_state

        cfg, main = self.cfg, self.dev.main
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir else None
        self.loss_log = None
        if self.out_dir is not None and main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.loss_log = LossLog(self.out_dir / "losses.csv", self.m.history, SIGNALS if cfg.signal_every else ())
            carry_state(self.state_ref, self.resume_dir, self.out_dir)  # resumed into another folder
        self.states_written: set[str] = set()
        self.state_refs: dict[str, str | None] = {}  # checkpoint file → the state file it refers to
        self.latest_path = self.best_path = None
        if self.out_dir is not None and self.payload is not None:
            latest, best = self.out_dir / "latest.pt", self.out_dir / "best.pt"
            self.latest_path = latest if latest.exists() else None
            self.best_path = best if best.exists() else None
        self.previewer = None
        if cfg.preview_every and main:
            self.previewer = Previewer(
                self.pairs[0].even, self.pairs[0].odd, subtomo_size=cfg.subtomo_size, tilt_min=cfg.tilt_min,
                tilt_max=cfg.tilt_max, stats=self.data.stats[0], batch_size=cfg.batch_size,
                device=self.dev.device, slab=preview_slab, resampling=cfg.resampling)
        check_best_by(cfg, self.data.n_val)
        self.probe = None  # the no-ground-truth signals (core.fit.signals), on a crop of pair 0
        if cfg.signal_every and main:
            self.probe = SignalProbe(
                self.pairs[0].even, self.pairs[0].odd, subtomo_size=cfg.subtomo_size, tilt_min=cfg.tilt_min,
                tilt_max=cfg.tilt_max, stats=self.data.stats[0], batch_size=cfg.batch_size, device=self.dev.device,
                resampling=cfg.resampling, voxel_size=cfg.voxel_size)

    def started(self) -> FitStarted:
        return FitStarted(n_fit_cubes=self.data.n_fit, n_val_cubes=self.data.n_val,
                          steps_per_epoch=self.steps_per_epoch, device=str(self.dev.device), config=self.cfg)

    def finished(self, epochs_done: int, *, stopped: bool = False, latest_path=None, reason: str = "") -> FitFinished:
        return FitFinished(epochs_done=epochs_done, stopped=stopped, latest_path=latest_path or self.latest_path,
                           best_path=self.best_path, reason=reason)

    # ---- one epoch -----------------------------------------------------------------------------
    def epoch_steps(self, epoch: int, should_stop) -> Iterator[FitEvent]:
        """The optimizer steps of ``epoch`` (from the step a stopped checkpoint was at); when
        ``should_stop()`` fires: ``stopped.pt`` and ``FitFinished``, then ``self.stopped``."""
        m, cfg, B, steps_n = self.m, self.cfg, self.cfg.batch_size, self.steps_per_epoch
        if m.perm is None:  # a new epoch (not one a stopped checkpoint was in the middle of)
            m.perm = torch.randperm(self.data.n_fit, generator=m.gen)
            m.tally = EpochTally()
        self.t_start = time.perf_counter() - m.tally.seconds
        for step in range(m.step0, steps_n):
            if steps.stop_requested(should_stop, self.dev.device, self.dev.world):
                m.tally.seconds = time.perf_counter() - self.t_start
                stopped_path = None
                if self.out_dir is not None and self.dev.main:
                    event = self.save("stopped", "stopped.pt", epoch - 1, step, m.perm, m.tally)
                    stopped_path = event.path
                    yield event
                yield self.finished(epoch - 1, stopped=True, latest_path=stopped_path)
                self.stopped = True
                return
            idx = m.perm[step * B:(step + 1) * B]
            if cfg.lr_schedule != "constant":
                for group in m.opt.param_groups:
                    group["lr"] = lr_at(cfg.lr, cfg.lr_schedule, cfg.epochs, cfg.warmup_epochs, epoch, step, steps_n)
            if step + 1 < steps_n:
                self.cubes.prefetch(m.perm[(step + 1) * B:(step + 2) * B])
            loss = steps.fit_step(m.model, m.opt, m.scaler, self.cubes, self.data.masks, idx, m.gen, cfg,
                                  rank=self.dev.rank, world=self.dev.world, amp=self.dev.amp, emulate=self.emulate)
            m.tally.add(loss, len(idx))
            yield StepDone(epoch=epoch, step=step + 1, steps_per_epoch=steps_n, loss=loss)
        m.step0, m.perm = 0, None

    def end_epoch(self, epoch: int) -> tuple[EpochRecord, bool]:
        """Validation (when due), the wedge update (when due), the signals (when due, measured
        after the update: on the model this epoch saves) and the epoch's record (logged)."""
        m, cfg, dev = self.m, self.cfg, self.dev
        fit_loss = m.tally.mean_loss()
        validated = epoch % cfg.validate_every == 0 or epoch == cfg.epochs
        measured = bool(cfg.signal_every) and (epoch % cfg.signal_every == 0 or epoch == cfg.epochs)
        terms = {} if measured else None
        val_loss = (steps.validation_loss(m.net, self.cubes, self.data.masks, cfg, rank=dev.rank, world=dev.world,
                                          amp=dev.amp, emulate=self.emulate, terms=terms)
                    if validated or measured else None)
        if not validated:
            val_loss = None
        signals = dict(terms or {})
        updated = cfg.update_every > 0 and epoch % cfg.update_every == 0
        if updated:
            self.update_wedges(epoch)
        if self.probe is not None and measured:
            signals.update(self.probe(m.net))
            m.model.train()
        record = EpochRecord(epoch, fit_loss, val_loss, time.perf_counter() - self.t_start, signals)
        m.history.append(record)
        m.tally = EpochTally()
        if self.loss_log is not None:
            self.loss_log.append(record)
        return record, updated

    def update_wedges(self, epoch: int) -> None:
        """The model fills the unobserved frequencies of every fitting (and validation) cube0;
        the input normalization is recomputed and the cubes written to a fitting-state file."""
        from .state import save_fit_state

        m, cfg, dev, kind = self.m, self.cfg, self.dev, self.cfg.resampling
        common = dict(rank=dev.rank, world=dev.world, amp=dev.amp, resampling=kind, emulate=self.emulate)
        env = self.cubes.envelopes
        steps.update_wedges(m.net, self.fit0, None, cfg.depth, dev.device, cfg.batch_size,
                            mask_of=self.extraction_masks, **common,
                            envelope_of=None if env is None else lambda i: env.extraction(self.cubes.fit_index[i]))
        if cfg.update_val_wedges and self.data.n_val:  # as the original: validation sees what fitting sees
            steps.update_wedges(m.net, self.val0, None, cfg.depth, dev.device, cfg.batch_size,
                                mask_of=self.val_extraction_masks, **common,
                                envelope_of=None if env is None else lambda i: env.extraction(self.cubes.val_index[i]))
        self.cubes.refresh_coefficients()
        m.net.set_normalization(*steps.input_normalization(self.fit0, None, cfg.subtomo_size, dev.device,
                                                           mask_of=self.crop_masks, resampling=kind))
        if self.out_dir is not None and dev.main:  # the cubes changed: the one time they are written
            self.state_ref = save_fit_state(self.out_dir, epoch, self.fit0, self.val0)
            self.states_written.add(self.state_ref)

    # ---- checkpoints ---------------------------------------------------------------------------
    def save(self, kind: str, name: str, epoch_completed: int, step: int = 0, perm=None, tally=None):
        from ..model import checkpoint as ckpt
        from .payload import build_fit_payload

        m = self.m
        payload = build_fit_payload(
            net=m.net, config=self.cfg, subtomo_size=self.cfg.subtomo_size, stats=self.data.stats[0],
            epoch=epoch_completed, step=step, optimizer=m.opt, scaler=m.scaler, generator=m.gen,
            fit_state=self.state_ref, perm=perm, tally=tally or EpochTally(), best_val_loss=m.best,
            history=m.history, n_fit=self.data.n_fit, n_val=self.data.n_val, inputs=self.data.inputs)
        # latest.pt keeps its predecessor as latest.prev.pt: one corrupt file is survivable (and the
        # fitting state the predecessor refers to is kept with it)
        if kind == "latest":
            self.state_refs["latest.prev.pt"] = self.state_refs.get("latest.pt")
        write = ckpt.save_rotating if kind == "latest" else ckpt.save_checkpoint
        self.state_refs[name] = self.state_ref
        return CheckpointSaved(epoch=epoch_completed, path=write(self.out_dir / name, payload), kind=kind)

    def checkpoints(self, epoch: int, record: EpochRecord) -> Iterator[FitEvent]:
        """``best.pt`` when the score improved, ``latest.pt``, a periodic ``epoch_NNNN.pt``
        when due; fitting-state files no checkpoint names are removed."""
        from ..model import checkpoint as ckpt
        from .signals import improved_at
        from .state import prune_states

        m, out_dir, refs, best_by = self.m, self.out_dir, self.state_refs, self.cfg.best_by
        score = record.val_loss if self.data.n_val > 0 else record.fit_loss
        if score is not None and (m.best is None or score < m.best):
            m.best = float(score)
            improved = best_by == "val_loss"
        else:
            improved = False
        if best_by != "val_loss":  # best.pt follows the chosen signal (core.fit.signals)
            improved = improved_at(m.history, best_by, epoch)
        if out_dir is None or not self.dev.main:
            return
        # best.pt before latest.pt (its byte copy): a kill between the two leaves best.pt one
        # epoch ahead, and the resumed run redoes that epoch to the same state — the other
        # order could leave a stale best.pt for good
        if improved:
            self.best_path = self.save("best", "best.pt", epoch).path
            refs["latest.prev.pt"] = refs.get("latest.pt")
            refs["latest.pt"] = self.state_ref
            self.latest_path = ckpt.copy_checkpoint(self.best_path, out_dir / "latest.pt", keep_previous=True)
        else:
            self.latest_path = self.save("latest", "latest.pt", epoch).path
        yield CheckpointSaved(epoch=epoch, path=self.latest_path, kind="latest")
        if improved:
            yield CheckpointSaved(epoch=epoch, path=self.best_path, kind="best")
            refs["best.pt"] = self.state_ref
        if self.cfg.checkpoint_every and epoch % self.cfg.checkpoint_every == 0:
            path = ckpt.copy_checkpoint(self.latest_path, out_dir / f"epoch_{epoch:04d}.pt")
            refs[path.name] = self.state_ref
            yield CheckpointSaved(epoch=epoch, path=path, kind="periodic")
        prune_states(out_dir, self.states_written, set(refs.values()))


def fit_iter(tomo0, tomo1, config: FitConfig, *, mask=None, pairs=None, resume=None, resume_dir=None,
             init_from=None, should_stop: Callable[[], bool] | None = None,
             preview_slab: Callable[[], tuple[int, int]] | None = None,
             emulate_ranks: int = 1) -> Iterator[FitEvent]:
    """Fit a U-Net to one or more half pairs (docs/method.md §2.4–2.7), yielding events.

    One pair: ``tomo0``/``tomo1`` with ``config.tilt_min/tilt_max`` and the optional ROI
    ``mask``. Several: ``pairs`` (a list of :class:`core.fit.pairs.HalfPair`, ``tomo0``/``tomo1``
    None); each pair keeps its own tilt range, standardization, ROI and validation share
    (core.fit.data); ``config``'s tilt range and voxel size become pair 0's. ``resume``: a
    checkpoint path (or its loaded payload, then ``resume_dir`` is its folder) to continue from
    (exactly); every setting that ``core.fit.resume.RESUME_FIXED`` lists must match the
    checkpoint's. ``init_from``: a checkpoint (path or payload) whose weights start a new fit
    (fine-tuning: fresh optimizer, schedule and normalization; same architecture).
    ``should_stop``: polled before every step; when it returns True the loop saves
    ``stopped.pt`` (if ``out_dir``) and finishes. ``preview_slab()`` gives the
    ``(z_start, z_stop)`` rows of pair 0 previewed every ``preview_every`` epochs (default: a
    central slab of thickness ``subtomo_size``).
    ``emulate_ranks`` (one process only): do the work of that many DDP ranks one after the
    other — each optimizer step runs every rank's share of the batch as its own forward and
    backward, validation and wedge updates run each rank's share in its batches — so that the
    same kernels run on the same tensors as under torchrun. With 2 the result is bit-identical
    to a 2-rank run (a sum of two is order-free; more ranks: up to the all-reduce's order); the
    plain single-process run differs from it by float rounding only (other batch shapes pick
    other kernels, and Adam's first steps amplify such differences).
    """
    from .signals import stop_reason

    run = _Run(tomo0, tomo1, config, mask=mask, pairs=pairs, resume=resume, resume_dir=resume_dir,
               init_from=init_from, preview_slab=preview_slab, emulate_ranks=emulate_ranks)
    cfg = run.cfg
    yield run.started()
    run.m.model.train()
    for epoch in range(run.m.epoch_done + 1, cfg.epochs + 1):
        yield from run.epoch_steps(epoch, should_stop)
        if run.stopped:
            return
        record, updated = run.end_epoch(epoch)
        yield EpochDone(epoch=epoch, fit_loss=record.fit_loss, val_loss=record.val_loss, seconds=record.seconds,
                        signals=record.signals)
        if updated:
            yield WedgesUpdated(epoch=epoch)
        yield from run.checkpoints(epoch, record)
        if run.previewer is not None and epoch % cfg.preview_every == 0:
            preview = run.previewer(run.m.net, epoch)
            run.m.model.train()
            yield preview
        reason = stop_reason(run.m.history, cfg.best_by, cfg.early_stop_patience)
        if reason and epoch < cfg.epochs:
            yield run.finished(epoch, reason=reason)
            return
    yield run.finished(cfg.epochs)


def fit(tomo0, tomo1, config: FitConfig, *, on_event: Callable[[object], None] | None = None, **kw) -> FitFinished:
    """Run :func:`fit_iter` to the end, passing every event to ``on_event``; return FitFinished."""
    last = None
    for event in fit_iter(tomo0, tomo1, config, **kw):
        if on_event is not None:
            on_event(event)
        last = event
    return last
