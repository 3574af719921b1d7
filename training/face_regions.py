"""Face regions (mouth, eyes with brows, nose, skin, hair) from a face parser, with interchangeable backends.

- mediapipe: offline; the face mesh bundled in mediapipe 0.10.21 gives 478 landmarks whose contours outline mouth,
  eyes, brows, nose and the face oval. No bundled model has a hair class, so hair is the selfie segmenter's person
  mask outside the face oval, in a band around the head, plus forehead pixels that do not look like cheek skin.
- segformer: transformers' Segformer with a face-parsing checkpoint (19 CelebAMask-HQ classes), from a local folder
  or the HF cache (e.g. jonathandinu/face-parsing).
- none: one region covering the whole image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from engine.faces.align import FaceFrame, frame_from_box, frame_from_landmarks

REGIONS = ("mouth", "eyes", "hair", "nose", "skin")
SEGFORMER_DEFAULT = "jonathandinu/face-parsing"
# CelebAMask-HQ label order used by the public face-parsing Segformer checkpoints
CELEBAMASK_CLASSES = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
                      "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
CELEBAMASK_TO_REGION = {"skin": "skin", "l_ear": "skin", "r_ear": "skin", "nose": "nose", "l_eye": "eyes",
                        "r_eye": "eyes", "l_brow": "eyes", "r_brow": "eyes", "eye_g": "eyes", "mouth": "mouth",
                        "u_lip": "mouth", "l_lip": "mouth", "hair": "hair", "hat": "hair"}


class ParserUnavailable(RuntimeError):
    pass


@dataclass
class FaceRegions:
    """Boolean masks per region (disjoint), the face box (x, y, w, h) or None when no face was found."""
    masks: dict
    box: tuple | None
    parser: str
    extra: dict = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return self.box is not None


def whole_image(image: np.ndarray, parser: str = "none") -> FaceRegions:
    h, w = image.shape[:2]
    masks = {r: np.zeros((h, w), bool) for r in REGIONS}
    masks["skin"][:] = True
    return FaceRegions(masks, None, parser)


class NoneParser:
    name = "none"

    def __call__(self, image: np.ndarray) -> FaceRegions:
        regions = whole_image(image)
        regions.box = (0, 0, image.shape[1], image.shape[0])
        return regions


def _poly(shape, pts, hull=False) -> np.ndarray:
    m = np.zeros(shape[:2], np.uint8)
    pts = np.round(pts).astype(np.int32)
    cv2.fillPoly(m, [cv2.convexHull(pts) if hull else pts], 1)
    return m.astype(bool)


def _contour(edges) -> list[int]:
    """Order an undirected closed edge set (a mediapipe connection list) into one loop, the longest."""
    adj = {}
    for a, b in edges:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    best, seen = [], set()
    for start in adj:
        if start in seen:
            continue
        loop, prev, cur = [start], None, start
        seen.add(start)
        while True:
            nxt = [n for n in adj[cur] if n != prev and n not in seen]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
            loop.append(cur)
            seen.add(cur)
        best = max(best, loop, key=len)
    return best


class MediapipeParser:
    name = "mediapipe"

    def __init__(self):
        try:
            import mediapipe as mp
        except ImportError as e:
            raise ParserUnavailable(f"mediapipe is not installed ({e}); `python build.py setup` installs it") \
                from None
        conn = mp.solutions.face_mesh_connections
        self._loops = {k: _contour(getattr(conn, c)) for k, c in
                       [("oval", "FACEMESH_FACE_OVAL"), ("lips", "FACEMESH_LIPS"), ("leye", "FACEMESH_LEFT_EYE"),
                        ("reye", "FACEMESH_RIGHT_EYE")]}
        self._brows = [sorted({i for e in getattr(conn, c) for i in e})
                       for c in ("FACEMESH_LEFT_EYEBROW", "FACEMESH_RIGHT_EYEBROW")]
        self._nose = sorted({i for e in conn.FACEMESH_NOSE for i in e} | {48, 49, 278, 279})
        self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                                     refine_landmarks=True, min_detection_confidence=0.5)
        self._person = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def locate(self, image: np.ndarray) -> FaceFrame | None:
        """The face's crop square from the landmarks alone: cheaper than a full parse."""
        xy = self.landmarks(image)
        return None if xy is None else frame_from_landmarks(xy)

    def landmarks(self, image: np.ndarray) -> np.ndarray | None:
        result = self._mesh.process(image)
        if not result.multi_face_landmarks:
            return None
        h, w = image.shape[:2]
        return np.array([[p.x * w, p.y * h] for p in result.multi_face_landmarks[0].landmark], np.float32)

    def __call__(self, image: np.ndarray) -> FaceRegions:
        xy = self.landmarks(image)
        if xy is None:
            return whole_image(image, self.name)
        shape = image.shape
        oval = _poly(shape, xy[self._loops["oval"]])
        mouth = _poly(shape, xy[self._loops["lips"]])
        eyes = _poly(shape, xy[self._loops["leye"]]) | _poly(shape, xy[self._loops["reye"]])
        for brow in self._brows:
            eyes |= _poly(shape, xy[brow], hull=True)
        nose = _poly(shape, xy[self._nose], hull=True) & ~eyes & ~mouth
        ys, xs = np.nonzero(oval)
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        fw, fh = x1 - x0, y1 - y0
        band = np.zeros_like(oval)
        band[max(0, int(y0 - 0.8 * fh)):int(y0 + 0.75 * fh), max(0, int(x0 - 0.45 * fw)):int(x1 + 0.45 * fw)] = True
        grown = cv2.dilate(oval.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        person = self._person.process(image).segmentation_mask > 0.5
        hair = person & band & ~grown
        hair |= oval & self._forehead_not_skin(image, xy, oval) & ~eyes
        skin = oval & ~hair & ~eyes & ~mouth & ~nose
        masks = {"mouth": mouth, "eyes": eyes & ~mouth, "hair": hair & ~mouth, "nose": nose, "skin": skin}
        return FaceRegions(masks, (int(x0), int(y0), int(fw), int(fh)), self.name, {"landmarks": xy})

    @staticmethod
    def _forehead_not_skin(image, xy, oval) -> np.ndarray:
        """Bangs and hairline: pixels above the brows whose colour is far from the cheeks' (YCrCb z-score)."""
        ycc = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb).astype(np.float32)
        cheek = _poly(image.shape, xy[[50, 101, 118, 205]], hull=True) | \
            _poly(image.shape, xy[[280, 330, 347, 425]], hull=True)
        ref = ycc[cheek]
        z = np.abs((ycc - ref.mean(0)) / (ref.std(0) + 4.0))
        upper = np.zeros_like(oval)
        upper[:int(xy[[105, 334], 1].min())] = True
        far = ((z[..., 1:].max(-1) > 3.0) | (z[..., 0] > 3.5)).astype(np.uint8)
        return upper & cv2.morphologyEx(far, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)


class SegformerParser:
    name = "segformer"

    def __init__(self, weights: str | None = None, device: str = "cpu"):
        try:
            import torch
            from transformers import SegformerForSemanticSegmentation
        except ImportError as e:
            raise ParserUnavailable(f"transformers/torch missing: {e}") from None
        source = weights or SEGFORMER_DEFAULT
        try:
            self.model = SegformerForSemanticSegmentation.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ParserUnavailable(f"no face-parsing Segformer at {source!r} (local folder or HF cache): "
                                    f"{str(e).splitlines()[0]}. Download it while online with "
                                    f"`huggingface-cli download {SEGFORMER_DEFAULT}` or pass --segformer PATH") \
                from None
        labels = self.model.config.id2label
        if len(labels) != len(CELEBAMASK_CLASSES):
            raise ParserUnavailable(f"Segformer at {source!r} has {len(labels)} classes, not the 19 of "
                                    f"CelebAMask-HQ face parsing")
        self.torch, self.device = torch, device
        self.model.to(device).eval()

    def locate(self, image: np.ndarray) -> FaceFrame | None:
        box = self(image).box
        return None if box is None else frame_from_box(box)

    def __call__(self, image: np.ndarray) -> FaceRegions:
        torch = self.torch
        h, w = image.shape[:2]
        x = cv2.resize(image, (512, 512), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        with torch.no_grad():
            logits = self.model(pixel_values=torch.from_numpy(x).permute(2, 0, 1)[None].to(self.device)).logits
            logits = torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        labels = logits.argmax(1)[0].cpu().numpy()
        masks = {r: np.zeros((h, w), bool) for r in REGIONS}
        for index, cls in enumerate(CELEBAMASK_CLASSES):
            region = CELEBAMASK_TO_REGION.get(cls)
            if region:
                masks[region] |= labels == index
        face = masks["skin"] | masks["nose"] | masks["eyes"] | masks["mouth"]
        if face.sum() < 0.002 * h * w:
            return whole_image(image, self.name)
        ys, xs = np.nonzero(face)
        box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min()))
        return FaceRegions(masks, box, self.name)


def segformer_available(source: str | None) -> bool:
    """Whether face-parsing weights are on this machine, without importing torch or touching the network."""
    source = source or SEGFORMER_DEFAULT
    from pathlib import Path

    if Path(source).is_dir():
        return (Path(source) / "config.json").is_file()
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(source, "config.json"), str)
    except (ImportError, ValueError):  # not installed, or not a valid repo id (a path that does not exist)
        return False


def make_parser(name: str = "auto", segformer: str | None = None):
    """(parser, explanation). `auto` prefers segformer when its weights are here, then mediapipe, then none."""
    why = ""
    if name == "none":
        return NoneParser(), "none: one region for the whole image"
    if name == "auto" and not segformer_available(segformer):
        why = f"no face-parsing Segformer weights for {segformer or SEGFORMER_DEFAULT} on this machine"
    elif name in ("segformer", "auto"):
        try:
            return SegformerParser(segformer), f"segformer ({segformer or SEGFORMER_DEFAULT})"
        except ParserUnavailable as e:
            if name == "segformer":
                raise
            why = str(e)
    if name in ("mediapipe", "auto"):
        try:
            return MediapipeParser(), "mediapipe face mesh" + (f" ({why})" if why else "")
        except ParserUnavailable:
            if name == "mediapipe":
                raise
    if name == "auto":
        return NoneParser(), "none (neither segformer weights nor mediapipe available)"
    raise ValueError(f"unknown parser {name!r}; use auto, mediapipe, segformer or none")
