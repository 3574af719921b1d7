"""While the face detector builds its graphs, mediapipe's C++ log lines are kept off stderr, and nothing else is:
the process's other threads (the background compile) keep writing to it."""
import os
import re
import threading

import pytest

from engine.faces import detect

# as mediapipe 0.10.21 writes them to fd 2 while its graphs build and first run
MEDIAPIPE_LINES = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
                   b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                   b"W0000 00:00:1795967063.047215    6896 inference_feedback_manager.cc:114] Feedback manager "
                   b"requires a model with a single signature inference. Disabling support for feedback tensors.\n")
ABSL_LINE = re.compile(r"^[IWE]\d{4} \d+:\d+:\d+\.\d+ +\d+ \S+:\d+\] ", re.MULTILINE)


def _from_another_thread(data: bytes) -> None:
    writer = threading.Thread(target=os.write, args=(2, data))
    writer.start()
    writer.join()


def test_only_mediapipe_lines_are_kept_off_stderr_while_its_graphs_build(capfd):
    with detect._without_mediapipe_chatter():
        os.write(2, MEDIAPIPE_LINES)
        _from_another_thread(b"compile: kernel 3 of 8 built\n")
        os.write(2, b"a line without its end")
    assert capfd.readouterr().err == "compile: kernel 3 of 8 built\na line without its end"


def test_another_threads_message_reaches_stderr_while_the_detector_builds(capfd, monkeypatch):
    pytest.importorskip("mediapipe")
    real_warm_up = detect._warm_up_image

    def warm_up_while_the_compile_thread_writes():  # the detector calls it between building and running its graphs
        _from_another_thread(b"compile: kernel 3 of 8 built\n")
        return real_warm_up()

    monkeypatch.setattr(detect, "_warm_up_image", warm_up_while_the_compile_thread_writes)
    detect.FaceDetector().close()
    err = capfd.readouterr().err
    assert "compile: kernel 3 of 8 built\n" in err
    assert not ABSL_LINE.search(err) and "XNNPACK" not in err
