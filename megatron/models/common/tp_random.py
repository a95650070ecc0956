"""The model's own randomness. Dropout on a tensor-parallel rank's own attention heads must differ
between ranks: a generator state seeded per rank and swapped in around those ops, device-agnostic
(CPU and CUDA), unlike megatron-core's CUDA RNG tracker. And the per-layer init seed that makes a
random model the same for any pipeline layout."""

from __future__ import annotations

import contextlib

import torch


def _get_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class TensorParallelRNG:
    """Holds one generator state per device for tensor-parallel regions."""

    OFFSET = 2718  # as Megatron: the tensor-parallel seed is seed + 2718 + tp_rank

    def __init__(self) -> None:
        self._states: dict[torch.device, torch.Tensor] = {}
        self._seed: int | None = None

    def seed(self, seed: int, tp_rank: int) -> None:
        self._seed = seed + self.OFFSET + tp_rank
        self._states.clear()

    def get_states(self) -> dict[str, torch.Tensor]:
        return {str(device): state.clone() for device, state in self._states.items()}

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._states = {torch.device(device): state.clone() for device, state in states.items()}

    @contextlib.contextmanager
    def fork(self, device: torch.device):
        if self._seed is None:
            raise RuntimeError("TensorParallelRNG.seed() was never called")
        saved = _get_state(device)
        if device not in self._states:
            torch.manual_seed(self._seed) if device.type != "cuda" else torch.cuda.manual_seed(self._seed)
            self._states[device] = _get_state(device)
        _set_state(device, self._states[device])
        try:
            yield
        finally:
            self._states[device] = _get_state(device)
            _set_state(device, saved)


tensor_parallel_rng = TensorParallelRNG()


def layer_seed(init_seed: int | None, layer: int) -> int | None:
    """The init seed of pipeline layer `layer`: the same for any pipeline layout."""
    return None if init_seed is None else init_seed + layer


@contextlib.contextmanager
def seeded(seed: int | None):
    """Run a block (building a layer) under `seed` on the CPU generator, restoring it after;
    `None` leaves the generator alone."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
