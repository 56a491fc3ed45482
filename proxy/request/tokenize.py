"""The prompt's token ids exactly as the tier's engine will see them (precise prefix routing).

Loads the model folder's `tokenizer.json` with the `tokenizers` library (Rust, no
transformers/torch) and its chat template (`chat_template.jinja` or the
`tokenizer_config.json` entry), rendered with jinja2's sandbox the way transformers
renders it for vLLM: `add_generation_prompt` on, the tokenizer's special tokens
defined, then encoded without adding special tokens (the template already has them).
Completions encode the prompt with the tokenizer's own special tokens; a prompt given
as token ids is used as is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

MAX_TOKENS = 1 << 17  # longer prompts are matched on their leading part only


class TokenizerError(ValueError):
    """A model folder without a usable tokenizer (one line naming the file)."""


def _raise(message: str) -> None:
    raise ValueError(message)


def _text(content: Any) -> Any:
    """vLLM's string content format: a list of text parts becomes one string joined by newlines."""
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return content


class PromptTokenizer:
    """`encode(endpoint, body)` -> token ids, or () when the body has no prompt to tokenize."""

    def __init__(self, tokenizer: Any, chat_template: str | None, special: dict[str, str]) -> None:
        self.tokenizer = tokenizer
        self.special = special
        self._template = None
        if chat_template:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
            env.globals["raise_exception"] = _raise
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._template = env.from_string(chat_template)

    @classmethod
    def from_model_dir(cls, folder: str | Path) -> PromptTokenizer:
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{path}: not found (precise prefix routing needs the model's tokenizer.json)")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust loader raises a bare Exception
            raise TokenizerError(f"{path}: cannot load: {str(exc).splitlines()[0]}") from None
        config: dict[str, Any] = {}
        cfg_path = folder / "tokenizer_config.json"
        if cfg_path.is_file():
            try:
                config = json.loads(cfg_path.read_text())
            except (OSError, ValueError) as exc:
                raise TokenizerError(f"{cfg_path}: not JSON: {exc}") from None
        template = None
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        elif isinstance(config.get("chat_template"), str):
            template = config["chat_template"]
        elif isinstance(config.get("chat_template"), list):  # named templates: the default one
            named = {t.get("name"): t.get("template") for t in config["chat_template"] if isinstance(t, dict)}
            template = named.get("default")
        special = {}
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value = config.get(name)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                special[name] = value
        return cls(tokenizer, template, special)

    def render_chat(self, messages: Sequence[Any], **extra: Any) -> str:
        if self._template is None:
            raise TokenizerError("the model has no chat template")
        msgs = [{**m, "content": _text(m.get("content"))} if isinstance(m, dict) else m for m in messages]
        return self._template.render(messages=msgs, add_generation_prompt=True, **self.special, **extra)

    def encode(self, endpoint: str, body: dict[str, Any]) -> list[int]:
        """Token ids of the request's prompt; [] when there is none (or the template refuses it)."""
        if endpoint == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or self._template is None:
                return []
            extra = {k: body[k] for k in ("tools", "documents") if body.get(k) is not None}
            try:
                text = self.render_chat(messages, **extra)
            except Exception:  # noqa: BLE001 - a template error is the engine's to report; route on load
                return []
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                return prompt[:MAX_TOKENS]
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                return []
            ids = self.tokenizer.encode(prompt, add_special_tokens=True).ids
        return ids[:MAX_TOKENS]


INLINE_CHARS = 16_000  # ~4k tokens, ~3 ms: longer prompts are tokenized off the event loop


async def tokenize_request(tokenizer: PromptTokenizer, endpoint: str, body: dict[str, Any], chars: int) -> list[int]:
    """`tokenizer.encode`, in a worker thread when the prompt is long (the Rust encoder releases the GIL)."""
    if chars <= INLINE_CHARS:
        return tokenizer.encode(endpoint, body)
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, tokenizer.encode, endpoint, body)
