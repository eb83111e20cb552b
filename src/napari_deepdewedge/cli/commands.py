"""The commands ``reconstruct``, ``fit``, ``refine``, ``run`` and ``napari``: each a short
function over the pipeline (``demo`` is in :mod:`.demo`)."""
from __future__ import annotations

import time
from pathlib import Path

from ..core.errors import DDWError
from ..pipeline import (
    FitRequest,
    RefineRequest,
    halves_paths,
    reconstruct_halves,
    refine,
    refined_paths,
    refuse_existing,
    write_halves,
    write_refined,
)
from .fitting import (
    claim_fit_folder,
    fit_config,
    fit_out_dir,
    given_fields,
    leave_distributed,
    maybe_init_distributed,
    report_fit,
    run_fit,
)
from .inputs import halves_request, read_mask, read_pair, tilt_range_for_fit
from .output import info
from .progress import Progress

EXIT_INTERRUPTED = 130


def reconstruct(args, request, out: Path, *, overwrite: bool):
    """Reconstruct and write the halves (refused before computing if a file exists)."""
    refuse_existing(halves_paths(out, request.stem, with_full=request.want_full), overwrite=overwrite)
    with Progress("reconstruct", quiet=args.quiet, unit=None) as bar:
        halves = reconstruct_halves(request, progress=bar)
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


def cmd_fit(args) -> int:
    joined = maybe_init_distributed()
    try:
        out = fit_out_dir(args)
        tilt_range = tilt_range_for_fit(args)
        even, odd = read_pair(args.even, args.odd)
        mask = read_mask(args.mask, even.data.shape)
        config = fit_config(args, tilt_range=tilt_range, out_dir=out, voxel_size=even.voxel_size)
        claim_fit_folder(args, out)
        t0 = time.perf_counter()  # the engine reads the (memory-mapped) halves itself
        finished, interrupted = run_fit(args, FitRequest(
            even=even.data, odd=odd.data, config=config, mask=mask, resume=args.resume,
            given=given_fields(args)))
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
    return write_refined(out, result, voxel_size, origin, overwrite=overwrite)


def refine_output(args) -> Path:
    out = args.out
    if out is None and args.config_values.get("output_dir"):
        from ..pipeline import stem_of

        out = Path(args.config_values["output_dir"]) / f"{stem_of(args.even)}_refined.mrc"
    if out is None:
        raise DDWError("no output: give --out OUT.mrc")
    return Path(out)


def cmd_refine(args) -> int:
    if not args.model:
        raise DDWError("no model: give --model CKPT (a checkpoint written by 'deepdewedge fit')")
    if not Path(args.model).exists():
        raise DDWError(f"{args.model}: checkpoint not found; check the path")
    from ..core.checkpoint import load_model
    from ..core.device import pick_device

    even, odd = read_pair(args.even, args.odd)
    out = refine_output(args)
    model = load_model(args.model, device=pick_device(args.device))  # a bad file fails here
    for path in refine_and_write(args, model, even.data, odd.data, out, keep_halves=args.halves,
                                 voxel_size=even.voxel_size, origin=even.origin,
                                 overwrite=args.overwrite):
        print(path)
    return 0


def cmd_run(args) -> int:
    if args.out is None:
        raise DDWError("no output folder: give --out DIR")
    if args.thickness is None:
        raise DDWError("give the tomogram thickness: --thickness Z (in output voxels)")
    out = Path(args.out)
    request = halves_request(args, want_full=args.full)
    # a resumed run continues its own job: its halves and refined files may be replaced
    overwrite = args.overwrite or args.resume is not None
    refined_out = out / f"{request.stem}_refined.mrc"
    refuse_existing(refined_paths(refined_out, with_halves=not args.no_halves), overwrite=overwrite)
    claim_fit_folder(args, out / "model")
    t_start = time.perf_counter()
    halves, written = reconstruct(args, request, out, overwrite=overwrite)
    for path in written:
        info(args, f"wrote {path}")
    mask = read_mask(args.mask, halves.even.shape)
    config = fit_config(args, tilt_range=halves.tilt_range, out_dir=out / "model",
                        voxel_size=halves.voxel_size)
    finished, interrupted = run_fit(args, FitRequest(
        even=halves.even, odd=halves.odd, config=config, mask=mask, resume=args.resume,
        given=given_fields(args)))
    report_fit(args, finished, time.perf_counter() - t_start)
    if finished is None or (finished.stopped and interrupted):
        even_path, odd_path = written[:2]
        info(args, f"not refining after the interrupt; refine later with: deepdewedge refine "
                   f"--even {even_path} --odd {odd_path} --model CKPT --out {refined_out}")
        return EXIT_INTERRUPTED
    model_path = finished.best_path or finished.latest_path
    for path in refine_and_write(args, str(model_path), halves.even, halves.odd, refined_out,
                                 keep_halves=not args.no_halves, voxel_size=halves.voxel_size,
                                 origin=halves.origin, overwrite=overwrite):
        print(path)
    info(args, f"done in {time.perf_counter() - t_start:.0f} s (model: {model_path})")
    return 0


def cmd_napari(args) -> int:
    from .._launch import open_viewer

    return open_viewer(sample=not args.no_sample, screenshot=args.screenshot)
