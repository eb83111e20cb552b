"""The commands ``reconstruct``, ``fit``, ``refine``, ``run`` and ``napari``: each a short
function over the pipeline (``demo`` is in :mod:`.demo`)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..core.errors import DDWError
from ..pipeline import (
    FitRequest,
    RefineRequest,
    finished_fit,
    halves_paths,
    reconstruct_halves,
    refine,
    refined_paths,
    refuse_existing,
    write_halves,
    write_refined,
)
from ..pipeline.fit_inputs import memory_line
from ..pipeline.fitting import HalfPair
from ..pipeline.masks import cube_lines
from .fitting import (
    claim_fit_folder,
    fit_config,
    fit_out_dir,
    fit_size_for_halves,
    given_fields,
    leave_distributed,
    maybe_init_distributed,
    report_fit,
    run_fit,
)
from .inputs import halves_request, read_pair
from .mask import auto_params, mask_pair
from .output import info, warn
from .pairs import load_pairs
from .progress import Progress

EXIT_INTERRUPTED = 130


def reconstruct(args, request, out: Path, *, overwrite: bool):
    """Reconstruct and write the halves (refused before computing if a file exists)."""
    refuse_existing(halves_paths(out, request.stem, with_full=request.want_full), overwrite=overwrite)
    with Progress("reconstruct", quiet=args.quiet, unit=None) as bar:
        halves = reconstruct_halves(request, progress=bar)
    info(args, halves.ctf_summary)
    return halves, write_halves(out, halves.stem, halves, overwrite=overwrite)


def cmd_reconstruct(args) -> int:
    t0 = time.perf_counter()
    halves, written = reconstruct(args, halves_request(args, want_full=args.full), Path(args.out),
                                  overwrite=args.overwrite)
    z, y, x = halves.even.shape
    info(args, f"reconstructed {len(written)} tomograms of {z}×{y}×{x} (Z×Y×X) at "
               f"{halves.voxel_size[0]:g} Å/voxel in {time.perf_counter() - t0:.1f} s")
    for path in written:
        print(path)
    return 0


def fit_request(args, out: Path) -> FitRequest:
    """The fit the command line (flags, --pairs, --config) asks for: its half pairs, settings,
    and the checkpoint to resume or to start from."""
    pairs = load_pairs(args)
    config = fit_config(args, tilt_range=pairs[0].tilt_range, out_dir=out, voxel_size=pairs[0].voxel_size)
    if config.ctf_loss:  # before anything is written (the engine checks it again)
        from ..core.fit.ctf_envelope import check_ctf_pairs

        check_ctf_pairs(pairs)
    return fit_size_for_halves(args, FitRequest(
        config=config, pairs=pairs, resume=args.resume, init_from=args.init_from,
        given=given_fields(args)))


def cmd_fit(args) -> int:
    joined = maybe_init_distributed()
    try:
        out = fit_out_dir(args)
        request = fit_request(args, out)
        claim_fit_folder(args, out)
        estimate = memory_line(request.pairs, request.config)
        if estimate is not None:
            info(args, estimate)
        for line in cube_lines(request.pairs, request.config):
            info(args, line)  # how many cubes the masks removed
        t0 = time.perf_counter()  # the engine reads the (memory-mapped) halves itself
        finished, interrupted = run_fit(args, request)
        report_fit(args, finished, time.perf_counter() - t0)
        return EXIT_INTERRUPTED if finished is not None and finished.stopped and interrupted else 0
    finally:
        if joined:
            leave_distributed()


def refine_and_write(args, model, even, odd, out: Path, *, keep_halves: bool, voxel_size, origin,
                     overwrite: bool) -> list[Path]:
    """Refine (refused before computing if an output exists) and write the refined files."""
    refuse_existing(refined_paths(out, with_halves=keep_halves), overwrite=overwrite)
    request = RefineRequest(model=model, even=even, odd=odd, overlap=args.overlap,
                            batch_size=args.refine_batch_size or 4, device=args.device,
                            keep_halves=keep_halves)
    with Progress("refine", quiet=args.quiet, unit="batch") as bar:
        result = refine(request, progress=bar)
    return write_refined(out, result, voxel_size, origin, overwrite=overwrite,
                         provenance=provenance(args, model))


def provenance(args, model) -> dict:
    """What an OME-Zarr output records of its making (core.io.omezarr_write.provenance_record)."""
    import shlex
    import sys

    from ..core.io.omezarr_write import provenance_record

    model = getattr(args, "model", None) or (model if isinstance(model, (str, Path)) else None)
    argv = getattr(args, "argv", None) or sys.argv[1:]
    return provenance_record(model=model, command=shlex.join(["deepdewedge", *map(str, argv)]))


def refine_output(args) -> Path:
    out = args.out
    if out is None and args.config_values.get("output_dir"):
        from ..pipeline import stem_of

        out = Path(args.config_values["output_dir"]) / f"{stem_of(args.even[0])}_refined.mrc"
    if out is None:
        raise DDWError("no output: give --out OUT.mrc (or OUT.zarr for OME-Zarr)")
    return Path(out)


def is_batch(args) -> bool:
    """Many pairs (repeated --even, a glob, --pairs) or --out naming a folder: a batch."""
    from ..pipeline.batch import expand

    evens = args.even or []
    if args.pairs is not None or len(evens) != 1 or len(expand(evens[0])) != 1:
        return True
    out = args.out
    if out is not None and Path(out).suffix.lower() == ".zarr":  # an OME-Zarr output, one image
        return False
    return out is not None and (Path(out).is_dir() or str(out).endswith(("/", "\\"))
                                or Path(out).suffix.lower() != ".mrc")


def cmd_refine(args) -> int:
    if not args.model:
        raise DDWError("no model: give --model CKPT (a checkpoint written by 'deepdewedge fit')")
    if not Path(args.model).exists():
        raise DDWError(f"{args.model}: checkpoint not found; check the path")
    if args.even and args.odd and len(args.even) == 1 == len(args.odd) and not is_batch(args):
        return refine_one(args)
    return refine_many(args)


def refine_one(args) -> int:
    from ..core.model.checkpoint import load_model
    from ..core.device import pick_device

    even, odd = read_pair(args.even[0], args.odd[0])
    out = refine_output(args)
    model = load_model(args.model, device=pick_device(args.device))  # a bad file fails here
    for path in refine_and_write(args, model, even.data, odd.data, out, keep_halves=args.halves,
                                 voxel_size=even.voxel_size, origin=even.origin,
                                 overwrite=args.overwrite):
        print(path)
    return 0


def refine_many(args) -> int:
    """One model over many pairs: DIR/<stem>_refined.mrc each (pipeline.batch)."""
    from ..pipeline.batch import BatchRefineRequest, distributed_rank, find_pairs, refine_batch
    from .output import is_rank_zero
    from .progress import BatchReport

    out_dir = args.out or args.config_values.get("output_dir")
    if out_dir is None or Path(out_dir).suffix.lower() in (".mrc", ".zarr"):
        raise DDWError("many tomograms need an output folder: give --out DIR (one "
                       "<stem>_refined.mrc per tomogram)")
    pairs = find_pairs(args.even or [], args.odd or [], args.pairs)
    rank, world = distributed_rank()
    request = BatchRefineRequest(model=args.model, pairs=pairs, out_dir=Path(out_dir),
                                 overlap=args.overlap, batch_size=args.refine_batch_size or 4,
                                 device=args.device, keep_halves=args.halves,
                                 overwrite=args.overwrite, rank=rank, world=world)
    if world > len(pairs) and is_rank_zero():
        info(args, f"{world} processes for {len(pairs)} tomograms: {world - len(pairs)} will "
                   "idle (the unit of work is one tomogram)")
    t0 = time.perf_counter()
    with BatchReport(quiet=args.quiet) as report:
        result = refine_batch(request, report=report)
    for name in result.refined:
        print(result.outputs[name])
    info(args, f"rank {rank}: refined {len(result.refined)}, kept {len(result.skipped)} finished "
               f"of {len(pairs)} in {time.perf_counter() - t0:.1f} s" if world > 1 else
               f"refined {len(result.refined)}, kept {len(result.skipped)} finished of "
               f"{len(pairs)} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_run(args) -> int:
    if args.out is None:
        raise DDWError("no output folder: give --out DIR")
    if args.thickness is None:
        raise DDWError("give the tomogram thickness: --thickness Z (in output voxels)")
    from ..pipeline.project import is_project_input

    if args.tiltseries is not None and is_project_input(args.tiltseries):
        return run_many(args)
    if args.fit_on is not None:
        raise DDWError("--fit-on chooses among several tilt series: give a folder, a quoted "
                       "glob or a list file instead of one stack")
    out = Path(args.out)
    request = halves_request(args, want_full=args.full)
    check_run_ctf_loss(args, request)
    # a resumed run continues its own job: its halves and refined files are replaced (the
    # halves by the same deterministic reconstruction the checkpoint was fitted on)
    overwrite = args.overwrite or args.resume is not None
    refined_out = out / f"{request.stem}_refined.{args.refined_format or 'mrc'}"
    refined = refined_paths(refined_out, with_halves=not args.no_halves)
    refuse_existing(refined[:1], overwrite=overwrite)  # written last: the job is finished
    claim_fit_folder(args, out / "model")  # an unfinished job: the --resume command finishes it
    refuse_existing(refined, overwrite=overwrite)
    t_start = time.perf_counter()
    halves, written = reconstruct(args, request, out, overwrite=overwrite)
    for path in written:
        info(args, f"wrote {path}")
    masked = HalfPair(even=halves.even, odd=halves.odd, tilt_range=halves.tilt_range, name=request.stem)
    mask_pair(args, masked, args.mask)  # 'auto': from the halves just reconstructed
    config = fit_config(args, tilt_range=halves.tilt_range, out_dir=out / "model",
                        voxel_size=halves.voxel_size)
    fit_request = fit_size_for_halves(args, FitRequest(
        even=halves.even, odd=halves.odd, config=config, mask=masked.mask,
        mask_source=masked.mask_source, resume=args.resume, given=given_fields(args), ctf=halves.ctf))
    for line in cube_lines([masked], fit_request.config):  # at the cube size the fit will use
        info(args, line)
    model_path = fit_for_run(args, fit_request, t_start)
    if model_path is None:
        even_path, odd_path = written[:2]
        info(args, f"not refining after the interrupt; refine later with: deepdewedge refine "
                   f"--even {even_path} --odd {odd_path} --model CKPT --out {refined_out}")
        return EXIT_INTERRUPTED
    for path in refine_and_write(args, str(model_path), halves.even, halves.odd, refined_out,
                                 keep_halves=not args.no_halves, voxel_size=halves.voxel_size,
                                 origin=halves.origin, overwrite=overwrite):
        print(path)
    info(args, f"done in {time.perf_counter() - t_start:.0f} s (model: {model_path})")
    return 0


def check_run_ctf_loss(args, request) -> None:
    """``run --ctf-loss`` needs the stack's defoci and the phase flip: refused before anything
    is computed or written."""
    from .fitting import _option

    if not _option(args, "ctf_loss"):
        return
    if not request.ctf:
        raise DDWError("--ctf-loss needs phase-flipped halves: drop --no-ctf (or --ctf-loss)")
    if request.series is None or request.series.meta.get("ctf") is None:
        raise DDWError("--ctf-loss needs the defocus of every view, but none was found for this stack: "
                       "give --ctf FILE (CTFFIND4 .txt, IMOD .defocus, RELION star, Warp XML, .mdoc) "
                       "or fit without --ctf-loss")


def fit_for_run(args, request: FitRequest, t_start: float) -> Path | None:
    """The model ``run`` refines with: fit (or continue the fit of ``--resume``), or — when that
    checkpoint has already finished its fit (pipeline.finished_fit) — its ``best.pt`` without
    fitting again. ``None`` when the fit was interrupted."""
    already = finished_fit(request)
    if already is not None:
        info(args, f"fit already finished ({already.epochs_done} epochs): refining with "
                   f"{already.model}")
        return already.model
    finished, interrupted = run_fit(args, request)
    report_fit(args, finished, time.perf_counter() - t_start)
    if finished is None or (finished.stopped and interrupted):
        return None
    return finished.best_path or finished.latest_path


def run_many(args) -> int:
    """A project: a folder/glob/list of tilt series; DIR/job.json records what is finished,
    so the same command continues an interrupted job (pipeline.project)."""
    from ..pipeline.project import ProjectRequest, discover_series, run_project
    from .fitting import StopOnCtrlC
    from .progress import BatchReport, FitReport, ProjectReport

    for flag, value in (("--even-odd", args.even_odd), ("--angles", args.angles),
                        ("--refined-format", args.refined_format),
                        ("--tilt-range", args.tilt_range), ("--resume", args.resume)):
        if value is not None:
            raise DDWError(f"{flag} is for one tilt series; a project finds each stack's angle "
                           "file beside it and continues its own fit from DIR/job.json")
    if args.ctf is not None:
        raise DDWError("--ctf FILE is for one tilt series; a project finds each stack's defocus "
                       "file beside it (<stem>.defocus, <stem>_ctffind4.txt, <stem>_CTF.txt, … "
                       "or the fitted defoci of its RELION/Warp metadata) — put each file beside "
                       "its stack, or give --no-ctf to reconstruct without phase flipping")
    from ..pipeline.masks import is_auto

    if args.mask is not None and not is_auto(args.mask):
        raise DDWError(f"--mask {args.mask}: a mask file is for one tomogram; a project takes "
                       "--mask auto (each tomogram's mask computed from its own halves), or fit "
                       "the project's halves with 'deepdewedge fit --even … --mask FILE …'")
    from .fitting import _option

    if _option(args, "ctf_loss") and args.no_ctf:
        raise DDWError("--ctf-loss needs phase-flipped halves: drop --no-ctf (or --ctf-loss)")
    if args.overwrite:
        raise DDWError("a project folder continues its job (DIR/job.json); to start afresh give "
                       "another --out")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise DDWError("a project run is one process (its job file has one writer); under "
                       "torchrun run 'fit' and 'refine' over the project's halves instead")
    out = Path(args.out)
    series = discover_series(args.tiltseries, out_dir=out)
    config = fit_config(args, tilt_range=(-60.0, 60.0), out_dir=out / "model",
                        voxel_size=(1.0, 1.0, 1.0))  # tilt range and voxel size: from the data
    request = ProjectRequest(
        series=series, out_dir=out, thickness=args.thickness, fit_config=config,
        fit_on=args.fit_on, binning=args.bin or 1, bin_mode=args.bin_mode or "fourier",
        tilt_axis_x=args.tilt_axis_x, device=args.device, given=given_fields(args),
        overlap=args.overlap, refine_batch_size=args.refine_batch_size or 4,
        keep_halves=not args.no_halves, ctf=not args.no_ctf,
        ctf_optics={k: getattr(args, k, None) for k in ("voltage", "cs", "amplitude_contrast")},
        ctf_strip=args.ctf_strip, invert=bool(args.invert),
        mask="auto" if args.mask is not None else None,
        mask_params=auto_params(args) if args.mask is not None else None)
    info(args, f"project of {len(series)} tilt series in {out} (state: {out / 'job.json'})")
    t0 = time.perf_counter()
    stopper = StopOnCtrlC()
    with stopper, FitReport(quiet=args.quiet) as fit_report, \
            BatchReport(quiet=args.quiet) as batch_report, \
            ProjectReport(quiet=args.quiet) as project_report:
        def report(event):
            kind = type(event).__name__
            if kind == "ProjectNote":  # a tomogram's CTF line, its mask and cubes
                if event.warning:
                    warn(f"{event.name}: {event.text}")
                elif event.text.startswith(event.name):
                    info(args, event.text)
                else:
                    info(args, f"{event.name}: {event.text}")
                return
            if kind == "ProjectStep":
                project_report(event)
            elif kind.startswith("Tomogram") or kind == "VoxelSizeWarning":
                batch_report(event)
            else:
                fit_report(event)
                return  # the fit polls should_stop itself
            if stopper.requested:  # Ctrl-C outside the fit: stop between steps
                raise KeyboardInterrupt

        result = run_project(request, report, should_stop=stopper)
    if not result.finished:
        info(args, "stopped; run the same command again to continue where it stopped")
        return EXIT_INTERRUPTED
    for path in result.outputs.values():
        print(path)
    info(args, f"done in {time.perf_counter() - t0:.0f} s (model: {result.checkpoint})")
    return 0


def cmd_napari(args) -> int:
    from .._launch import open_viewer

    return open_viewer(sample=not args.no_sample, screenshot=args.screenshot)
