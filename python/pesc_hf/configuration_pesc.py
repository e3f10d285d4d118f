"""Configurations of PESC models (docs/format.md section 4.2): the dense base's configuration plus the PESC keys.

One class per base family, named as `config.json`'s `architectures` names the model. Keys absent from an
older `config.json` take the defaults below (`moe_scaling` reads as 1, as format.md says).
"""

from transformers import LlamaConfig, MistralConfig, Qwen2Config

# The PESC keys, with the values a reader assumes when a config lacks them.
PESC_DEFAULTS = {
    "num_experts": 8,
    "topk": 2,
    "adapter_dim": 64,
    "moe_scaling": 1.0,
    "moe_dtype": "float32",
    "output_router_logits": False,
    # The balancing loss coefficient and the adapter dropout of `pesc-convert train`.
    "router_aux_loss_coef": 0.01,
    "adapter_dropout": 0.1,
}


def pesc_setting(config, key):
    """`key` of `config`, or its default."""
    value = getattr(config, key, None)
    return PESC_DEFAULTS[key] if value is None else value


class PescLlamaConfig(LlamaConfig):
    """PESC over a Llama base (`model_type` `camelidae`, as the released Camelidae models)."""

    model_type = "camelidae"


class PescMistralConfig(MistralConfig):
    """PESC over a Mistral base."""

    model_type = "camelidae"


class PescQwen2Config(Qwen2Config):
    """PESC over a Qwen2 base (`model_type` `qwen2idae`, as the released Qwen2idae models)."""

    model_type = "qwen2idae"
