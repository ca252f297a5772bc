"""Which methods and outputs a run has: `--method a,b,c`, `--outputs`, `--per-layer` and `--sheet`,
checked on the command line (a mistake is a usage error, exit 2, before the model loads) and read
by the run loop for each of its methods. Torch-free, like options.py.

Some outputs belong to some methods only: the method table names them per method
(`extra_outputs`, written by default: raw attention's heads, CP-LRP's signed relevance;
`optional_outputs`, written when asked: the per-block figures). Asking for one that none of the
run's methods has is a usage error; in a run of several methods it is written for those that
have it.
"""
from __future__ import annotations

import click

from ..io.sinks import DEFAULT_SINKS, OUTPUT_NAMES, SINKS
from ..methods.table import METHODS, MethodSpec

# --per-layer's values and the output each writes; a bare --per-layer is "strip"
PER_LAYER = {"strip": "layers", "gif": "layers-gif", "webp": "layers-webp"}
# outputs that only some methods give
OWNED = {name for spec in METHODS.values() for name in spec.extra_outputs + spec.optional_outputs}


def names_of(text: str) -> tuple[str, ...]:
    """"a, b,,a" -> ("a", "b"): a comma list, blanks and repeats dropped, order kept."""
    return tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))


def parse_methods(text: str) -> tuple[str, ...]:
    """--method rollout,chefer -> ("rollout", "chefer"); unknown names are a usage error."""
    names = names_of(text)
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise click.BadParameter(f"unknown method {', '.join(unknown) or '(none)'}; choose from "
                                 f"{', '.join(METHODS)} (several: comma-separated)", param_hint="--method")
    return names


def gives(spec: MethodSpec, name: str) -> bool:
    """The method writes this output (every output that is not owned by some methods applies to all)."""
    return name not in OWNED or name in spec.extra_outputs + spec.optional_outputs


def methods_text(specs) -> str:
    return ", ".join(spec.name for spec in specs)


def check_owned(specs, names, hint: str) -> None:
    """A usage error for an output that none of the run's methods gives."""
    for name in names:
        if not any(gives(spec, name) for spec in specs):
            givers = ", ".join(s.name for s in METHODS.values() if gives(s, name))
            raise click.BadParameter(f"{name} is not an output of {methods_text(specs)} (methods with it: {givers})",
                                     param_hint=hint)


def parse_outputs(specs, text: str | None) -> tuple[str, ...] | None:
    """--outputs overlay,mask -> ("overlay", "mask"); None keeps each method's default set."""
    if text is None:
        return None
    names = names_of(text)
    unknown = [n for n in names if n not in OUTPUT_NAMES]
    if unknown or not names:
        raise click.BadParameter(f"unknown output {', '.join(unknown) or '(none)'}; choose from "
                                 f"{', '.join(OUTPUT_NAMES)}", param_hint="--outputs")
    check_owned(specs, names, "--outputs")
    return names


def added_outputs(specs, per_layer: str | None, sheet: bool) -> tuple[str, ...]:
    """The outputs --per-layer FORMATS and --sheet add. The strip of a method that shows heads
    (raw attention) comes with its heads x blocks grid: the per-block view of its heads."""
    added: list[str] = []
    if per_layer is not None:
        formats = names_of(per_layer)
        unknown = [f for f in formats if f not in PER_LAYER]
        if unknown or not formats:
            raise click.BadParameter(f"unknown format {', '.join(unknown) or '(none)'}; choose from "
                                     f"{', '.join(PER_LAYER)} (comma-separated)", param_hint="--per-layer")
        if not any(gives(spec, "layers") for spec in specs):
            givers = ", ".join(s.name for s in METHODS.values() if gives(s, "layers"))
            raise click.BadParameter(f"{methods_text(specs)}: no per-block maps (methods with them: {givers})",
                                     param_hint="--per-layer")
        added += [PER_LAYER[f] for f in formats]
        if "strip" in formats and any(gives(spec, "heads-blocks") for spec in specs):
            added.append("heads-blocks")
    if sheet:
        added.append("folder-sheet")
    return tuple(added)


def check_engine_outputs(engine: str, methods: tuple[str, ...], outputs, added) -> None:
    """What the engines other than the local one cannot do: Ray explains one method per run and
    writes no sheets; torchrun's processes would each write their own folder sheet."""
    wanted = set(outputs or ()) | set(added)
    if engine == "ray" and len(methods) > 1:
        raise click.BadParameter("--engine ray explains one method per run", param_hint="--method")
    refused = {"ray": {"sheet", "folder-sheet"}, "torchrun": {"folder-sheet"}}.get(engine, set()) & wanted
    if refused:
        raise click.BadParameter(f"--engine {engine} does not write {', '.join(sorted(refused))}",
                                 param_hint="--sheet" if refused == {"folder-sheet"} else "--outputs")


def selected_sinks(options, spec: MethodSpec | None = None) -> tuple[str, ...]:
    """The outputs of one method of a run (default: its first): --outputs, or the overlay, the
    mask, the method's extra outputs and, with several methods, the comparison sheet; then what
    --per-layer and --sheet add; only those the method gives."""
    spec = spec or METHODS[options.method]
    several = len(options.method_list) > 1
    names = options.outputs or (DEFAULT_SINKS + spec.extra_outputs + (("sheet",) if several else ()))
    names = tuple(dict.fromkeys(names + tuple(options.added_outputs)))
    return tuple(n for n in names if gives(spec, n))


def needs_layer_maps(names) -> bool:
    """One of these outputs draws per-block maps: the run explains with per_layer=True."""
    return any(getattr(SINKS.get(n), "per_layer", False) for n in names)
