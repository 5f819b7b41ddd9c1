"""Log lines that read as failures and are none: filtered where they are logged, by logger and text, so any other
record of the same loggers still shows.

bitsandbytes, imported by PEFT and transformers, looks for an optional CPU kernel on the Hugging Face Hub when the
CPU has AVX512-BF16. Offline (HF_HUB_OFFLINE=1, how lorasweep runs), it logs "Failed to load CPU gemm_4bit_forward
from kernels-community: ... not available in the local cache and Hugging Face Hub is in offline mode" and the
kernels package logs "Skipping publisher trust check ... offline mode": bitsandbytes then uses its own CPU code,
as it does on any CPU without the kernel. A failure for another reason (a broken download, a bad version) is still
logged.
"""

import logging

OFFLINE_ONLY = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "kernels._internals.hf_hub": "Skipping publisher trust check",
}


def _offline_noise(record: logging.LogRecord) -> bool:
    text = record.getMessage()
    return not (text.startswith(OFFLINE_ONLY[record.name]) and "Hugging Face Hub is in offline mode" in text)


def install() -> None:
    """Before bitsandbytes is imported: a logger's filters apply to the logger its module gets later by name."""
    for name in OFFLINE_ONLY:
        logger = logging.getLogger(name)
        if _offline_noise not in logger.filters:
            logger.addFilter(_offline_noise)
