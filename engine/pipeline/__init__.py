"""The frame path: files read, restored and written, serially or pipelined over worker threads (run.py), one frame's
steps (steps.py) the same either way, so the two write the same bytes."""
