"""What the tests share: paths and tool runners (`paths`), gloo worlds and free ports
(`distributed`), the tiny models every model test uses (`tiny`), what torch.compile compiled
(`compilation`), data writers (`data`), the code run inside spawned gloo processes
(`bloom_workers`), and finetune runs as users launch them (`finetune_runs`, `killed_save`)."""
