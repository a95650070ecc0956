"""`--save-retain N` (`checkpoint/retention.py`) on checkpoint folders laid out as saves leave
them (tag folders with their files and manifest, the `latest` and `latest_universal` pointers):
the N newest complete checkpoints stay, and so do the ones a pointer names, universal folders,
and incomplete or damaged tags; the end-to-end relaunch is in `tests/train/test_lora_finetune.py`."""

from __future__ import annotations

from pathlib import Path

from megatron.checkpoint.integrity import PROGRESS_FILE, write_manifest
from megatron.checkpoint.layout import LATEST_UNIVERSAL, write_latest
from megatron.checkpoint.retention import prune


def save(folder: Path, step: int, complete: bool = True) -> Path:
    tag = folder / f"global_step{step}"
    tag.mkdir(parents=True)
    (tag / "layer_01-model_00-model_states.pt").write_bytes(b"x" * step)
    (tag / PROGRESS_FILE).write_text("{}")
    if complete:
        write_manifest(tag)
    return tag


def tags(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def test_keeps_the_newest_complete_and_what_is_named(tmp_path):
    for step in (10, 20, 30, 40):
        save(tmp_path, step)
    save(tmp_path, 35, complete=False)  # a save cut off mid-way (no manifest)
    damaged = save(tmp_path, 25)
    (damaged / "layer_01-model_00-model_states.pt").write_bytes(b"")  # truncated: not complete
    (tmp_path / "global_step20_universal").mkdir()  # a universal checkpoint made from step 20
    (tmp_path / LATEST_UNIVERSAL).write_text("global_step20_universal")
    write_latest(tmp_path, "global_step40", 40)
    assert prune(tmp_path, 2) == ["global_step10"]  # 20: the universal pointer's source; 25, 35: incomplete
    assert tags(tmp_path) == ["global_step20", "global_step20_universal", "global_step25", "global_step30",
                              "global_step35", "global_step40"]
    (tmp_path / LATEST_UNIVERSAL).unlink()
    assert prune(tmp_path, 1) == ["global_step20", "global_step30"]
    assert prune(tmp_path, 1) == []


def test_never_the_checkpoint_latest_names(tmp_path):
    """A relaunch that went back to an older checkpoint (`--checkpoint-fallback`): `latest` names
    step 10 while newer complete ones exist; it stays, whatever N."""
    for step in (10, 20, 30):
        save(tmp_path, step)
    write_latest(tmp_path, "global_step10", 10)
    assert prune(tmp_path, 1) == ["global_step20"]
    assert tags(tmp_path) == ["global_step10", "global_step30"]
