"""Checkpoint manifests (`checkpoint/integrity.py`): sizes and xxh3 checksums of every file of a
tag folder; a flipped bit keeps the size, so only the checksum finds it, naming the file; a
manifest of sizes alone (saves before checksums) still reads as complete and passes; the
end-to-end refusal and fallback on a damaged save are in `tests/train/test_lora_finetune.py`."""

from __future__ import annotations

import json
import os

import xxhash

from megatron.checkpoint.integrity import (MANIFEST, checksum_problem, file_checksum, listed_files, problem,
                                           saved_files, write_manifest)


def tag_folder(tmp_path):
    tag = tmp_path / "global_step4"
    tag.mkdir()
    (tag / "layer_03-model_00-model_states.pt").write_bytes(os.urandom(3 * 2**20 + 5))  # several read chunks
    (tag / "progress.json").write_text("{}")
    return tag


def test_a_flipped_bit_keeps_the_size_and_the_checksum_names_the_file(tmp_path):
    tag = tag_folder(tmp_path)
    write_manifest(tag, {name: file_checksum(tag / name) for name in saved_files(tag)})
    entry = json.loads((tag / MANIFEST).read_text())["layer_03-model_00-model_states.pt"]
    data = (tag / "layer_03-model_00-model_states.pt").read_bytes()
    assert entry == {"size": len(data), "xxh3": xxhash.xxh3_64(data).hexdigest()}
    assert problem(tag) is None and checksum_problem(tag, listed_files(tag)) is None
    flipped = bytearray(data)
    flipped[2**20 + 7] ^= 0x10
    (tag / "layer_03-model_00-model_states.pt").write_bytes(bytes(flipped))
    assert problem(tag) is None  # the size is the same
    issue = checksum_problem(tag, listed_files(tag))
    assert issue.startswith(f"{tag / 'layer_03-model_00-model_states.pt'} is damaged: its xxh3 checksum is ")
    assert checksum_problem(tag, ["progress.json"]) is None  # a rank checks its share only


def test_a_manifest_of_sizes_alone_still_loads(tmp_path):
    tag = tag_folder(tmp_path)
    write_manifest(tag)  # no checksums: the format of older saves
    assert all(isinstance(size, int) for size in json.loads((tag / MANIFEST).read_text()).values())
    assert problem(tag) is None and checksum_problem(tag, listed_files(tag)) is None
    (tag / "progress.json").write_text("{ }")
    assert "truncated or damaged" in problem(tag)
