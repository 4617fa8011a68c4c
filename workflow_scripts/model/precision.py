"""Mixed precision: which autocast dtype, and whether fp16 needs a gradient scaler."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass(frozen=True)
class Precision:
    device_type: str
    autocast_dtype: torch.dtype | None  # None: plain fp32

    @classmethod
    def resolve(cls, name: str, device_type: str) -> Precision:
        """'auto' = bf16 on CUDA, fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
        if name == "auto":
            name = "bf16" if device_type == "cuda" else "fp32"
        return cls(device_type, DTYPES[name])

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 gradients underflow without loss scaling; bf16 and fp32 do not need it."""
        if self.autocast_dtype == torch.float16:
            return torch.amp.GradScaler(self.device_type)
        return None
