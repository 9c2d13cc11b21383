"""The prompts of the paper's model families, as chat templates, and how a checkpoint is recognised.

Original LLaVA-format checkpoints (HuatuoGPT-Vision, LLaVA-Med, LLaVA-1.5) keep their prompt in
their own code (a "conversation" object), not in the tokenizer, and some transformers ports ship no
chat template either. The evaluator renders every prompt through a chat template, so the known
prompts live here once: ``vgmed-eval convert`` writes them into converted checkpoints, and loading
a recognised port without a template falls back to them. ``--chat-template FILE`` overrides both.

Each template takes the adapter's messages (a user turn whose content is a list of ``image`` and
``text`` items) and renders exactly the string the original code builds for one image before the
question; the tokenizer adds its own BOS where the original does (LLaMA/Mistral, not Qwen).
transformers renders templates with ``trim_blocks``: a newline right after a block tag is dropped,
so such newlines are written as ``{{ '\\n' }}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The user turn's items: the image placeholder, then the text, as the original code joins them.
_USER_ITEMS = ("{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
               "{% else %}{{ item['text'] }}{% endif %}{% endfor %}")


def _assistant(prefix: str, suffix: str) -> str:
    return f"{prefix}{{{{ message['content'][0]['text'] }}}}{suffix}"


@dataclass(frozen=True)
class FamilyPrompt:
    """One family's prompt: a name, where it comes from, and its chat template."""

    name: str
    source: str
    template: str


# HuatuoGPT-Vision (7B on Qwen2, 34B on Yi): "<|user|>\n<image>\n{text}\n<|assistant|>\n", no system prompt.
HUATUO = FamilyPrompt(
    "huatuo", "HuatuoGPT-Vision's conversation template",
    "{% for message in messages %}{% if message['role'] == 'user' %}<|user|>\n" + _USER_ITEMS + "{{ '\\n' }}"
    "{% else %}<|assistant|>\n" + _assistant("", "{{ eos_token }}\n") + "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
)
# LLaVA-Med v1.5 (conv mode mistral_instruct: LLAMA_2 style, empty system): "[INST] <image>\n{text} [/INST]".
LLAVA_MED = FamilyPrompt(
    "llava-med", "LLaVA-Med v1.5's mistral_instruct conversation",
    "{% for message in messages %}{% if message['role'] == 'user' %}[INST] " + _USER_ITEMS + " [/INST]"
    "{% else %} " + _assistant("", " {{ eos_token }}") + "{% endif %}{% endfor %}",
)
# LLaVA-1.5 originals (conv mode vicuna_v1 / llava_v1).
VICUNA = FamilyPrompt(
    "vicuna", "LLaVA-1.5's vicuna_v1 conversation",
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions. "
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: " + _USER_ITEMS + " "
    "{% else %}ASSISTANT: " + _assistant("", "{{ eos_token }}") + "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}",
)
# InternVL-Chat's "Hermes-2" / "internlm2-chat" conversations (MedRegA: InternVL-Chat-V1-2, Hermes-2-Yi-34B):
# ChatML joined without newlines (separator style MPT), InternVL's default system message, "<image>\n{text}".
INTERNVL_SYSTEM = ("你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，"
                   "英文名叫InternVL, 是一个有用无害的人工智能助手。")
INTERNVL_HERMES = FamilyPrompt(
    "internvl-hermes2", "InternVL-Chat's Hermes-2 / internlm2-chat conversation",
    "<|im_start|>system\n" + INTERNVL_SYSTEM + "<|im_end|>"
    "{% for message in messages %}{% if message['role'] == 'user' %}<|im_start|>user\n" + _USER_ITEMS + "<|im_end|>"
    "{% else %}<|im_start|>assistant\n" + _assistant("", "<|im_end|>") + "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
)
PROMPTS = {p.name: p for p in (HUATUO, LLAVA_MED, VICUNA, INTERNVL_HERMES)}

# Lower-case name fragments of a checkpoint path or hub id -> its family's prompt.
_NAME_HINTS = (("huatuogpt-vision", HUATUO), ("huatuo", HUATUO), ("llava-med", LLAVA_MED), ("llava_med", LLAVA_MED))


def recognise(name: str) -> FamilyPrompt | None:
    """The prompt of a checkpoint recognised by its path or hub id (HuatuoGPT-Vision, LLaVA-Med)."""
    lowered = str(name).lower()
    return next((prompt for hint, prompt in _NAME_HINTS if hint in lowered), None)


def read_template(path: str | Path) -> str:
    """A chat template file (Jinja text, or a JSON ``{"chat_template": ...}`` as processors save it)."""
    import json

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--chat-template {path}: cannot read: {exc}") from exc
    if path.suffix == ".json":
        try:
            text = json.loads(text)["chat_template"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"--chat-template {path}: not a JSON object with a 'chat_template' string") from exc
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"--chat-template {path}: the template is empty")
    return text
