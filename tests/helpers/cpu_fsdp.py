"""Lightning's FSDPStrategy on CPU processes over gloo, for tests only.

Lightning refuses FSDP without CUDA (its check is for the exact FSDPStrategy class, so a subclass
passes) and hands FSDP `device_id=None` on CPU, which FSDP resolves to an accelerator: this
subclass wraps with `device_id=cpu`. Lightning's full state-dict context offloads to the CPU,
which for parameters already there hands back views of storage FSDP frees on resharding (the
process crashes saving a checkpoint): importing this module gives it the same context without
offloading. Everything else (checkpoints, collectives, the project's FSDP paths) is Lightning's
and the project's own.
"""

import lightning.fabric.strategies.fsdp as fabric_fsdp
import lightning.pytorch.strategies.fsdp as pytorch_fsdp
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP


def _full_state_dict_in_place(module, world_size: int, rank0_only: bool = True):
    return FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT,
                                FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
                                FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only))


fabric_fsdp._get_full_state_dict_context = pytorch_fsdp._get_full_state_dict_context = _full_state_dict_in_place


class CPUFSDPStrategy(FSDPStrategy):
    def _setup_model(self, model):
        return FSDP(module=model, sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                    **self.kwargs)
