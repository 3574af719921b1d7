"""Checkpoints: round trip, and every way a weights file can be wrong reported against its name."""
import shutil

import pytest
import torch

from engine.weights.checkpoint import CheckpointError, read_info
from engine.weights.loading import load_restorer


def test_round_trip_reproduces_the_model(tiny_base, tmp_path):
    from tiny_base import build_tiny_restorer, write_tiny_checkpoint

    weights = write_tiny_checkpoint(tiny_base, tmp_path / "w.safetensors", seed=7)
    original, _ = build_tiny_restorer(tiny_base, seed=7)
    loaded, info = load_restorer(weights, merge=False)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(original(x), loaded(x), atol=1e-6)
    assert info.prompt == "a clean render of a face"
    assert info.lora.rank_unet == 16 and info.lora.rank_vae == 8
    assert torch.equal(loaded.prompt_embeds, original.prompt_embeds)


def test_checkpoint_holds_only_what_training_changes(tiny_weights):
    from safetensors import safe_open

    with safe_open(str(tiny_weights), framework="pt") as f:
        keys = set(f.keys())
    assert "prompt_embeds" in keys
    assert "unet.conv_in.weight" in keys and "vae.decoder.skip_conv_1.weight" in keys
    assert all("lora_" in k or "conv_in" in k or "skip_conv" in k or k == "prompt_embeds" for k in keys)
    assert not any(".default." in k or ".vae_skip." in k or "base_layer" in k for k in keys)


def test_metadata_records_the_recipe(tiny_weights, tiny_base):
    info = read_info(tiny_weights)
    assert info.restorer.timestep == 999 and info.lora.alpha_unet == 8
    assert info.base == str(tiny_base) and len(info.base_fingerprint) == 16


def test_wrong_base_is_refused(tiny_weights, tmp_path):
    from tiny_base import make_tiny_base

    other = make_tiny_base(tmp_path / "other", seed=5)
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_restorer(tiny_weights, base=str(other))


def test_truncated_file_is_refused(tiny_weights, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tiny_weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_restorer(cut)


def test_foreign_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="not a Splat Restore checkpoint"):
        read_info(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x80\x04K\x01."])
def test_garbage_is_refused(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        read_info(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_info(tmp_path / "nope.safetensors")


def test_tensor_of_wrong_shape_is_refused(tiny_weights, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(tiny_weights), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(tiny_weights))
    tensors["unet.conv_in.weight"] = torch.zeros(1)
    bad = tmp_path / "shape.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="conv_in"):
        load_restorer(bad)


def test_missing_base_folder_is_explained(tiny_weights, tmp_path):
    from engine.weights.base import BaseModelError

    with pytest.raises(BaseModelError, match="does not exist"):
        load_restorer(tiny_weights, base=str(tmp_path / "gone"))


def test_uncached_hub_base_says_what_to_run(monkeypatch, tmp_path):
    from engine.weights.base import BaseModelError, resolve_base

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(BaseModelError, match="python -m engine fetch stabilityai/sd-turbo"):
        resolve_base("stabilityai/sd-turbo")


def test_incomplete_base_folder_is_named(tiny_base, tmp_path):
    from engine.weights.base import BaseModelError, resolve_base

    broken = tmp_path / "broken"
    shutil.copytree(tiny_base, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(BaseModelError, match="vae/config.json"):
        resolve_base(str(broken))


def test_plain_checkpoints_stay_format_1_and_files_from_before_lineage_load(tiny_weights, tmp_path):
    """Only a fine-tune of another restorer is written as format 2 (engines before it say "update"); a plain
    checkpoint stays readable by them, and their files (no `init` key) load here."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(tiny_weights), framework="pt") as f:
        meta = json.loads(f.metadata()["splat_restore"])
    assert meta["format_version"] == 1 and meta["init"] == {}
    del meta["init"]
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(tiny_weights)), str(old), metadata={"splat_restore": json.dumps(meta)})
    model, info = load_restorer(old)
    assert info.init == {} and not model.lora_only
    newer = tmp_path / "newer.safetensors"
    save_file(load_file(str(tiny_weights)), str(newer),
              metadata={"splat_restore": json.dumps(meta | {"format_version": 3})})
    with pytest.raises(CheckpointError, match="update Splat Restore"):
        read_info(newer)
