"""A ``cpu`` platform for veRL, so its trainer runs without an accelerator (tests, laptops).

veRL picks its device through ``verl.plugin.platform`` (``VERL_PLATFORM`` names one) and its
training engine through ``EngineRegistry`` keyed by that device. This module registers, through
those two registries (no veRL code is patched):

* :class:`CPUPlatform` as ``cpu``: ``torch.cpu`` as the device module (with no-op memory
  calls, which ``torch.cpu`` lacks), ``gloo`` as the collective backend, and Ray's ``GPU``
  resource as the per-worker slot, so veRL's placement groups are unchanged: start Ray with
  logical GPUs (``ray_kwargs.ray_init.num_gpus``), one per trainer worker;
* veRL's own FSDP engine (``FSDPEngineWithLMHead``) for the device ``cpu``.

One patch is unavoidable, and only made on this platform: veRL 0.9.1's trainer workers
(``verl.workers.engine_workers.TrainingWorker.__init__``) start torch.distributed with the
backend string ``f"cpu:gloo,{device}:{backend}"``, which torch rejects for the device ``cpu``
("Duplicate device type cpu"); :func:`use_gloo_process_group` rebinds that module's
``initialize_global_process_group_ray`` to the same veRL function with ``backend="gloo"``.

Loaded by :mod:`.cpu` (``VERL_USE_EXTERNAL_MODULES=mmsearch_gym.integrations.verl.cpu``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

__all__ = ["CPUPlatform", "register_cpu_engine", "use_gloo_process_group"]


class _CPUDevice(ModuleType):
    """``torch.cpu`` plus the memory and seeding calls veRL makes on its device module."""

    def __init__(self) -> None:
        super().__init__("mmsearch_cpu_device")

    def __getattr__(self, name: str) -> Any:
        if name in ("empty_cache", "reset_peak_memory_stats", "reset_max_memory_allocated", "ipc_collect",
                    "set_per_process_memory_fraction"):
            return lambda *args, **kwargs: None
        if name in ("memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved"):
            return lambda *args, **kwargs: 0
        if name == "mem_get_info":
            return lambda *args, **kwargs: (0, 0)
        if name in ("manual_seed", "manual_seed_all"):
            return torch.manual_seed
        if name == "get_device_name":
            return lambda *args, **kwargs: "cpu"
        if name == "get_rng_state":
            return lambda *args, **kwargs: torch.get_rng_state()
        if name == "set_rng_state":
            return lambda state, *args, **kwargs: torch.set_rng_state(state)
        return getattr(torch.cpu, name)


_DEVICE = _CPUDevice()


@PlatformRegistry.register(platform="cpu")
class CPUPlatform(PlatformBase):
    """veRL on CPU: torch.cpu, gloo, and Ray's (logical) GPU slots for placement."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return _DEVICE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return False  # never auto-detected: chosen with VERL_PLATFORM=cpu

    def current_device(self) -> Any:
        return "cpu"  # veRL passes it to .to() / torch.device(); an int would mean an accelerator

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

    def is_ipc_supported(self) -> bool:
        return False

    @contextmanager
    def nvtx_range(self, msg: str) -> Any:
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def cudart(self) -> Any:
        return None


def register_cpu_engine() -> None:
    """veRL's FSDP engines (language and value model) for the device ``cpu``."""
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, engine in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        if "cpu" not in EngineRegistry._engines.get(model_type, {}).get("fsdp2", {}):
            EngineRegistry.register(model_type=model_type, backend=["fsdp", "fsdp2"], device="cpu")(engine)


def use_gloo_process_group() -> None:
    """Make veRL's trainer workers start torch.distributed with ``gloo`` (see the module doc)."""
    import verl.workers.engine_workers as engine_workers
    from verl.utils.distributed import initialize_global_process_group_ray

    def init_gloo(timeout_second: int | None = None, backend: str | None = None) -> None:
        initialize_global_process_group_ray(timeout_second=timeout_second, backend=backend or "gloo")

    engine_workers.initialize_global_process_group_ray = init_gloo  # type: ignore[assignment]


register_cpu_engine()
if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
    use_gloo_process_group()
