"""The BLOOM architecture, tensor-parallel through megatron-core's layers, as a plain module
(pipeline size 1) or as layer specs for DeepSpeed's PipelineModule."""
