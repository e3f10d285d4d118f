"""PESC models for transformers (docs/format.md section 4): a dense Llama, Mistral or Qwen2 model whose every
FFN is shared by N experts that differ by small adapters, chosen per token by a top-k router.

For a layer's FFN input `h` and the dense FFN output `f = down(silu(gate(h)) * up(h))`:

    r = W_r h;  (v, idx) = topk(r, k);  w = softmax(v)     softmax over the k selected logits only
    A_j(f) = up_j(gelu_erf(down_j(f)))                      exact erf GELU
    y = f + s * sum_t w_t * A_{idx_t}(f)                    residual form: zero adapters give f exactly

With `output_router_logits` (argument or config) the output carries each layer's router logits and the
balancing loss of `pesc-convert train`: per layer `N * sum_i f_i p_i` over the non-padding tokens, `f_i` the
share of the top-k assignments that went to expert i (no gradient), `p_i` the mean router probability
(with gradient); summed over layers, times `router_aux_loss_coef`, and added to the loss when `labels` are
given. The loss reads the router logits from inside the layers, so activation checkpointing must be
non-reentrant (transformers 5's default).
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM
from transformers.modeling_outputs import MoeCausalLMOutputWithPast

from .configuration_pesc import PescLlamaConfig, PescMistralConfig, PescQwen2Config, pesc_setting


class PescAdapter(nn.Module):
    """One expert's adapter: `up(gelu_erf(down(f)))`."""

    def __init__(self, hidden, width):
        super().__init__()
        self.adapter_down = nn.Linear(hidden, width, bias=False)
        self.adapter_up = nn.Linear(width, hidden, bias=False)

    def forward(self, f):
        return self.adapter_up(F.gelu(self.adapter_down(f), approximate="none"))


class PescExperts(nn.Module):
    """The adapters, as `expert_{j}` (the names of the released checkpoints)."""

    def __init__(self, n, hidden, width):
        super().__init__()
        self.n = n
        for j in range(n):
            self.add_module(f"expert_{j}", PescAdapter(hidden, width))

    def __getitem__(self, j):
        return getattr(self, f"expert_{j}")


class PescMoeAdapter(nn.Module):
    """A layer's router and experts (`mlp.moe_adapter.*`)."""

    def __init__(self, config):
        super().__init__()
        hidden, n = config.hidden_size, pesc_setting(config, "num_experts")
        self.router = nn.Linear(hidden, n, bias=False)
        self.experts = PescExperts(n, hidden, pesc_setting(config, "adapter_dim"))


class PescMlp(nn.Module):
    """The dense FFN (its projections keep their names) followed by the PESC adapters in residual form."""

    def __init__(self, config, dense):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj, self.act_fn = dense.gate_proj, dense.up_proj, dense.down_proj, dense.act_fn
        self.moe_adapter = PescMoeAdapter(config)
        self.top_k = pesc_setting(config, "topk")
        self.scaling = float(pesc_setting(config, "moe_scaling"))
        self.dropout = nn.Dropout(float(pesc_setting(config, "adapter_dropout")))
        # The last forward's router logits [tokens, N] and chosen experts [tokens, k], for the balancing loss.
        self.router_logits = None
        self.chosen = None

    def forward(self, h):
        f = self.down_proj(self.act_fn(self.gate_proj(h)) * self.up_proj(h))
        shape = f.shape
        x, ff = h.reshape(-1, shape[-1]), f.reshape(-1, shape[-1])
        logits = self.moe_adapter.router(x)
        # Lower index first on ties, as the runner: a stable sort of the negated logits.
        chosen = torch.sort(-logits.detach(), dim=-1, stable=True).indices[:, : self.top_k]
        weights = torch.softmax(logits.gather(-1, chosen), dim=-1)
        self.router_logits, self.chosen = logits, chosen
        out = torch.zeros_like(ff)
        for j in range(self.moe_adapter.experts.n):
            rows, slot = torch.where(chosen == j)
            # An expert without tokens still runs (on none), so every rank's graph holds every adapter
            # and distributed training never waits on a gradient that is not coming.
            a = self.moe_adapter.experts[j](self.dropout(ff[rows]))
            out = out.index_add(0, rows, a * weights[rows, slot].unsqueeze(-1).to(a.dtype))
        return (ff + self.scaling * out).reshape(shape)


def balancing_loss(mlps, attention_mask):
    """`pesc-convert train`'s balancing loss summed over `mlps`' last forward, over the non-padding tokens."""
    total = 0.0
    valid = None if attention_mask is None else attention_mask.reshape(-1).bool()
    for mlp in mlps:
        logits, chosen = mlp.router_logits, mlp.chosen
        if valid is not None and valid.numel() == logits.shape[0]:
            logits, chosen = logits[valid], chosen[valid]
        n = logits.shape[-1]
        counts = torch.bincount(chosen.reshape(-1), minlength=n).to(torch.float64)
        shares = (counts / max(chosen.numel(), 1)).to(logits.dtype)
        p = torch.softmax(logits, dim=-1).mean(0)
        total = total + n * (shares * p).sum()
    return total


class PescMixin:
    """Builds the base causal LM, then gives every layer a `PescMlp` around its dense FFN."""

    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers:
            layer.mlp = PescMlp(config, layer.mlp)
        self.post_init()

    def pesc_mlps(self):
        return [layer.mlp for layer in self.model.layers]

    def forward(self, input_ids=None, attention_mask=None, labels=None, output_router_logits=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        if output_router_logits is None:
            output_router_logits = bool(pesc_setting(self.config, "output_router_logits"))
        aux, router_logits, loss = None, None, out.loss
        if output_router_logits:
            mlps = self.pesc_mlps()
            router_logits = tuple(m.router_logits for m in mlps)
            aux = balancing_loss(mlps, attention_mask)
            if loss is not None:
                loss = loss + float(pesc_setting(self.config, "router_aux_loss_coef")) * aux
        return MoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux,
            logits=out.logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            router_logits=router_logits,
        )


class PescLlamaForCausalLM(PescMixin, LlamaForCausalLM):
    config_class = PescLlamaConfig


class PescMistralForCausalLM(PescMixin, MistralForCausalLM):
    config_class = PescMistralConfig


class PescQwen2ForCausalLM(PescMixin, Qwen2ForCausalLM):
    config_class = PescQwen2Config
