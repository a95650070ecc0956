"""Reading back what an offline W&B run wrote (`WANDB_MODE=offline`: `wandb/offline-run-*/run-*.wandb`)
without a network: the file is LevelDB's log format (32 KiB blocks of records, each a checksum,
a length and a full/first/middle/last type, after W&B's 7-byte header) holding wandb's own
`wandb_internal_pb2.Record` protobufs; wandb 0.30 has no local reader of its own."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7  # ":W&B", magic, version
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    position, pieces = HEADER, b""
    while position + 7 <= len(data):
        if BLOCK - position % BLOCK < 7:  # a block's tail too short for a record header: padding
            position += BLOCK - position % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        payload = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (FULL, FIRST):
            pieces = payload
        elif kind in (MIDDLE, LAST):
            pieces += payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record


def offline_run(save_dir: Path) -> tuple[dict[int, dict[str, float]], dict]:
    """(step -> {scalar: value}, the run's config) of the one offline run under `save_dir`."""
    (path,) = save_dir.glob("wandb/offline-run-*/run-*.wandb")
    history: dict[int, dict[str, float]] = {}
    config: dict = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {(item.key or "/".join(item.nested_key)): item.value_json for item in record.history.item}
            values = {key: json.loads(value) for key, value in items.items() if not key.startswith("_")}
            history.setdefault(record.history.step.num, {}).update(values)
        elif kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in updates})
    return history, config
