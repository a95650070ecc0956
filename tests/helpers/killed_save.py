"""`finetune_xp3.py` whose process is SIGKILLed in the middle of saving `global_step$KILL_AT_SAVE`:
after DeepSpeed's files and progress.json are written, before the manifest and `latest` pointer.
A real kill at the worst moment of a save, for tests/test_faults.py; the flags are finetune_xp3's."""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import finetune_xp3  # noqa: E402
import megatron.train.checkpointing as checkpointing  # noqa: E402

write_manifest = checkpointing.write_manifest


def killed_before_the_manifest(tag_dir: Path, checksums: dict[str, str] | None = None) -> None:
    if tag_dir.name == f"global_step{os.environ['KILL_AT_SAVE']}":
        os.kill(os.getpid(), signal.SIGKILL)
    write_manifest(tag_dir, checksums)


checkpointing.write_manifest = killed_before_the_manifest
sys.exit(finetune_xp3.main())
