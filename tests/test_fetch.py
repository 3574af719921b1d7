"""`python -m engine fetch ID --json` against a stand-in hub (tests/stand_in_hub.py) serving a tiny model in NVIDIA
Difix's published layout: progress lines, the disk-space check, a fetch killed halfway (refused by the engine, then
continued by the next fetch), and the access token (sent to the hub, never printed)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from stand_in_hub import StandInHub
from tiny_base import make_tiny_difix

from blender_addon.engine_link import hub_cache

ROOT = Path(__file__).resolve().parents[1]
DIFIX = "nvidia/difix"
UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def difix_folder(tmp_path_factory):
    return make_tiny_difix(tmp_path_factory.mktemp("published") / "difix")


@pytest.fixture
def hub(difix_folder):
    with StandInHub() as hub:
        hub.add(DIFIX, difix_folder)
        yield hub


def engine_env(hub, hf_home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN",
                                                             "HF_HUB_OFFLINE")}
    return {**env, "HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home), "PYTHONUNBUFFERED": "1", **extra}


def run(env, *args, code: str | None = None):
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "engine", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]  # every line is JSON: fails otherwise


def tree_sha(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fetch_json_prints_progress_lines_and_completes_a_model_the_engine_takes(hub, tmp_path, difix_folder):
    r = run(engine_env(hub, tmp_path / "hf"), "fetch", DIFIX, "--json")
    assert r.returncode == 0, r.stderr
    out = events(r.stdout)
    plan, progress = out[0], [e for e in out if e["event"] == "progress"]
    total = sum(p.stat().st_size for p in difix_folder.rglob("*") if p.is_file())
    assert plan["event"] == "plan" and plan["total"] == total and plan["needed"] == total and plan["done"] == 0
    assert plan["free"] > 0 and plan["cache"] == str(tmp_path / "hf" / "hub")
    assert len(progress) >= 5 and all(e["total"] == total and e["rate"] >= 0 for e in progress)
    dones = [e["done"] for e in progress]
    assert dones == sorted(dones) and dones[-1] == total
    assert UNET in {e["file"] for e in progress}
    done = next(e for e in out if e["event"] == "done")
    assert done["total"] == total and tree_sha(Path(done["folder"])) == tree_sha(difix_folder)
    assert "NVIDIA License" in out[-1]["license"]
    assert hub.sent_for(DIFIX) == total  # every byte once
    state = hub_cache.model_state(tmp_path / "hf" / "hub", DIFIX)
    assert state.present and not state.interrupted and state.bytes_on_disk >= total
    info = run(engine_env(hub, tmp_path / "hf", HF_HUB_OFFLINE="1"), "info", "--weights", DIFIX, "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["source"] == f"Difix published layout ({DIFIX})"


def test_fetch_again_downloads_nothing(hub, tmp_path):
    env = engine_env(hub, tmp_path / "hf")
    assert run(env, "fetch", DIFIX, "--json").returncode == 0
    sent = hub.sent_for(DIFIX)
    r = run(env, "fetch", DIFIX, "--json")
    assert r.returncode == 0, r.stderr
    assert events(r.stdout)[0]["needed"] == 0 and hub.sent_for(DIFIX) == sent


NO_SPACE = """
import shutil, sys
from collections import namedtuple
Usage = namedtuple("usage", "total used free")
shutil.disk_usage = lambda path: Usage(10**9, 10**9 - 123456, 123456)
from engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_fetch_without_the_disk_space_is_refused_naming_needed_and_free(hub, tmp_path, difix_folder):
    r = run(engine_env(hub, tmp_path / "hf"), "fetch", DIFIX, "--json", code=NO_SPACE)
    total = sum(p.stat().st_size for p in difix_folder.rglob("*") if p.is_file())
    assert r.returncode == 1
    assert f"needs 4.5 MB more ({total} bytes), and 123.5 KB (123456 bytes) are free" in r.stderr
    assert str(tmp_path / "hf" / "hub") in r.stderr
    assert events(r.stdout)[-1]["event"] == "error"
    assert hub.sent_for(DIFIX) == 0  # refused before the first byte
    assert hub_cache.model_state(tmp_path / "hf" / "hub", DIFIX).bytes_on_disk == 0


def test_a_fetch_killed_halfway_is_refused_by_the_engine_and_the_next_fetch_continues_it(hub, tmp_path,
                                                                                        difix_folder):
    env = engine_env(hub, tmp_path / "hf")
    cache = tmp_path / "hf" / "hub"
    hub.rate = 400_000  # bytes per second: about 11 s for the whole model
    process = subprocess.Popen([sys.executable, "-m", "engine", "fetch", DIFIX, "--json"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen = 0
    for line in process.stdout:  # until the UNet, the largest file, is well under way
        event = json.loads(line)
        seen = event.get("done", 0)
        if event["event"] == "progress" and event["file"] == UNET and seen > 1_500_000:
            break
    process.kill()  # what Cancel in Blender does
    process.wait()
    process.stdout.close()
    assert 1_500_000 < seen < 3_000_000
    state = hub_cache.model_state(cache, DIFIX)
    assert not state.present and state.interrupted and state.partial_bytes > 1_000_000
    refused = run({**env, "HF_HUB_OFFLINE": "1"}, "info", "--weights", DIFIX)
    assert refused.returncode == 1
    assert f"is not completely fetched" in refused.stderr and f"python -m engine fetch {DIFIX}" in refused.stderr

    hub.rate, hub.requests[:] = 0, []
    unet_sent = hub.sent[f"{DIFIX}/{UNET}"]
    r = run(env, "fetch", DIFIX, "--json")
    assert r.returncode == 0, r.stderr
    plan = events(r.stdout)[0]
    assert plan["done"] > 1_000_000 and plan["needed"] < plan["total"] - 1_000_000
    ranges = [h.get("range") for method, path, h in hub.requests if method == "GET" and path.endswith(UNET)]
    assert len(ranges) == 1 and ranges[0].startswith("bytes=") and int(ranges[0][6:-1]) > 1_000_000
    unet_size = (difix_folder / UNET).stat().st_size
    assert hub.sent[f"{DIFIX}/{UNET}"] - unet_sent == unet_size - int(ranges[0][6:-1])  # only the rest came
    done = next(e for e in events(r.stdout) if e["event"] == "done")
    assert tree_sha(Path(done["folder"])) == tree_sha(difix_folder)
    state = hub_cache.model_state(cache, DIFIX)
    assert state.present and not state.interrupted and state.partial_bytes == 0
    assert run({**env, "HF_HUB_OFFLINE": "1"}, "info", "--weights", DIFIX).returncode == 0


TOKEN = "hf_StandInSecretToken0123456789"


def test_the_token_reaches_the_hub_and_is_never_printed(difix_folder, tmp_path):
    with StandInHub(token=TOKEN) as hub:
        hub.add(DIFIX, difix_folder)
        refused = run(engine_env(hub, tmp_path / "a"), "fetch", DIFIX, "--json")
        assert refused.returncode == 1 and "HF_TOKEN" in refused.stderr and "401" in refused.stderr
        wrong = run(engine_env(hub, tmp_path / "b", HF_TOKEN=TOKEN[:-1] + "X"), "fetch", DIFIX, "--json")
        assert wrong.returncode == 1 and TOKEN[:-1] not in wrong.stdout + wrong.stderr
        r = run(engine_env(hub, tmp_path / "c", HF_TOKEN=TOKEN), "fetch", DIFIX, "--json")
        assert r.returncode == 0, r.stderr
        assert TOKEN not in r.stdout + r.stderr
        assert hub.sent_for(DIFIX) > 0
        assert all(h.get("authorization") == f"Bearer {TOKEN}" for _m, _p, h in hub.requests[-5:])


def test_fetch_of_a_path_is_a_usage_error(tmp_path, hub):
    r = run(engine_env(hub, tmp_path / "hf"), "fetch", str(tmp_path / "weights"))
    assert r.returncode == 2 and "not a hub id" in r.stderr


def test_a_file_that_arrives_damaged_is_deleted_and_named(hub, tmp_path, difix_folder):
    repo = hub.repos[DIFIX]
    repo.files[UNET] = repo.files[UNET][:-4] + b"\0\0\0\0"  # the bytes change, the listed sha256 stays
    tree = repo.tree
    repo.tree = lambda: [{**e, "lfs": {**e["lfs"], "oid": hashlib.sha256((difix_folder / UNET).read_bytes())
                                       .hexdigest()}} if e["path"] == UNET else e for e in tree()]
    r = run(engine_env(hub, tmp_path / "hf"), "fetch", DIFIX, "--json")
    assert r.returncode == 1 and f"{UNET} of '{DIFIX}' arrived damaged" in r.stderr
    state = hub_cache.model_state(tmp_path / "hf" / "hub", DIFIX)
    assert not state.present and state.interrupted and state.partial_bytes == 0


def test_where_symlinks_cannot_be_made_the_model_takes_its_size_once(hub, tmp_path, difix_folder):
    """As on Windows without Developer Mode: the hub copies into the snapshot what it did not download itself."""
    r = run(engine_env(hub, tmp_path / "hf", HF_HUB_DISABLE_SYMLINKS="1"), "fetch", DIFIX, "--json")
    assert r.returncode == 0, r.stderr
    total = sum(p.stat().st_size for p in difix_folder.rglob("*") if p.is_file())
    state = hub_cache.model_state(tmp_path / "hf" / "hub", DIFIX)
    assert state.present and total <= state.bytes_on_disk < total + 50_000  # the tree listing, the record
    snapshot = Path(events(r.stdout)[-2]["folder"])
    assert not any(p.is_symlink() for p in snapshot.rglob("*")) and tree_sha(snapshot) == tree_sha(difix_folder)
    again = run(engine_env(hub, tmp_path / "hf", HF_HUB_DISABLE_SYMLINKS="1"), "fetch", DIFIX, "--json")
    assert again.returncode == 0 and events(again.stdout)[0]["needed"] == 0
