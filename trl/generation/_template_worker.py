"""
Renders request-supplied chat templates for `trl vllm-serve` in a process of its own, so that a runaway template
(nested loops, huge strings) costs neither the server's memory nor its engine: the server kills this process when
a render takes too long.

Run as a plain script (`python -I _template_worker.py MEMORY_BYTES`): it imports only jinja2 and the standard
library, limits its own address space to `MEMORY_BYTES`, then reads one JSON job a line on stdin
(`{"template", "variables", "max_chars"}`) and writes one JSON answer a line on stdout (`{"text"}` or `{"error"}`).
Templates run in jinja2's `ImmutableSandboxedEnvironment` (no attribute access to internals, no mutation of inputs)
with the features chat templates use: `trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`,
`strftime_now`, a `tojson` filter and a pass-through `{% generation %}` block.
"""

import json
import resource
import sys
from datetime import datetime


def _environment():
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` renders its body (assistant masks are not computed here)."""

        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message):
        raise ValueError(f"the template raised: {message}")

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, "jinja2.ext.loopcontrols"]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return environment


def _render(environment, cache: dict, job: dict) -> dict:
    template = cache.get(job["template"])
    if template is None:
        if len(cache) > 16:
            cache.clear()
        template = cache[job["template"]] = environment.from_string(job["template"])
    text = template.render(**job["variables"])
    if len(text) > job["max_chars"]:
        return {"error": f"the rendered prompt has {len(text)} characters, over the {job['max_chars']} allowed"}
    return {"text": text}


def main() -> None:
    memory = int(sys.argv[1]) if len(sys.argv) > 1 else 2**30
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    environment, cache = _environment(), {}
    for line in sys.stdin:
        try:
            answer = _render(environment, cache, json.loads(line))
        except MemoryError:
            cache.clear()
            answer = {"error": "rendering needed more memory than the sandbox allows"}
        except Exception as error:
            answer = {"error": f"{type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
