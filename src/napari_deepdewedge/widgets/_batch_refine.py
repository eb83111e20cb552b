"""Refine many tomograms with one model (pipeline.batch): half-tomogram files given by a glob
or a pair list, one ``<stem>_refined.mrc`` each in an output folder; progress per tomogram and
overall; Stop keeps every finished output (running it again skips them)."""
from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QCheckBox, QPushButton

from ._common import (
    DDWPanel,
    add_row,
    form_layout,
    hbox,
    notify_error,
    notify_info,
    path_field,
    tip,
)
from ._workers import Job, run_with_progress


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
        self._job = None
        self.status: dict = {}
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
        self.run_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        lay.addWidget(hbox(self.run_button, self.stop_button))
        self.bar, self.label = self.make_progress()
        lay.addWidget(self.bar)
        lay.addWidget(self.label)

    def _request(self):
        from ..pipeline.batch import BatchRefineRequest, find_pairs

        spec = self.inputs.text().strip()
        is_list = spec.lower().endswith((".txt", ".lst"))
        pairs = find_pairs(list_file=spec) if is_list else find_pairs([spec])
        if not self.out_dir.text().strip():
            raise ValueError("choose an output folder")
        return BatchRefineRequest(model=self.model_path.text().strip(), pairs=pairs,
                                  out_dir=Path(self.out_dir.text().strip()),
                                  keep_halves=self.halves.isChecked(),
                                  overwrite=self.overwrite.isChecked())

    def start(self) -> None:
        from ..core.errors import DDWError

        try:
            request = self._request()
        except (DDWError, ValueError) as exc:
            notify_error(str(exc))
            return
        self.status = {"total": len(request.pairs), "finished": 0}
        self.result = None
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self._job = self.start_job(Job("refine many", _batch_job, request, self.status),
                                   self._on_progress, self._on_done)

    def stop(self) -> None:
        if self._job is not None:
            self._job.stop.set()

    def _on_progress(self, message) -> None:
        if message.total > 0:
            self.bar.setRange(0, message.total)
            self.bar.setValue(message.done)
        s = self.status
        if "name" in s:
            self.label.setText(f"tomogram {s['index'] + 1}/{s['total']}: {s['name']} · "
                               f"{s.get('finished', 0)}/{s['total']} finished overall")

    def _on_done(self, outcome) -> None:
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        for warning in self.status.get("warnings", []):
            notify_info(warning)
        total, finished = self.status.get("total", 0), self.status.get("finished", 0)
        if outcome.cancelled:
            self.label.setText(f"Stopped: {finished} of {total} finished and kept; run again to "
                               "continue")
        elif outcome.error:
            self.label.setText("Failed")
            notify_error(outcome.error)
        else:
            self.result = outcome.value
            self.label.setText(f"Done: {len(self.result.refined)} refined, "
                               f"{len(self.result.skipped)} kept from before, of {total}")
