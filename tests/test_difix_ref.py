"""NVIDIA Difix-ref (`nvidia/difix_ref`) through our model: the frame restored beside a reference photo.

The yardstick is Difix3D's own forward with `mv_unet=True`, written out below from nv-tlabs/Difix3D (src/model.py
`Difix.forward`, src/mv_unet.py's BasicTransformerBlock forward), run on a separate copy of the tiny UNet.
"""
import json
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_difix import _fake_hub_cache, difix3d_scheduler, difix3d_vae, difix_reference_forward
from tiny_base import TINY_SIZE, make_tiny_difix, make_tiny_difix_ref


@pytest.fixture(scope="module")
def ref_folder(tmp_path_factory) -> Path:
    return make_tiny_difix_ref(tmp_path_factory.mktemp("difix_ref") / "difix_ref")


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory) -> Path:
    return make_tiny_difix(tmp_path_factory.mktemp("difix") / "difix")


@pytest.fixture(scope="module")
def ref_model(ref_folder):
    from engine.weights.loading import load_restorer

    return load_restorer(ref_folder, accept_license=True)


@pytest.fixture(autouse=True)
def no_env_acceptance(monkeypatch):
    monkeypatch.delenv("SPLAT_RESTORE_ACCEPT_LICENSE", raising=False)


def two_images(n: int = 2, seed: int = 0, size: int = TINY_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """A frame and a different reference: with the frame as its own reference, Difix-ref is no test of views."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1, torch.rand(n, 3, size, size, generator=g) * 2 - 1


def mv_block_forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                     encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None, class_labels=None,
                     added_cond_kwargs=None):
    """Difix3D src/mv_unet.py `new_forward`, the path SD-Turbo's blocks take (layer norm, no GLIGEN, no chunking),
    in today's diffusers names (norm_type; FeedForward takes no `scale`). einops' rearranges as reshapes."""
    if self.norm_type != "layer_norm" or self._chunk_size is not None:
        raise NotImplementedError("only the layer-norm path of Difix3D's block is written out")
    num_views = 2
    bv, n, d = hidden_states.shape
    hidden_states = hidden_states.reshape(bv // num_views, num_views * n, d)  # "(b v) n d -> b (v n) d"
    norm_hidden_states = self.norm1(hidden_states)
    if self.pos_embed is not None:
        norm_hidden_states = self.pos_embed(norm_hidden_states)
    cross_attention_kwargs = cross_attention_kwargs.copy() if cross_attention_kwargs is not None else {}
    attn_output = self.attn1(norm_hidden_states,
                             encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
                             attention_mask=attention_mask, **cross_attention_kwargs)
    hidden_states = attn_output + hidden_states
    hidden_states = hidden_states.reshape(bv, n, d)  # "b (v n) d -> (b v) n d"
    if self.attn2 is not None:
        norm_hidden_states = self.norm2(hidden_states)
        attn_output = self.attn2(norm_hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=encoder_attention_mask, **cross_attention_kwargs)
        hidden_states = attn_output + hidden_states
    norm_hidden_states = self.norm3(hidden_states)
    return self.ff(norm_hidden_states) + hidden_states


@contextmanager
def difix3d_mv_unet():
    """What `from mv_unet import UNet2DConditionModel` does in Difix3D: BasicTransformerBlock.forward replaced for
    every UNet in the process. Put back afterwards, so nothing else here runs with it."""
    from diffusers.models.attention import BasicTransformerBlock

    original = BasicTransformerBlock.forward
    BasicTransformerBlock.forward = mv_block_forward
    try:
        yield
    finally:
        BasicTransformerBlock.forward = original


def difix3d_forward(folder: Path, x: torch.Tensor, ref: torch.Tensor, mv_unet: bool = True) -> torch.Tensor:
    """Difix.forward (src/model.py) on x = [image, ref_image] per sample as Difix.sample stacks them, then [:, 0].
    Its VAE and scheduler as test_difix writes them; the posterior mean instead of a sample."""
    from diffusers import UNet2DConditionModel

    from engine.weights.base import encode_prompt

    vae, sched = difix3d_vae(folder), difix3d_scheduler(folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval().requires_grad_(False)  # its own copy
    caption_enc = encode_prompt(folder, "remove degradation").expand(len(x), -1, -1)
    timesteps = torch.tensor([199]).long()
    views = torch.stack([x, ref], dim=1)
    num_views = views.shape[1]
    with torch.no_grad(), (difix3d_mv_unet() if mv_unet else nullcontext()):
        z = vae.encode(views.flatten(0, 1)).latent_dist.mean * vae.config.scaling_factor  # 'b v c h w -> (b v) c h w'
        caption_enc = caption_enc.repeat_interleave(num_views, dim=0)  # repeat 'b n c -> (b v) n c'
        model_pred = unet(z, timesteps, encoder_hidden_states=caption_enc).sample
        z_denoised = sched.step(model_pred, timesteps, z, return_dict=True).prev_sample
        vae.decoder.incoming_skip_acts = vae.encoder.current_down_blocks
        output_image = vae.decode(z_denoised / vae.config.scaling_factor).sample.clamp(-1, 1)
    return output_image.unflatten(0, (-1, num_views))[:, 0]  # '(b v) c h w -> b v c h w', view 0


def test_variant_is_recognised_from_its_layout_and_its_hub_id(ref_folder, plain_folder, tmp_path, monkeypatch):
    from blender_addon.engine_link.licenses import NVIDIA_DIFIX
    from engine.weights.loading import read_recipe

    ref, plain = read_recipe(ref_folder), read_recipe(plain_folder)
    assert (ref.restorer.views, plain.restorer.views) == (2, 1)
    assert ref.license == plain.license == NVIDIA_DIFIX.id and ref.source.startswith("Difix-ref")
    assert (ref.restorer.timestep, ref.prompt, ref.restorer.input_range) == (199, "remove degradation", "-1,1")
    assert not any("not supported" in n for n in ref.notes + plain.notes)
    # the hub id alone says so too: a snapshot whose model_index.json is plain
    bare = tmp_path / "bare"
    shutil.copytree(ref_folder, bare)
    (bare / "model_index.json").write_text(json.dumps({"_class_name": "DifixPipeline"}))
    assert read_recipe(bare).restorer.views == 1
    _fake_hub_cache(tmp_path / "hub", "nvidia/difix_ref", bare)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert read_recipe("nvidia/difix_ref").restorer.views == 2


def test_unet_weights_are_a_plain_diffusers_unet_and_hub_code_never_runs(ref_folder, ref_model):
    """The hub-side unet_2d_condition.py changes only the forward: its weights are UNet2DConditionModel's, key for
    key. The stand-in file raises if imported, so loading at all shows the engine does not run it."""
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    from engine.model import CrossViewAttnProcessor

    config = json.loads((ref_folder / "unet" / "config.json").read_text())
    expected = UNet2DConditionModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    with safe_open(str(ref_folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(expected.state_dict())
    model, info = ref_model
    assert type(model.unet) is UNet2DConditionModel and info.restorer.views == 2
    processors = model.unet.attn_processors
    crossing = {k for k, p in processors.items() if isinstance(p, CrossViewAttnProcessor)}
    assert crossing and crossing == {k for k in processors if k.endswith("attn1.processor")}


def test_engine_matches_difix3d_mv_forward_in_fp32(ref_folder, ref_model):
    from diffusers.models.attention import BasicTransformerBlock

    from engine.weights.loading import load_restorer

    forward_before = BasicTransformerBlock.forward
    x, ref = two_images()
    reference = difix3d_forward(ref_folder, x, ref)
    assert BasicTransformerBlock.forward is forward_before  # their class patch was undone
    adapters, _ = load_restorer(ref_folder, merge=False, accept_license=True)
    merged, _ = ref_model
    with torch.no_grad():
        ours = adapters(x, reference=ref)
        fast = merged(x, reference=ref)
        precomputed = merged(x, reference_latent=merged.encode_reference(ref))
    error = (ours - reference).abs().max().item()
    print(f"max |engine - Difix3D mv forward| = {error:.2e} (LoRA as adapters), "
          f"{(fast - reference).abs().max().item():.2e} (merged)")
    assert error <= 1e-6
    assert (fast - reference).abs().max().item() <= 2e-5  # merging reorders fp32 sums (test_difix measures it)
    assert torch.equal(precomputed, fast)
    # the comparison has teeth: without the cross-view attention (Difix3D's plain UNet) the result is another
    single = difix3d_forward(ref_folder, x, ref, mv_unet=False)
    # each view on its own is Difix (to fp32 rounding: batching the views moves the kernels' sums)
    assert torch.allclose(single, difix_reference_forward(ref_folder, x), atol=1e-4)
    assert (single - reference).abs().max().item() > 1e-3


def test_the_reference_matters(ref_model):
    model, _ = ref_model
    x, ref = two_images()
    _, other = two_images(seed=1)
    with torch.no_grad():
        assert (model(x, reference=ref) - model(x, reference=other)).abs().max().item() > 1e-4
        # each frame with its own reference: the batch is (b v), not one reference for all
        second = model(x, reference=ref)[1:]
        assert (second - model(x[1:], reference=ref[1:])).abs().max() < 1e-4  # batch size moves fp32 sums only
        assert (second - model(x[1:], reference=ref[:1])).abs().max() > 1e-2


def test_only_the_frame_is_decoded(ref_model):
    model, _ = ref_model
    seen = []
    hook = model.vae.decoder.conv_in.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    try:
        with torch.no_grad():
            model(*two_images(n=3))
    finally:
        hook.remove()
    assert seen == [3]


def test_reference_is_required_by_views_2_and_refused_by_views_1(ref_model, plain_folder):
    from engine.weights.loading import load_restorer

    model, _ = ref_model
    plain, _ = load_restorer(plain_folder, accept_license=True)
    x, ref = two_images(n=1)
    with torch.no_grad():
        with pytest.raises(ValueError, match="needs a reference photo"):
            model(x)
        with pytest.raises(ValueError, match="takes no reference photo"):
            plain(x, reference=ref)
        with pytest.raises(ValueError, match="same size"):
            model(x, reference=ref[..., :32])


def test_gradients_reach_the_frame_through_the_reference_in_train_mode(ref_folder):
    from engine.weights.loading import load_restorer

    model, _ = load_restorer(ref_folder, merge=False, accept_license=True)
    model.train()
    model.set_trainable()
    x, ref = two_images(n=1)
    ref.requires_grad_(True)
    model(x, reference=ref).square().mean().backward()
    assert ref.grad is not None and ref.grad.abs().max() > 0
    assert model.unet.conv_in.weight.grad.abs().max() > 0


def test_a_plain_restorer_beside_it_is_untouched(plain_folder, ref_folder):
    """Difix3D's mv_unet.py changes every UNet in the process; ours changes the one that needs it."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.attention_processor import AttnProcessor2_0

    from engine.model import CrossViewAttnProcessor
    from engine.weights.loading import load_restorer

    forward, call = BasicTransformerBlock.forward, AttnProcessor2_0.__call__
    x, ref = two_images(n=1)
    before, _ = load_restorer(plain_folder, accept_license=True)
    with torch.no_grad():
        expected = before(x)
        ref_model, _ = load_restorer(ref_folder, accept_license=True)
        ref_model(x, reference=ref)
        after, _ = load_restorer(plain_folder, accept_license=True)
        assert torch.equal(before(x), expected) and torch.equal(after(x), expected)
    for plain in (before, after):
        assert not any(isinstance(p, CrossViewAttnProcessor) for p in plain.unet.attn_processors.values())
    assert BasicTransformerBlock.forward is forward and AttnProcessor2_0.__call__ is call


def _runner(model, info=None, **kw):
    from engine.runtime import ModelRunner

    return ModelRunner(model, info, device="cpu", compile="off", **kw)


def _count_encoded(model) -> list:
    """Images through the VAE encoder, per call (frames and references alike)."""
    seen = []
    model.vae.encoder.conv_in.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    return seen


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def test_runner_encodes_the_reference_once_per_shape(ref_folder):
    from engine.weights.loading import load_restorer

    model, info = load_restorer(ref_folder, accept_license=True)
    runner = _runner(model, info)
    seen = _count_encoded(runner.model)
    photo = _photo(90, 70, 1)
    runner.restore([_photo(64, 64, 2), _photo(64, 64, 3)], reference=photo)
    assert seen == [1, 1, 1]  # the photo once, then each frame
    runner.restore([_photo(64, 64, 4)], reference=photo)
    assert seen[3:] == [1]  # this shape's latent is kept
    runner.restore([_photo(56, 40, 5)], reference=photo)
    assert seen[4:] == [1, 1]  # another shape: the photo again, fitted to it
    runner.restore([_photo(64, 64, 6)], reference=photo.copy())  # another photo (a new array)
    assert seen[6:] == [1, 1]


def test_tiles_and_frames_of_other_sizes_get_the_fitted_reference(ref_folder):
    from engine.runtime import fit_reference
    from engine.tiling import blend_tiles, plan_tiles
    from engine.weights.loading import load_restorer

    model, info = load_restorer(ref_folder, accept_license=True)
    runner = _runner(model, info)
    photo = _photo(100, 50, 7)
    # centre-cropped to the job's aspect, then resized: nothing stretched
    assert np.array_equal(fit_reference(photo, 50, 50), photo[25:75])
    assert fit_reference(photo, 64, 96).shape == (64, 96, 3)

    def direct(img):
        h, w = img.shape[:2]
        t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None] * 2 - 1  # noqa: E731
        with torch.no_grad():
            y = runner.model(t(img), reference=t(fit_reference(photo, h, w)))
        return ((y[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()

    small = _photo(56, 40, 8)
    assert np.abs(runner.restore([small], reference=photo)[0] - direct(small)).max() <= 1e-5
    wide = _photo(64, 120, 9)  # larger than the 64-pixel tile: tiled
    tiles = plan_tiles(64, 120, runner.tile, runner.overlap)
    assert len(tiles) > 1
    expected = blend_tiles(tiles, [direct(wide[t.y:t.y + t.h, t.x:t.x + t.w]) for t in tiles], 64, 120,
                           runner.overlap)
    assert np.abs(runner.restore([wide], reference=photo)[0] - expected).max() <= 1e-5


def test_runner_refuses_a_reference_it_cannot_use_and_asks_for_a_missing_one(ref_folder, plain_folder):
    from engine.runtime import ReferenceError
    from engine.weights.loading import load_restorer

    ref_runner = _runner(*load_restorer(ref_folder, accept_license=True))
    plain_runner = _runner(*load_restorer(plain_folder, accept_license=True))
    assert ref_runner.takes_reference and not plain_runner.takes_reference
    assert ref_runner.describe()["takes_reference"] is True
    frame = _photo(64, 64, 1)
    with pytest.raises(ReferenceError, match="need a reference photo"):
        ref_runner.restore([frame])
    with pytest.raises(ReferenceError, match="cannot use one"):
        plain_runner.restore([frame], reference=frame)
    with pytest.raises(ReferenceError, match="float RGB"):
        ref_runner.restore([frame], reference=(frame * 255).astype(np.uint8))
    assert issubclass(ReferenceError, ValueError)


def test_runner_output_is_difix3ds_through_the_fast_path(ref_folder, ref_model):
    """The runner's fast path sets SDPA processors on the whole UNet: the cross-view ones must survive it."""
    model, info = ref_model
    x, ref = two_images(n=1)
    runner = _runner(model, info)
    to_np = lambda t: ((t[0] + 1) / 2).permute(1, 2, 0).numpy()  # noqa: E731
    out = runner.restore([to_np(x)], reference=to_np(ref))[0]
    expected = ((difix3d_forward(ref_folder, x, ref)[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
    assert np.abs(out - expected).max() <= 2e-5


def _cli(capsys, *args) -> tuple[int, str]:
    from engine.cli import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _png(path: Path, seed: int, size: int = TINY_SIZE) -> Path:
    Image.fromarray((_photo(size, size, seed) * 255).astype(np.uint8)).save(path)
    return path


def test_cli_reference_with_plain_weights_is_one_error_line(plain_folder, tmp_path, capsys):
    frame, photo = _png(tmp_path / "f.png", 1), _png(tmp_path / "me.png", 2)
    code, err = _cli(capsys, "restore", frame, "-o", tmp_path / "o", "--weights", plain_folder, "--reference",
                     photo, "--accept-license", "--device", "cpu")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "me.png" in err
    assert "cannot use one" in err and not (tmp_path / "o").exists()


def test_cli_reference_weights_without_a_reference_is_one_error_line(ref_folder, tmp_path, capsys):
    frame = _png(tmp_path / "f.png", 1)
    code, err = _cli(capsys, "restore", frame, "-o", tmp_path / "o", "--weights", ref_folder, "--accept-license",
                     "--device", "cpu")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "--reference" in err
    assert not (tmp_path / "o").exists()
    code, err = _cli(capsys, "restore", frame, "-o", tmp_path / "o", "--weights", ref_folder, "--accept-license",
                     "--reference", tmp_path / "missing.png")
    assert code == 2 and err.count("\n") == 1 and "missing.png" in err and "does not exist" in err


def test_cli_restores_with_the_reference(ref_folder, tmp_path, capsys):
    from engine.faces.restore import FramePipeline
    from engine.images import read_image
    from engine.runtime import ModelRunner

    frame, photo = _png(tmp_path / "f.png", 1), _png(tmp_path / "me.png", 2, size=96)
    code, err = _cli(capsys, "restore", frame, "-o", tmp_path / "o", "--weights", ref_folder, "--accept-license",
                     "--reference", photo, "--device", "cpu", "--compile", "off")
    assert code == 0, err
    written = read_image(tmp_path / "o" / "f.png").rgb
    runner = ModelRunner.from_pretrained(ref_folder, accept_license=True, device="cpu", compile="off")
    rgb, ref = read_image(frame).rgb, read_image(photo).rgb
    expected = runner.restore([rgb], reference=ref)[0]
    assert np.abs(written - expected).max() <= 1 / 255
    assert np.abs(written - runner.restore([rgb], reference=ref[::-1].copy())[0]).max() > 2 / 255
