"""Refine many tomograms with one model (pipeline.batch): half-tomogram files given by a glob
or a pair list, one ``<stem>_refined.mrc`` each in an output folder; progress per tomogram and
overall; Stop keeps every finished output (running it again skips them)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from qtpy.QtWidgets import QCheckBox, QPushButton

from ._common import add_row, form_layout, hbox, notify_info, path_field, tip
from ._panel import DDWPanel
from ._workers import run_with_progress


def _batch_job(job, request, status):
    """Run ``refine_batch`` on a helper thread; ``status`` (a dict read by the GUI) holds the
    current tomogram and the finished count. Progress is over the whole batch."""
    from ..pipeline.batch import refine_batch

    def work(progress):
        total = len(request.pairs)

        def report(event):
            kind = type(event).__name__
            status.update(name=event.name, index=event.index, total=total)
            if kind == "TomogramFinished":
                status["finished"] = event.finished_overall
                status["done_here"] = status.get("done_here", 0) + 1
                progress(status["done_here"] * 1000, total * 1000)
            elif kind == "TomogramProgress" and event.of:
                progress(status.get("done_here", 0) * 1000 + event.done * 1000 // event.of,
                         total * 1000)
            elif kind == "VoxelSizeWarning":
                status.setdefault("warnings", []).append(event.message)

        return refine_batch(request, report=report)

    return (yield from run_with_progress(work, job.stop, "Refining"))


class BatchRefineWidget(DDWPanel):
    """Batch refine: one model over many even/odd pairs given as files."""

    title = "Refine many"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.progress_info: dict = {}  # current tomogram and finished count, written by the job
        self.result = None
        lay = self.vbox(self)
        form = form_layout()
        row, self.inputs = path_field(
            "rec/*_even.mrc or pairs.txt",
            "The even halves as a glob (the odd partner of each is found by its stem: _even → "
            "_odd, _EVN → _ODD), or a pair list (lines 'EVEN [ODD [ANGLES | MIN,MAX]]').",
            filters="Pair lists (*.txt);;All files (*)")
        add_row(form, "Tomograms", row, self.inputs.toolTip())
        row, self.model_path = path_field("model checkpoint (.pt)", "The fitted model (best.pt).",
                                          filters="Checkpoints (*.pt);;All files (*)")
        add_row(form, "Model", row, self.model_path.toolTip())
        row, self.out_dir = path_field("output folder", "One <stem>_refined.mrc per tomogram.",
                                       dialog="dir")
        add_row(form, "Output folder", row, self.out_dir.toolTip())
        self.halves = QCheckBox("also per-half results and their difference")
        self.overwrite = QCheckBox("redo finished outputs")
        add_row(form, "", self.halves, "Write <stem>_refined_half0/_half1/_consistency.mrc too.")
        add_row(form, "", self.overwrite, "Without it, finished outputs are kept and skipped.")
        lay.addLayout(form)
        self.run_button = tip(QPushButton("Refine all"), "Refine every tomogram not finished yet.")
        self.stop_button = tip(QPushButton("Stop"), "Stop; finished outputs are kept and "
                               "skipped when you run again.")
        self.stop_button.setEnabled(False)
        self.run_button.clicked.connect(lambda: self.start())
        self.stop_button.clicked.connect(lambda: self.cancel("Stopping after this tomogram's "
                                                             "current tile…"))
        lay.addWidget(hbox(self.run_button, self.stop_button))
        bar, label = self.make_progress()
        lay.addWidget(bar)
        lay.addWidget(label)

    def _request(self):
        from ..core.errors import DDWError
        from ..pipeline.batch import BatchRefineRequest, find_pairs_in

        spec = self.inputs.text().strip()
        if not spec:
            raise DDWError("no tomograms given: enter a glob of even halves (rec/*_even.mrc) or a "
                           "pair list (.txt)")
        model = self.model_path.text().strip()
        if not model or not Path(model).is_file():
            raise DDWError(f"model checkpoint '{model}' not found; pick the .pt file of a fit")
        if not self.out_dir.text().strip():
            raise DDWError("no output folder chosen; pick one (finished outputs there are kept)")
        pairs = find_pairs_in(spec)
        return BatchRefineRequest(model=model, pairs=pairs,
                                  out_dir=Path(self.out_dir.text().strip()),
                                  keep_halves=self.halves.isChecked(),
                                  overwrite=self.overwrite.isChecked())

    def start(self) -> bool:
        """Refine every pair not finished yet; False (and a notification) if refused."""
        return self.launch("batch refinement", self._prepare, on_done=self._on_done,
                           on_event=self._on_progress, on_end=self._on_end,
                           on_cancelled=self._on_stopped,
                           controls=(self.run_button,), cancel=self.stop_button,
                           busy="A batch is already running; wait for it or press Stop.",
                           start_text="Loading the model…")

    def _prepare(self):
        request = self._request()
        self.progress_info = {"total": len(request.pairs), "finished": 0}
        self.result = None
        return partial(_batch_job, request=request, status=self.progress_info)

    def _on_progress(self, message) -> None:
        info = self.progress_info
        status = None
        if "name" in info:
            status = (f"tomogram {info['index'] + 1}/{info['total']}: {info['name']} · "
                      f"{info.get('finished', 0)}/{info['total']} finished overall")
        self.show_progress(message, status=status)

    def _on_end(self) -> None:
        for warning in self.progress_info.get("warnings", []):
            notify_info(warning)

    def _on_stopped(self) -> None:
        total, finished = self.progress_info.get("total", 0), self.progress_info.get("finished", 0)
        self.set_status(f"Stopped: {finished} of {total} finished and kept; run again to continue")

    def _on_done(self, result) -> None:
        self.result = result
        total = self.progress_info.get("total", 0)
        if self.bar is not None:
            self.bar.setValue(self.bar.maximum())
        self.set_status(f"Done: {len(result.refined)} refined, {len(result.skipped)} kept from "
                        f"before, of {total}")
