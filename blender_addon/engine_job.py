"""One restore request run to its end for an operator: the engine started if needed, a crash survived once. No bpy:
the operators (Restore Render, Restore Folder) run it in a thread, or inline in background mode."""
import threading
from pathlib import Path

from .engine_link.client import EngineDied, EngineError
from .reference_photo import request_options
from .state import MANAGER


class EngineJob:
    """Start the engine if needed and run one restore of `items` (as client.restore takes them) with `options`, in
    a thread (interactive) or inline (background). A crashed engine is restarted once and sent only the frames it
    had not reported decided: a frame it wrote is not restored again (with Overwrite that is its whole restore time
    again; with Skip it would come back "skipped: already restored")."""

    def __init__(self, settings, items: list, options: dict, reference: str = ""):
        self.settings, self.items, self.options = settings, items, options
        self.reference = reference  # the scene's Reference Photo: sent when the engine's weights take one
        self.decided: list[dict] = []  # the outcomes an engine reported before it died
        self.request = None
        self.result = None
        self.error = None
        self.thread = None

    def run(self):
        for attempt in range(2):  # a crashed engine is restarted once
            request = None
            try:
                if self.decided and not self.undecided():  # it died after the last frame, before its answer
                    self.result, self.error = self.answer({}), None
                    return
                client = MANAGER.client_for(self.settings)
                request = self.request = self.send(client)
                self.result, self.error = self.answer(client.wait(request)), None
                return
            except EngineDied as e:
                self.error = e
                self.decided += request.decided if request is not None else []
            except (EngineError, OSError, ValueError) as e:
                self.error = e
                return

    def undecided(self) -> list:
        told = {str(Path(item["output"])) for item in self.decided if isinstance(item.get("output"), str)}
        return [i for i in self.items if str(Path(i["output"] if isinstance(i, dict) else i[1])) not in told]

    def send(self, client):
        return client.restore(self.undecided(), **self.options, **request_options(self.reference, client))

    def answer(self, result: dict) -> dict:
        """The engine's answer together with what an engine that died had reported: one run's answer."""
        if not self.decided:
            return result
        items = self.decided + result.get("items", [])
        merged = {**result, "items": items, **{s: sum(i.get("status") == s for i in items)
                                               for s in ("restored", "skipped", "failed")}}
        failed = [i for i in items if i.get("status") == "failed"]
        if failed:  # as the engine answers a request with failed frames
            reason = failed[0].get("reason", "failed")
            raise EngineError(reason if len(items) == 1 else
                              f"{len(failed)} of {len(items)} frames failed; first: {reason}",
                              failed[0].get("code", "engine_error"), merged)
        return merged

    @property
    def progress(self) -> tuple[int, int]:
        """Frames decided and frames in all, counting those a crashed engine reported."""
        request = self.request
        if request is None or not request.total:
            return 0, 0
        return len(self.decided) + request.done_count, len(self.decided) + request.total

    def start(self):
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @property
    def done(self):
        return self.thread is not None and not self.thread.is_alive()

    def cancel(self):
        if self.request is not None and MANAGER.client is not None:
            try:
                MANAGER.client.cancel(self.request)
            except EngineError:
                pass
