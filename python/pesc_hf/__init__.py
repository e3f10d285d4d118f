"""pesc-convert's Hugging Face side: transformers modeling code for PESC models (`modeling_pesc`,
`configuration_pesc`; the same files every PESC folder carries as remote code)."""

from .configuration_pesc import PescLlamaConfig, PescMistralConfig, PescQwen2Config
from .modeling_pesc import PescLlamaForCausalLM, PescMistralForCausalLM, PescQwen2ForCausalLM

__all__ = [
    "PescLlamaConfig",
    "PescMistralConfig",
    "PescQwen2Config",
    "PescLlamaForCausalLM",
    "PescMistralForCausalLM",
    "PescQwen2ForCausalLM",
]
