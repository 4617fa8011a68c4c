"""The safety margin every GPU memory estimate adds (cluster/train/memory.py for training,
evaluate/extraction_memory.py for feature extraction): what the counted tensors do not show.

A module of its own so that extraction's code dependencies (code_deps.py) do not include the
training planner: editing the planner reruns no feature extraction.
"""

GB = 1e9
# x (1 + MARGIN_FRACTION) on the counted bytes: allocator rounding and fragmentation
MARGIN_FRACTION = 0.10
# + FIXED_OVERHEAD_GB per GPU: CUDA context, NCCL buffers, kernels' workspaces
FIXED_OVERHEAD_GB = 1.5
