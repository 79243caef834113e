"""`python tests/fsdp_on_cpu.py ARGS...` = `realdpo ARGS...`, with accelerate's FSDP branch taken on CPU processes.

accelerate honours `distributed_type: FSDP` only on GPUs (on CPU processes it silently runs plain multi-process);
torch's FSDP2 itself runs over gloo. This launcher sets the accelerator state accelerate would set on GPUs, so the
trainer's FSDP path (sharded transformer and reference copy, accelerate's FSDP checkpoints) runs on this machine.
"""

import os
import sys

sys.path.insert(0, os.getcwd())

from accelerate.state import AcceleratorState  # noqa: E402
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin  # noqa: E402

_init = AcceleratorState.__init__


def _init_fsdp_on_cpu(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if os.environ.get("ACCELERATE_USE_FSDP", "false") == "true" and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()


AcceleratorState.__init__ = _init_fsdp_on_cpu

if __name__ == "__main__":
    from cli.main import run

    sys.exit(run(sys.argv[1:]))
