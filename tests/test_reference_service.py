"""Restore requests with a reference photo (issue 24): each photo read, its face found and encoded once for every
request that names it; a photo that cannot be used costs only its request; weights say whether they take one, and
the add-on sends the scene's photo only to those; temporal smoothing as without one."""
import io
import json

import cv2
import numpy as np
import pytest

from blender_addon.engine_link.client import EngineClient, EngineError, EngineSettings
from engine.images import read_image
from engine.runtime import ModelRunner
from test_service import _image, _serve_in_process, _settings


@pytest.fixture(scope="module")
def tiny_ref(tmp_path_factory):
    from tiny_base import make_tiny_difix_ref

    return make_tiny_difix_ref(tmp_path_factory.mktemp("difix_ref") / "ref")


def _ref_pipeline(weights, batch_size=1):
    from engine.faces.restore import FramePipeline

    return FramePipeline(ModelRunner.from_pretrained(weights, accept_license=True, device="cpu", compile="off",
                                                     batch_size=batch_size))


def _request(request_id, items, **options) -> bytes:
    return json.dumps({"id": request_id, "op": "restore", "overwrite": True,
                       "items": [{"input": str(i), "output": str(o)} for i, o in items], **options}).encode()


def test_a_reference_is_read_and_encoded_once_for_the_requests_that_name_it(tiny_ref, tmp_path):
    pipeline = _ref_pipeline(tiny_ref, batch_size=4)  # room for every frame in one batch: each must get its own
    encoded = []
    real_encode = pipeline.runner.model.encode_reference
    pipeline.runner.model.encode_reference = lambda x: encoded.append(x.shape) or real_encode(x)
    photo, other = _image(tmp_path / "photo.png", (80, 60), seed=7), _image(tmp_path / "other.png", seed=8)
    frames = [_image(tmp_path / f"f{k}.png", (64, 64), seed=k) for k in range(3)]
    answers = _serve_in_process([_request(1, [(frames[0], tmp_path / "a" / "0.png")], reference=str(photo)),
                                 _request(2, [(f, tmp_path / "b" / f.name) for f in frames[1:]],
                                          reference=str(photo)),
                                 _request(3, [(frames[0], tmp_path / "c" / "0.png")], reference=str(other))],
                                pipeline)
    assert all(answers[k]["ok"] for k in (1, 2, 3))
    assert len(encoded) == 2  # the photo once for both requests, the other photo once
    from engine.faces.reference import load_reference

    runner = _ref_pipeline(tiny_ref, batch_size=4).runner  # padded to the same batch: the same arithmetic
    for (out, src), ref in (((tmp_path / "a" / "0.png", frames[0]), photo), ((tmp_path / "b" / "f2.png", frames[2]),
                                                                           photo),
                            ((tmp_path / "c" / "0.png", frames[0]), other)):
        expected = runner.restore([read_image(src).rgb], reference=load_reference(ref).rgb)[0]
        assert np.abs(read_image(out).rgb - expected).max() <= 0.5 / 255 + 1e-5  # the PNG's rounding, float noise
    assert np.abs(read_image(tmp_path / "a" / "0.png").rgb - read_image(tmp_path / "c" / "0.png").rgb).max() > 1 / 255


def test_the_service_reads_a_reference_once_and_again_when_it_changes(tiny_ref, tmp_path):
    from engine.service import Service

    service = Service(_ref_pipeline(tiny_ref), io.BytesIO())
    photo, frame = _image(tmp_path / "photo.png", seed=7), _image(tmp_path / "f.png", (64, 64))
    for k in range(3):
        if k == 2:
            _image(photo, (50, 40), seed=9)  # the photo replaced on disk
        service.handle_line(_request(k, [(frame, tmp_path / f"o{k}.png")], reference=str(photo)))
        service.closing = True  # served to the end of the queue, one request at a time
        service.work_loop()
        service.closing = False
    assert service.references.loads == 2 and all((tmp_path / f"o{k}.png").is_file() for k in range(3))


def test_a_bad_reference_costs_only_its_request(tiny_ref, tmp_path):
    photo, frame = _image(tmp_path / "photo.png", seed=7), _image(tmp_path / "f.png", (64, 64))
    (tmp_path / "corrupt.png").write_bytes(photo.read_bytes()[:80])
    bad = {"missing": (str(tmp_path / "gone.png"), "gone.png: file does not exist"),
           "corrupt": (str(tmp_path / "corrupt.png"), "corrupt.png: PNG data is corrupt"),
           "nul": (str(tmp_path / "a\0b.png"), "NUL"),
           "folder": (str(tmp_path), "is a folder, not an image")}
    lines = [_request("good1", [(frame, tmp_path / "g1.png")], reference=str(photo))]
    lines += [_request(k, [(frame, tmp_path / "out" / f"{k}{n}.png") for n in range(3)], reference=ref)
              for k, (ref, _) in bad.items()]
    lines += [_request("good2", [(frame, tmp_path / "g2.png")], reference=str(photo))]
    answers = _serve_in_process(lines, _ref_pipeline(tiny_ref))
    assert answers["good1"]["ok"] and answers["good2"]["ok"]
    for k, (ref, problem) in bad.items():
        error = answers[k]["error"]
        assert error["code"] == "bad_input" and answers[k]["result"]["failed"] == 3, error
        assert error["message"].startswith("3 of 3 frames failed; first: reference photo ") and problem in \
            error["message"]
    assert not (tmp_path / "out").exists() and (tmp_path / "g2.png").is_file()


def test_a_reference_the_weights_cannot_use_or_need_is_that_requests_error(tiny_ref, tmp_path):
    photo, frame = _image(tmp_path / "photo.png", seed=7), _image(tmp_path / "f.png", (64, 64))
    plain = _serve_in_process([_request(1, [(frame, tmp_path / "1.png")], reference=str(photo)),
                               _request(2, [(frame, tmp_path / "2.png")])])
    assert plain[2]["ok"] and plain[1]["error"]["code"] == "bad_request"
    assert f"reference photo {photo} given, but these weights cannot use one" in plain[1]["error"]["message"]
    needing = _serve_in_process([_request(1, [(frame, tmp_path / "3.png")]),
                                 _request(2, [(frame, tmp_path / "4.png")], reference=str(photo))],
                                _ref_pipeline(tiny_ref))
    assert needing[2]["ok"] and needing[1]["error"]["code"] == "bad_request"
    assert "need a reference photo of the person and none was given" in needing[1]["error"]["message"]
    assert not (tmp_path / "1.png").exists() and not (tmp_path / "3.png").exists()


def test_a_reference_without_a_face_fails_only_the_frames_restored_face_by_face(tiny_ref, tmp_path):
    pytest.importorskip("mediapipe")
    wall = _image(tmp_path / "wall.png", seed=3)
    small, large = _image(tmp_path / "small.png", (64, 64)), _image(tmp_path / "large.png", (96, 128))
    items = [(small, tmp_path / "o" / "small.png"), (large, tmp_path / "o" / "large.png")]
    answers = _serve_in_process([_request(1, items, reference=str(wall), faces="auto"),
                                 _request(2, items[:1], reference=str(wall), faces="off", in_place=False)],
                                _ref_pipeline(tiny_ref))
    result = answers[1]["result"]
    assert result["restored"] == 1 and result["failed"] == 1 and answers[2]["ok"]
    failed = [i for i in result["items"] if i["status"] == "failed"][0]
    assert failed["input"] == str(large) and "wall.png: no face found" in failed["reason"]


def test_frames_of_a_sequence_with_a_reference_are_fused_as_without_one(tiny_ref, tmp_path):
    """Temporal smoothing is the same with a reference: the restored frames, fused along the motion."""
    from engine.faces.reference import load_reference
    from engine.jobs import Item
    from engine.pipeline.run import restore_items
    from engine.temporal.bench import moving_face
    from engine.temporal.sequences import Sequences

    photo = _image(tmp_path / "photo.png", seed=7)
    frames = []
    for k, f in enumerate(moving_face(frames=4, size=64)):
        frames.append(tmp_path / f"f{k}.png")
        cv2.imwrite(str(frames[-1]), cv2.cvtColor(np.rint(f * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    answers = _serve_in_process([_request(1, [(f, tmp_path / "got" / f.name) for f in frames], sequence="shot",
                                          index=0, reference=str(photo), faces="off")], _ref_pipeline(tiny_ref))
    assert answers[1]["ok"]
    pipeline = _ref_pipeline(tiny_ref)
    pipeline.set_reference(load_reference(photo))
    items = [Item(f, tmp_path / "want" / f.name, "off", False, "shot", k) for k, f in enumerate(frames)]
    restore_items(pipeline, items, temporal=Sequences())
    for f in frames[1:]:
        assert np.array_equal(read_image(tmp_path / "got" / f.name).rgb, read_image(tmp_path / "want" / f.name).rgb)


def test_the_engine_says_its_weights_take_a_reference_and_restores_with_one(tiny_ref, tmp_path):
    client = EngineClient(_settings(tiny_ref, accept_license=True))
    client.start(timeout=120)
    try:
        assert client.ready["takes_reference"] is True
        photo, frame = _image(tmp_path / "photo.png", seed=7), _image(tmp_path / "f.png", (64, 64))
        assert client.restore([(frame, tmp_path / "o.png")], reference=str(photo)).wait(60)["restored"] == 1
        with pytest.raises(EngineError, match="need a reference photo") as e:
            client.restore([(frame, tmp_path / "p.png")]).wait(60)
        assert e.value.code == "bad_request"
    finally:
        client.shutdown()
    from engine.faces.reference import load_reference

    expected = _ref_pipeline(tiny_ref).runner.restore([read_image(frame).rgb], reference=load_reference(photo).rgb)
    assert np.abs(read_image(tmp_path / "o.png").rgb - expected[0]).max() <= 0.5 / 255 + 1e-6


def test_the_add_on_tells_weights_that_take_a_reference_and_sends_it_only_to_them(tiny_ref, tiny_weights, tmp_path):
    from safetensors.numpy import save_file
    from tiny_base import make_tiny_difix

    from blender_addon.engine_link.weights import takes_reference
    from blender_addon.frame_queue import FrameQueue
    from blender_addon.reference_photo import panel_note, request_options, weights_take_reference

    trained = tmp_path / "trained.safetensors"  # a checkpoint's header as `training fit --reference` writes it
    save_file({"x": np.zeros(1, np.float32)}, str(trained),
              metadata={"splat_restore": json.dumps({"restorer": {"views": 2}})})
    assert takes_reference(str(tiny_ref)) and takes_reference("nvidia/difix_ref") and takes_reference(str(trained))
    assert not any(takes_reference(w) for w in (str(tiny_weights), str(make_tiny_difix(tmp_path / "difix")),
                                                "nvidia/difix", "", str(tmp_path / "gone.safetensors")))

    class Client:
        alive, settings = True, EngineSettings("py", str(tiny_weights))

        def __init__(self, takes):
            self.ready, self.sent = {"takes_reference": takes}, []

        def restore(self, items, **options):
            self.sent.append(options)

        def check_hung(self):
            pass

    assert weights_take_reference(str(tiny_weights), Client(True))  # the running engine's word goes first
    assert weights_take_reference(str(tiny_ref), None) and not weights_take_reference(str(tiny_weights), None)
    for takes in (True, False):
        client = Client(takes)
        manager = type("Manager", (), {"client": client, "starting": False, "client_for": lambda self, s: client})()
        FrameQueue(manager, client.settings, reference="/photos/me.jpg").submit(tmp_path / "f_0001.png")
        assert client.sent[0].get("reference") == ("/photos/me.jpg" if takes else None)
        assert request_options("", client) == {}
    assert panel_note("me.jpg", False)[1] == "INFO" and panel_note("", True)[1] == "ERROR"
    assert panel_note("", False) is None and panel_note("me.jpg", True)[1] == "CHECKMARK"
