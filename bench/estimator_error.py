"""Input token estimator: error against the simulator's tokenizer, and speed.

``gateway.cost.estimate`` guesses a request's input tokens before it is forwarded; the quota
reservation rests on that guess. This script builds a varied, deterministic corpus of request
bodies and compares each estimate with ``gateway.simulator.tokens.input_tokens``:

* Anthropic Messages (InvokeModel): short chats, multi-turn prose with system prompts, code,
  number-heavy text, non-English text, tools with tool_use / tool_result, images, long bodies;
* Converse: system + multi-turn, tools with toolUse / toolResult, documents, a mixed bag.

Text comes from the standard library's docstrings (English prose) and sources (code), generated
figures (numbers) and a fixed set of sentences in ten languages. Per category it reports the
ratio estimate / actual (mean, p5, p50, p95), the share of under-estimates, the mean number of
tokens over, and the estimator's speed (µs per estimate, best of ``--repeat`` timeit runs);
then the speed on one ~2 KB body of each API, and the ratio on a few kinds of text the
estimator is known to under-count (ids, hashes, base64, Vietnamese, one-letter words), kept out
of the corpus.

Usage::

    .venv/bin/python bench/estimator_error.py [--n 200] [--seed 20261122] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import base64
import importlib
import inspect
import json
import platform
import random
import statistics
import sys
import timeit
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Final

import orjson

from gateway.cost import estimate
from gateway.simulator.tokens import input_tokens

DEFAULT_MAX_TOKENS: Final = 64_000

Body = dict[str, Any]
Case = tuple[str, Body]  # (operation, body)

# ----------------------------------------------------------------------------- text sources

# fmt: off
_PROSE_MODULES: Final = (
    "argparse", "asyncio.tasks", "asyncio.streams", "collections", "contextlib", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email.message", "fractions", "functools",
    "http.client", "http.cookiejar", "inspect", "ipaddress", "logging", "pathlib", "pickle",
    "queue", "random", "shutil", "smtplib", "statistics", "string", "subprocess", "tarfile",
    "textwrap", "threading", "typing", "unittest.case", "urllib.parse", "uuid", "zipfile",
)
# fmt: on

# A few sentences per language, so the corpus has accents, Cyrillic, CJK, Arabic and Devanagari.
_FOREIGN: Final = {
    "de": "Die Bestellung wurde gestern verschickt und sollte morgen ankommen. Bitte prüfen "
    "Sie die Rechnung, bevor Sie die Zahlung freigeben. Für Rückfragen steht Ihnen unser "
    "Kundenservice werktags von acht bis achtzehn Uhr zur Verfügung. Größere Änderungen am "
    "Vertrag müssen schriftlich vereinbart werden.",
    "fr": "Le rapport trimestriel montre une hausse des ventes dans toutes les régions. Nous "
    "avons déjà prévu une réunion pour discuter des prochaines étapes. Pourriez-vous "
    "m'envoyer les chiffres détaillés avant vendredi ? Les équipes ont été très réactives.",
    "es": "El servidor dejó de responder poco después de la actualización. Hemos revertido el "
    "cambio y estamos investigando la causa. ¿Puedes revisar los registros de la última "
    "hora? La migración de la base de datos terminará mañana por la mañana.",
    "pt": "A equipe concluiu a análise dos requisitos e preparou uma proposta inicial. "
    "Precisamos de uma decisão até o fim da semana. As informações sobre preços estão na "
    "planilha compartilhada, junto com as estimativas de prazo.",
    "ru": "Сервис обрабатывает запросы клиентов и возвращает результат в течение нескольких "
    "секунд. Пожалуйста, проверьте настройки доступа перед запуском. Если ошибка "
    "повторится, свяжитесь с дежурным инженером и приложите журнал событий.",
    "zh": "我们已经收到您的订单，预计三天内发货。请确认收货地址是否正确。如果您有任何问题，"
    "请随时联系我们的客服团队。本次更新修复了多个已知问题，并提升了系统的稳定性。",
    "ja": "会議の資料を共有しますので、事前に目を通しておいてください。来週の火曜日までに"
    "ご意見をいただけると助かります。新しい機能は段階的に公開される予定です。",
    "ko": "요청하신 보고서를 첨부했습니다. 검토 후 수정할 부분이 있으면 알려 주세요. "
    "다음 주에 팀 회의에서 결과를 공유할 예정입니다. 일정이 변경되면 바로 연락드리겠습니다.",
    "ar": "تمت معالجة طلبك بنجاح وسيتم إرسال الفاتورة إلى بريدك الإلكتروني. يرجى مراجعة "
    "التفاصيل والتأكد من صحة البيانات. فريق الدعم متاح على مدار الساعة لمساعدتك.",
    "hi": "आपका अनुरोध सफलतापूर्वक दर्ज कर लिया गया है। कृपया अगले चरण के लिए अपने ईमेल की जाँच "
    "करें। यदि कोई समस्या हो तो हमारी सहायता टीम से संपर्क करें।",
}

_QUESTIONS: Final = (
    "Can you summarise this?",
    "What does this function do, and is there a bug in it?",
    "Translate the text above into English.",
    "Hi!",
    "Please rewrite the paragraph above so that it is shorter and clearer.",
    "Which of these numbers is the largest, and what is the total?",
    "Explain the difference between a process and a thread in two sentences.",
    "Write a haiku about rate limits.",
    "List three risks of this plan.",
    "Thanks, that helps. One more question: how would you test it?",
    "ok",
    "What is the capital of Australia?",
)

# fmt: off
_TOOL_NAMES: Final = (
    "get_weather", "search_orders", "create_ticket", "lookup_customer", "send_email",
    "run_sql_query", "fetch_url", "list_files", "read_file", "get_stock_price",
    "schedule_meeting", "translate_text",
)
# fmt: on


def _prose_pool() -> str:
    docs: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in _PROSE_MODULES:
            module = importlib.import_module(name)
            docs.extend(
                inspect.cleandoc(obj.__doc__)
                for _, obj in sorted(vars(module).items())
                if (inspect.isclass(obj) or inspect.isfunction(obj))
                and isinstance(obj.__doc__, str)
                and len(obj.__doc__) > 150
            )
    return "\n\n".join(docs)


def _code_pool() -> str:
    sources: list[str] = []
    for name in _PROSE_MODULES:
        module = importlib.import_module(name)
        for _, obj in sorted(vars(module).items()):
            if inspect.isfunction(obj) and obj.__module__ == module.__name__:
                try:
                    sources.append(inspect.getsource(obj))
                except (OSError, TypeError):
                    continue
    return "\n".join(sources)


class Text:
    """Deterministic snippets of each kind of text."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.prose_src = _prose_pool()
        self.code_src = _code_pool()

    def _window(self, source: str, size: int, sep: str) -> str:
        start = self.rng.randrange(max(1, len(source) - size))
        start = source.find(sep, start) + 1
        end = source.rfind(sep, start, start + size)
        return source[start : end if end > start else start + size]

    def prose(self, size: int) -> str:
        return self._window(self.prose_src, size, " ")

    def code(self, size: int) -> str:
        return self._window(self.code_src, size, "\n")

    def foreign(self, size: int) -> str:
        text = _FOREIGN[self.rng.choice(sorted(_FOREIGN))] + " "
        start = self.rng.randrange(len(text))
        return (text * (2 + size // len(text)))[start : start + size]

    def numbers(self, size: int) -> str:
        rng, lines = self.rng, ["date,region,orders,revenue,margin"]
        while sum(map(len, lines)) < size:
            if rng.random() < 0.7:
                lines.append(
                    f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d},"
                    f"{rng.choice(['eu-west-1', 'us-east-1', 'ap-south-1'])},"
                    f"{rng.randint(0, 99999)},{rng.uniform(0, 1e6):.2f},{rng.uniform(-1, 1):.3f}"
                )
            else:
                lines.append(
                    f"Invoice {rng.randint(10**5, 10**9)} of ${rng.randint(1, 10**6):,}."
                    f"{rng.randint(0, 99):02d} is due in {rng.randint(1, 90)} days "
                    f"(ref {rng.randint(0, 10**12):x})."
                )
        return "\n".join(lines)[:size]

    def any(self, size: int) -> str:
        kinds = (self.prose, self.code, self.numbers, self.foreign)
        return self.rng.choices(kinds, weights=(6, 2, 1, 1))[0](size)

    def question(self) -> str:
        return self.rng.choice(_QUESTIONS)

    def size(self, low: int, high: int) -> int:
        # Log-uniform: as many short texts as long ones.
        return int(low * (high / low) ** self.rng.random())


# ----------------------------------------------------------------------------- body parts


def _schema(t: Text) -> Body:
    rng, props = t.rng, {}
    for i in range(rng.randint(1, 7)):
        kind = rng.choice(["string", "integer", "number", "boolean", "array", "enum"])
        prop: Body = {"type": "string" if kind == "enum" else kind}
        if kind == "enum":
            prop["enum"] = t.prose(40).split()[:4]
        elif kind == "array":
            prop["items"] = {"type": "string"}
        if rng.random() < 0.8:
            prop["description"] = t.prose(t.size(20, 200))
        props[f"{rng.choice(t.prose(60).split() or ['field']).lower()}_{i}"] = prop
    required = sorted(props)[: rng.randint(0, len(props))]
    return {"type": "object", "properties": props, "required": required}


def _tool_input(t: Text, schema: Body) -> Body:
    values: Body = {}
    for key, prop in schema["properties"].items():
        kind = prop["type"]
        if kind == "integer":
            values[key] = t.rng.randint(-5, 10**6)
        elif kind == "number":
            values[key] = round(t.rng.uniform(-1000, 1000), 3)
        elif kind == "boolean":
            values[key] = t.rng.random() < 0.5
        elif kind == "array":
            values[key] = t.prose(60).split()[:3]
        else:
            values[key] = t.prose(t.size(5, 120))
    return values


def _tool_result_text(t: Text) -> str:
    if t.rng.random() < 0.4:  # tools often answer in JSON
        payload = {"status": "ok", "items": [t.prose(60) for _ in range(t.rng.randint(1, 5))]}
        return json.dumps(payload, indent=t.rng.choice([None, 2]))
    return t.any(t.size(20, 3000))


def _b64(t: Text, low: int, high: int) -> str:
    return base64.b64encode(t.rng.randbytes(t.size(low, high))).decode()


def _turns(t: Text, count: int, text: Callable[[int], str], low: int, high: int) -> list[str]:
    return [text(t.size(low, high)) for _ in range(count)]


# ----------------------------------------------------------------------------- Anthropic


def _anthropic(messages: list[Body], system: Any = None, **extra: Any) -> Case:
    body: Body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 1024}
    if system is not None:
        body["system"] = system
    body["messages"] = messages
    body.update(extra)
    return "invoke", body


def _system(t: Text) -> Any:
    text = "You are a helpful assistant. " + t.prose(t.size(50, 3000))
    if t.rng.random() < 0.5:
        return text
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]


def _alternate(texts: Sequence[str], as_blocks: bool) -> list[Body]:
    return [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": [{"type": "text", "text": s}] if as_blocks else s,
        }
        for i, s in enumerate(texts)
    ]


def a_chat_short(t: Text) -> Case:
    text = t.question() if t.rng.random() < 0.5 else t.prose(t.size(10, 250))
    system = "Answer briefly." if t.rng.random() < 0.3 else None
    return _anthropic([{"role": "user", "content": text}], system)


def a_multi_turn(t: Text) -> Case:
    texts = _turns(t, t.rng.randrange(1, 12, 2), t.prose, 40, 4000)
    return _anthropic(_alternate(texts, t.rng.random() < 0.5), _system(t))


def a_code(t: Text) -> Case:
    texts = [t.code(t.size(200, 6000)) + "\n\n" + t.question()]
    if t.rng.random() < 0.5:
        texts += [t.prose(300) + "\n\n```python\n" + t.code(t.size(100, 2000)) + "```", "ok"]
    return _anthropic(_alternate(texts, t.rng.random() < 0.5), _system(t))


def a_numbers(t: Text) -> Case:
    texts = _turns(t, t.rng.randrange(1, 6, 2), t.numbers, 50, 5000)
    texts[-1] += "\n" + t.question()
    return _anthropic(_alternate(texts, False))


def a_foreign(t: Text) -> Case:
    texts = _turns(t, t.rng.randrange(1, 6, 2), t.foreign, 20, 3000)
    return _anthropic(_alternate(texts, t.rng.random() < 0.5), _system(t))


def a_tools(t: Text) -> Case:
    schemas = [_schema(t) for _ in range(t.rng.randint(1, 6))]
    tools: list[Body] = [
        {"name": name, "description": t.prose(t.size(30, 600)), "input_schema": schema}
        for name, schema in zip(t.rng.sample(_TOOL_NAMES, len(schemas)), schemas, strict=True)
    ]
    messages: list[Body] = [{"role": "user", "content": t.prose(t.size(20, 800))}]
    for n in range(t.rng.randint(0, 4)):
        tool = t.rng.choice(tools)
        use = {"type": "tool_use", "id": f"toolu_{n:024d}", "name": tool["name"]}
        use["input"] = _tool_input(t, tool["input_schema"])
        messages.append({"role": "assistant", "content": [use]})
        result: Any = _tool_result_text(t)
        if t.rng.random() < 0.5:
            result = [{"type": "text", "text": result}]
        block = {"type": "tool_result", "tool_use_id": use["id"], "content": result}
        messages.append({"role": "user", "content": [block]})
    return _anthropic(messages, _system(t), tools=tools)


def a_images(t: Text) -> Case:
    images = [
        {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": "image/png",
                "data": _b64(t, 5_000, 300_000),
            },
        }
        for _ in range(t.rng.randint(1, 4))
    ]
    content = [*images, {"type": "text", "text": t.prose(t.size(10, 600))}]
    return _anthropic([{"role": "user", "content": content}])


def a_long(t: Text) -> Case:
    doc = "\n\n".join(t.any(t.size(5000, 20000)) for _ in range(t.rng.randint(2, 5)))
    return _anthropic([{"role": "user", "content": doc + "\n\n" + t.question()}], _system(t))


# ----------------------------------------------------------------------------- Converse


def _converse(messages: list[Body], system: list[Body] | None = None, **extra: Any) -> Case:
    body: Body = {"messages": messages, "inferenceConfig": {"maxTokens": 2048}}
    if system:
        body["system"] = system
    body.update(extra)
    return "converse", body


def _c_system(t: Text) -> list[Body]:
    blocks: list[Body] = [{"text": "You are a helpful assistant. " + t.prose(t.size(50, 3000))}]
    return [*blocks, {"cachePoint": {"type": "default"}}] if t.rng.random() < 0.4 else blocks


def _c_alternate(texts: Sequence[str]) -> list[Body]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": [{"text": s}]}
        for i, s in enumerate(texts)
    ]


def c_chat(t: Text) -> Case:
    texts = _turns(t, t.rng.randrange(1, 12, 2), t.any, 10, 4000)
    return _converse(_c_alternate(texts), _c_system(t))


def c_tools(t: Text) -> Case:
    specs: list[Body] = [
        {
            "toolSpec": {
                "name": name,
                "description": t.prose(t.size(30, 600)),
                "inputSchema": {"json": _schema(t)},
            }
        }
        for name in t.rng.sample(_TOOL_NAMES, t.rng.randint(1, 6))
    ]
    messages: list[Body] = [{"role": "user", "content": [{"text": t.prose(t.size(20, 800))}]}]
    for n in range(t.rng.randint(0, 4)):
        spec = t.rng.choice(specs)["toolSpec"]
        use = {"toolUseId": f"tooluse_{n}", "name": spec["name"]}
        use["input"] = _tool_input(t, spec["inputSchema"]["json"])
        messages.append({"role": "assistant", "content": [{"toolUse": use}]})
        content: Body = (
            {"json": {"rows": [_tool_input(t, _schema(t)) for _ in range(t.rng.randint(1, 4))]}}
            if t.rng.random() < 0.5
            else {"text": _tool_result_text(t)}
        )
        result = {"toolUseId": use["toolUseId"], "content": [content], "status": "success"}
        messages.append({"role": "user", "content": [{"toolResult": result}]})
    return _converse(messages, _c_system(t), toolConfig={"tools": specs})


def c_documents(t: Text) -> Case:
    content: list[Body] = []
    for i in range(t.rng.randint(1, 3)):
        if t.rng.random() < 0.5:
            source: Body = {"bytes": _b64(t, 2_000, 400_000)}
            fmt = "pdf"
        else:
            source, fmt = {"text": t.any(t.size(500, 20000))}, "txt"
        content.append({"document": {"format": fmt, "name": f"Report {i}", "source": source}})
    content.append({"text": t.question()})
    return _converse([{"role": "user", "content": content}], _c_system(t))


def c_mixed(t: Text) -> Case:
    content: list[Body] = [{"text": t.any(t.size(20, 5000))} for _ in range(t.rng.randint(1, 3))]
    if t.rng.random() < 0.4:
        content.append({"image": {"format": "png", "source": {"bytes": _b64(t, 5_000, 100_000)}}})
    turns = [
        *_c_alternate(_turns(t, t.rng.randrange(0, 6, 2), t.foreign, 20, 2000)),
        {"role": "user", "content": content},
    ]
    return _converse(turns, _c_system(t) if t.rng.random() < 0.5 else None)


CATEGORIES: Final[dict[str, Callable[[Text], Case]]] = {
    "invoke: short chat": a_chat_short,
    "invoke: multi-turn prose + system": a_multi_turn,
    "invoke: code": a_code,
    "invoke: numbers": a_numbers,
    "invoke: non-English": a_foreign,
    "invoke: tools, tool_use/tool_result": a_tools,
    "invoke: images": a_images,
    "invoke: long (10–100 KB)": a_long,
    "converse: system + multi-turn": c_chat,
    "converse: tools, toolUse/toolResult": c_tools,
    "converse: documents": c_documents,
    "converse: mixed, non-English, images": c_mixed,
}


def corpus(n: int, seed: int) -> dict[str, list[Case]]:
    """``n`` bodies per category, the same for the same seed (and Python version)."""
    text = Text(random.Random(seed))
    return {name: [make(text) for _ in range(n)] for name, make in CATEGORIES.items()}


# ----------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Row:
    category: str
    n: int
    body_kb: float  # median JSON size
    mean: float
    p5: float
    p50: float
    p95: float
    under: float  # share of bodies estimated below the actual count
    excess: float  # mean tokens over (negative: under)
    us: float  # µs per estimate


def _estimate(case: Case) -> int:
    return estimate(case[0], case[1], default_max_tokens=DEFAULT_MAX_TOKENS).input_tokens


def measure(name: str, cases: list[Case], repeat: int) -> Row:
    actual = [input_tokens(op, body) for op, body in cases]
    guessed = [_estimate(case) for case in cases]
    ratios = [g / a for g, a in zip(guessed, actual, strict=True)]
    q = statistics.quantiles(ratios, n=100, method="inclusive")
    runs = timeit.repeat(lambda: [_estimate(case) for case in cases], number=3, repeat=repeat)
    return Row(
        category=name,
        n=len(cases),
        body_kb=statistics.median(len(orjson.dumps(b)) for _, b in cases) / 1000,
        mean=statistics.fmean(ratios),
        p5=q[4],
        p50=q[49],
        p95=q[94],
        under=sum(r < 1 for r in ratios) / len(ratios),
        excess=statistics.fmean(g - a for g, a in zip(guessed, actual, strict=True)),
        us=min(runs) / (3 * len(cases)) * 1e6,
    )


def two_kb_speed(repeat: int) -> dict[str, float]:
    """µs per estimate of one ~2 KB body of each API (multi-turn text, a tool)."""
    text = Text(random.Random(1))
    prose = [text.prose(420) for _ in range(4)]
    tool = {"name": "get_weather", "description": text.prose(120), "input_schema": _schema(text)}
    bodies = {
        "invoke": _anthropic(_alternate(prose, True), prose[0][:200], tools=[tool])[1],
        "converse": _converse(_c_alternate(prose), [{"text": prose[0][:200]}])[1],
    }
    out = {}
    for op, body in bodies.items():
        number = 20_000
        runs = timeit.repeat(partial(_estimate, (op, body)), number=number, repeat=repeat)
        out[f"{op} ({len(orjson.dumps(body)) / 1000:.1f} KB)"] = min(runs) / number * 1e6
    return out


def weak_spots(seed: int) -> dict[str, float]:
    """Ratio for text the per-character weights are known to under-count (not in the corpus):
    one user message of each, about 1-2 KB."""
    rng = random.Random(seed)
    texts = {
        "UUIDs": " ".join(str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(40)),
        "base64 blob in text": base64.b64encode(rng.randbytes(1200)).decode(),
        "JSON of ids and hashes": json.dumps(
            [
                {
                    "id": f"i-{rng.getrandbits(68):017x}",
                    "sha": f"{rng.getrandbits(160):040x}",
                    "state": "running",
                }
                for _ in range(12)
            ]
        ),
        "Vietnamese (a diacritic in most words)": "Tôi đang học tiếng Việt và muốn cải thiện "
        "kỹ năng giao tiếp của mình trong công việc hằng ngày. " * 12,
        "one-letter words ('a a a …')": "a " * 600,
        "one-letter code ('x = a + b * c')": "x = a + b * c - d / e\n" * 60,
    }
    out = {}
    for name, text in texts.items():
        case = _anthropic([{"role": "user", "content": text}])
        out[name] = _estimate(case) / input_tokens(*case)
    return out


def render_markdown(
    rows: list[Row], speed: Mapping[str, float], weak: Mapping[str, float], args: argparse.Namespace
) -> str:
    lines = [
        f"Corpus: {args.n} bodies per category, seed {args.seed}; Python "
        f"{platform.python_version()}; ratio = estimate / simulator count.",
        "",
        "| category | n | body KB (p50) | mean | p5 | p50 | p95 | under | mean excess (tokens) "
        "| µs / estimate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.category} | {r.n} | {r.body_kb:.1f} | {r.mean:.3f} | {r.p5:.3f} | {r.p50:.3f} "
        f"| {r.p95:.3f} | {r.under:.1%} | {r.excess:+,.0f} | {r.us:.1f} |"
        for r in rows
    ]
    lines += ["", "Speed on a ~2 KB body (best of runs):", ""]
    lines += [f"- {name}: {us:.2f} µs per estimate" for name, us in speed.items()]
    lines += ["", "Known weak spots (ratio for one message of such text, not in the corpus):", ""]
    lines += [f"- {name}: {ratio:.2f}" for name, ratio in weak.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200, help="bodies per category")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--repeat", type=int, default=5, help="timeit repeats (best is kept)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    if args.n < 2 or args.repeat < 1:
        parser.error("--n must be >= 2 and --repeat >= 1")
    cases = corpus(args.n, args.seed)
    everything = [case for group in cases.values() for case in group]
    rows = [measure(name, group, args.repeat) for name, group in cases.items()]
    rows.append(measure("all", everything, args.repeat))
    speed = two_kb_speed(args.repeat)
    weak = weak_spots(args.seed)
    if args.json:
        report = {"rows": [asdict(r) for r in rows], "speed_2kb_us": speed, "weak_spots": weak}
        print(json.dumps(report, indent=2))
    else:
        print(render_markdown(rows, speed, weak, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
