"""The surgery zoo: prune and add on every torchvision classification model, checked, per family.

For each model (``weights=None``, 10 classes, a small input) the tool converts it with
``convert_to_ops``, trains it one step (so Adam has state), picks up to ``--layers``
Conv2d/Linear layers spread over the depth (those the forward pass runs, the classifier
excluded: its neurons are the model's outputs), and on each of them, one after the other
on the same model: prunes 1 neuron, prunes 25 % of the rest (every 4th), adds 2 (and, when
that is refused because the groups of a grouped convolution must gain equally, adds one per
group; for an attention projection whose prunes are refused because they cut heads in parts,
prunes head 0 whole, and adds one head when "add 2" is refused for that). A layer is *editable*
when a prune (1, 25 % or a head) and an add (2, or one per group or head) succeed. After every edit that is not refused it checks

- the forward pass still gives the output shape;
- add: the output is unchanged (relative error ``max|y' - y| / max|y|`` at most 1e-5), except
  where the plan notes that a LayerNorm / GroupNorm normalises the new channels with the
  others (then the change is reported in its own column: the statistics include them);
- prune: the layer lost exactly those neurons and the model has fewer parameters;
- the optimizer's state follows every parameter (same shapes, step counts kept);
- one training step runs after the edit, with a finite loss.

A refusal (``SurgeryError``) must leave the model as it was (its parameter count and
output are checked). Anything else raised is a crash. Each model runs in its own process,
with a time limit, so a crash or a hang is counted, not fatal. Prints a table per family.

    python tools/zoo.py                        # the 78 models (all but vit_h_14 and regnet_y_128gf)
    python tools/zoo.py --ci                   # one model per family, 3 layers each
    python tools/zoo.py --models resnet50 --layers 4 --json zoo.json --markdown table.md
    python tools/zoo.py --json after.json --compare before.json   # per family, side by side

``tests/surgery/test_zoo.py`` runs the ``--ci`` set (in process) in the test suite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torchvision
from torch import nn

from weightslab.errors import SurgeryError, WeightsLabError
from weightslab.surgery import convert_to_ops

#: Too large for a routine run: skipped unless named.
SKIPPED = ("vit_h_14", "regnet_y_128gf")
#: The smallest member of every family: the CI set.
CI_MODELS = (
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet",
    "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf",
    "regnet_y_400mf", "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t",
    "swin_v2_t", "vgg11_bn", "vit_b_32", "wide_resnet50_2",
)
FAMILIES = (  # (prefix, family), first match wins
    ("efficientnet_v2", "efficientnet_v2"), ("efficientnet", "efficientnet"), ("mobilenet_v2", "mobilenet_v2"),
    ("mobilenet_v3", "mobilenet_v3"), ("regnet_x", "regnet_x"), ("regnet_y", "regnet_y"),
    ("resnext", "resnext"), ("wide_resnet", "wide_resnet"), ("resnet", "resnet"), ("swin_v2", "swin_v2"),
    ("swin", "swin"), ("vgg", "vgg"), ("vit", "vit"), ("convnext", "convnext"), ("densenet", "densenet"),
    ("shufflenet", "shufflenet"), ("squeezenet", "squeezenet"), ("mnasnet", "mnasnet"), ("maxvit", "maxvit"),
    ("inception", "inception"), ("googlenet", "googlenet"), ("alexnet", "alexnet"),
)
OPERATIONS = ("prune 1", "prune 25%", "add 2")
#: When "add 2" is refused because the layer's groups must gain equally, the smallest count they can gain.
GROUP_ADD = "add per group"
#: When both prunes are refused because they would cut attention heads in parts, one whole head (head 0).
HEAD_PRUNE = "prune head"
PRESERVE_TOLERANCE = 1e-5
BATCH = 2


def family_of(name: str) -> str:
    """The family a torchvision model name belongs to (its table row)."""
    return next(family for prefix, family in FAMILIES if name.startswith(prefix))


def all_models() -> list[str]:
    """Every torchvision classification model but the two largest."""
    return [m for m in torchvision.models.list_models(module=torchvision.models) if m not in SKIPPED]


def build(name: str) -> tuple[nn.Module, int]:
    """A fresh model (``weights=None``, 10 classes) and the side of the square input it runs on."""
    kwargs: dict[str, Any] = {"num_classes": 10}
    size = 64
    if name.startswith("vit_"):
        size = 32 if name.endswith(("_16", "_14")) else 64  # 4 patches and the class token
        kwargs["image_size"] = size
    elif name == "inception_v3":
        size = 80
        kwargs["aux_logits"] = False  # its auxiliary head (training only) needs 299 × 299 inputs
    elif name == "maxvit_t":
        size = 224  # its partitions need 224 / 32 = 7
    if name in ("googlenet", "inception_v3"):
        kwargs["init_weights"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    return model, size


@dataclass
class Outcome:
    """One edit of one layer: ``ok``, ``refused`` (clean, with the reason), ``failed`` (a check) or ``crash``."""

    model: str
    family: str
    layer: str
    op: str
    status: str
    detail: str = ""
    add_error: float | None = None
    normalised: bool = False
    ms: float = 0.0


@dataclass
class ModelReport:
    model: str
    family: str
    outcomes: list[Outcome] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


def _logits(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]  # GoogLeNet / Inception in train mode


def _executed_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the Conv2d / Linear modules an eval forward runs (attention's out_proj included), in order."""
    names = {m: n for n, m in model.named_modules()}
    seen: list[str] = []
    hooks = []

    def hook(module: nn.Module, *_: Any) -> None:
        seen.append(names[module])
        if isinstance(module, nn.MultiheadAttention):  # its projections are read, not called
            seen.append(names[module.out_proj])

    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear | nn.MultiheadAttention):
            hooks.append(module.register_forward_pre_hook(hook))
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    layers = [n for n in dict.fromkeys(seen) if isinstance(dict(model.named_modules())[n], nn.Conv2d | nn.Linear)]
    return layers


def pick_layers(model: nn.Module, x: torch.Tensor, count: int) -> list[str]:
    """Up to ``count`` executed Conv2d / Linear layers spread evenly over the depth, the classifier excluded."""
    layers = _executed_layers(model, x)[:-1]
    if len(layers) <= count:
        return layers
    picks = sorted({round(i * (len(layers) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]
    return [layers[i] for i in picks]


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> str:
    for param in model.parameters():
        if not param.requires_grad:
            continue
        state = optimizer.state.get(param)
        if not state:
            continue
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                return f"optimizer state {key} has shape {tuple(value.shape)}, the parameter {tuple(param.shape)}"
        if "step" in state and int(state["step"]) not in (steps, 0):
            return f"optimizer step {int(state['step'])}, expected {steps}"
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    missing = [p for p in model.parameters() if id(p) not in in_groups]
    if missing:
        return f"{len(missing)} parameters are no longer in the optimizer"
    return ""


def _train_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    net.train()
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(_logits(net(x)), y)
    loss.backward()
    optimizer.step()
    net.eval()
    return float(loss.detach())


def _eval(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return _logits(net(x)).clone()


def _layer_of(net: Any, name: str) -> tuple[int | None, Any]:
    module = dict(net.model.named_modules())[name]
    for index, layer in enumerate(net.layers):
        if layer is module:
            return index, module
    return None, module


def _edit(op: str, net: Any, index: int, width: int, rows: list[int] | None = None) -> tuple[list[int] | None, int]:
    if op == HEAD_PRUNE and rows is not None:
        net.prune(layer_index=index, neuron_indices=rows)
        return rows, -len(rows)
    if op == "prune 1":
        indices = [width // 2]
        net.prune(layer_index=index, neuron_indices=indices)
        return indices, -1
    if op == "prune 25%":
        indices = list(range(0, width, 4))
        net.prune(layer_index=index, neuron_indices=indices)
        return indices, -len(indices)
    count = 2 if op == "add 2" else int(op.rsplit(" ", 1)[1])
    net.add_neurons(layer_index=index, neuron_count=count, seed=0)
    return None, count


def _group_count(refusal: str) -> int | None:
    """The count a refusal of an add asks for (``add a multiple of N``), if it is that refusal."""
    match = re.search(r"add a multiple of (\d+)", refusal)
    return int(match.group(1)) if match else None


def _head_rows(refusal: str) -> list[int] | None:
    """The rows of head 0 a refusal of a partial attention head names (``head 0: rows 0-7, 32-39, 64-71``)."""
    match = re.search(r"head 0: rows (\d+)-(\d+), (\d+)-(\d+), (\d+)-(\d+)\)", refusal)
    if not match:
        return None
    bounds = [int(v) for v in match.groups()]
    return [r for lo, hi in zip(bounds[::2], bounds[1::2]) for r in range(lo, hi + 1)]


def _operations(report: ModelReport, layer: str) -> Iterable[str]:
    """The three edits; one whole attention head when both prunes are refused for cutting heads; an add of one
    channel per group (or one head) when "add 2" is refused for that."""
    for op in OPERATIONS:
        yield op
        last = report.outcomes[-1]
        if op == "prune 25%" and last.layer == layer and not any(
                o.status == "ok" for o in report.outcomes[-2:] if o.layer == layer) and _head_rows(last.detail):
            yield HEAD_PRUNE
    last = report.outcomes[-1]
    count = _group_count(last.detail) if last.layer == layer and last.status == "refused" else None
    if count is not None:
        yield f"{GROUP_ADD} {count}"


def _normalised(net: Any, index: int) -> bool:
    """Whether adding to the layer changes other channels' normalisation statistics (the plan says so)."""
    try:
        return bool(getattr(net.plan_add_neurons(layer_index=index, neuron_count=2), "notes", ()))
    except WeightsLabError:
        return False


def run_model(
    name: str, layers: int = 8, seed: int = 0, builder: Callable[[], tuple[nn.Module, int]] | None = None
) -> ModelReport:
    """Edit up to ``layers`` layers of model ``name`` and check every edit (see the module docstring).

    ``builder`` (optional) builds the model and gives its input side instead of :func:`build`
    (e.g. a smaller member of the family for a quick run).
    """
    report = ModelReport(name, family_of(name))
    start = time.perf_counter()
    torch.manual_seed(seed)
    model, size = builder() if builder is not None else build(name)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 3, size, size, generator=generator)
    y = torch.randint(0, 10, (BATCH,), generator=generator)
    chosen = pick_layers(model, x, layers)
    net: Any = convert_to_ops(model)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.attach_optimizer(optimizer)
    steps = 1
    _train_step(net, optimizer, x, y)
    for layer_name in chosen:
        for op in _operations(report, layer_name):
            outcome = Outcome(name, report.family, layer_name, op, "ok")
            report.outcomes.append(outcome)
            index, module = _layer_of(net, layer_name)
            if index is None:
                outcome.status, outcome.detail = "refused", f"not converted ({type(module).__name__})"
                continue
            reference = _eval(net, x)
            params = _param_count(net)
            width = module.neuron_count
            outcome.normalised = op.startswith("add") and _normalised(net, index)
            rows = _head_rows(report.outcomes[-2].detail) if op == HEAD_PRUNE else None
            t0 = time.perf_counter()
            try:
                indices, change = _edit(op, net, index, width, rows)
            except SurgeryError as error:
                outcome.ms = 1000 * (time.perf_counter() - t0)
                outcome.status, outcome.detail = "refused", str(error)
                after = _eval(net, x)
                if _param_count(net) != params or not torch.equal(after, reference):
                    outcome.status, outcome.detail = "failed", f"the refusal changed the model ({error})"
                continue
            except WeightsLabError as error:
                outcome.status, outcome.detail = "refused", f"{type(error).__name__}: {error}"
                continue
            except Exception as error:  # noqa: BLE001 - the zoo counts crashes, it does not stop at one
                outcome.status, outcome.detail = "crash", f"{type(error).__name__}: {error}"
                continue
            outcome.ms = 1000 * (time.perf_counter() - t0)
            try:
                problem, outcome.add_error = _check_edit(
                    net, module, x, reference, params, width, indices, change, optimizer, steps, outcome.normalised
                )
                loss = _train_step(net, optimizer, x, y)
                steps += 1
                if not math.isfinite(loss):
                    problem = problem or f"the training step after the edit gave loss {loss}"
            except Exception as error:  # noqa: BLE001
                problem = f"{type(error).__name__}: {error}"
            if problem:
                outcome.status, outcome.detail = "failed", problem
    report.seconds = time.perf_counter() - start
    return report


def _check_edit(
    net: Any,
    module: Any,
    x: torch.Tensor,
    reference: torch.Tensor,
    params: int,
    width: int,
    indices: list[int] | None,
    change: int,
    optimizer: torch.optim.Optimizer,
    steps: int,
    normalised: bool = False,
) -> tuple[str, float | None]:
    """What is wrong after an edit ('' if nothing), and for an add the relative change of the output."""
    after = _eval(net, x)
    if after.shape != reference.shape:
        return f"output shape {tuple(after.shape)}, was {tuple(reference.shape)}", None
    if module.neuron_count != width + change:
        return f"the layer has {module.neuron_count} neurons, expected {width + change}", None
    error = None
    if indices is None:
        error = float((after - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
        if not error <= PRESERVE_TOLERANCE and not normalised:
            return f"add is not function-preserving: relative error {error:.2e}", error
    elif _param_count(net) >= params:
        return f"the parameter count did not fall ({params} -> {_param_count(net)})", None
    return _check_optimizer(net, optimizer, steps), error


# -- report ---------------------------------------------------------------------------------------------------


def summarize(reports: Iterable[ModelReport]) -> list[dict[str, Any]]:
    """One row per family, then a total row."""
    by_family: dict[str, list[ModelReport]] = defaultdict(list)
    for report in reports:
        by_family[report.family].append(report)
    rows = [_row(family, group) for family, group in sorted(by_family.items())]
    rows.append(_row("all", [r for group in by_family.values() for r in group]))
    return rows


def _row(family: str, group: list[ModelReport]) -> dict[str, Any]:
    outcomes = [o for r in group for o in r.outcomes]
    layers: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for o in outcomes:
        layers[(o.model, o.layer)][o.op.split(" ")[0] + " per group" if o.op.startswith(GROUP_ADD) else o.op] = o.status
    ok = {op: sum(1 for ops in layers.values() if ops.get(op) == "ok") for op in OPERATIONS}
    errors = [o.add_error for o in outcomes if o.add_error is not None and not o.normalised]
    norm_errors = [o.add_error for o in outcomes if o.add_error is not None and o.normalised]
    times = [o.ms for o in outcomes if o.status in ("ok", "refused") and o.ms]
    return {
        "family": family,
        "models": len(group),
        "layers": len(layers),
        "prune 1": ok["prune 1"],
        "prune 25%": ok["prune 25%"],
        "add 2": ok["add 2"],
        "prune head": sum(1 for ops in layers.values() if ops.get(HEAD_PRUNE) == "ok"),
        "add per group": sum(1 for ops in layers.values() if ops.get("add per group") == "ok"),
        "editable": sum(1 for ops in layers.values() if _editable(ops)),
        "refused": sum(1 for o in outcomes if o.status == "refused"),
        "failed": sum(1 for o in outcomes if o.status == "failed"),
        "crashes": sum(1 for o in outcomes if o.status == "crash") + sum(1 for r in group if r.error),
        "add max err": max(errors) if errors else None,
        "norm adds": len(norm_errors),
        "norm max err": max(norm_errors) if norm_errors else None,
        "median ms": statistics.median(times) if times else None,
    }


def _editable(ops: dict[str, str]) -> bool:
    """Pruned (1, 25 % or a whole head) and grown (2, or one per group or head where those must stay equal)."""
    pruned = "ok" in (ops.get("prune 1"), ops.get("prune 25%"), ops.get(HEAD_PRUNE))
    grown = "ok" in (ops.get("add 2"), ops.get("add per group"))
    return pruned and grown


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """The per-family table (plain text, or a Markdown table)."""
    columns = list(rows[0]) if rows else []

    def cell(column: str, value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1e}" if "err" in column else f"{value:.0f}"
        return str(value)

    cells = [[cell(c, r[c]) for c in columns] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def reasons(reports: Iterable[ModelReport], status: str = "refused") -> list[tuple[int, str]]:
    """The distinct reasons of one status (first sentence, layer names elided), most frequent first."""
    counts: dict[str, int] = defaultdict(int)
    for report in reports:
        for o in report.outcomes:
            if o.status == status:
                counts[_gist(o.detail)] += 1
        if status == "crash" and report.error:
            counts[_gist(report.error)] += 1
    return sorted(((n, r) for r, n in counts.items()), reverse=True)


def _gist(detail: str) -> str:
    text = re.sub(r"\((model\.)?[\w.]+: \w+\)", "(…)", detail)
    text = re.sub(r"\b(layer|module) \d+", r"\1 N", text)
    text = re.sub(r"model\.[\w.]+", "…", text)
    text = re.sub(r"\d+", "N", text)
    return text[:220]


def _load(path: str) -> list[ModelReport]:
    with open(path) as f:
        data = json.load(f)
    return [ModelReport(r["model"], r["family"], [Outcome(**o) for o in r["outcomes"]], r["error"], r["seconds"])
            for r in data["reports"]]


def compare(before: list[ModelReport], after: list[ModelReport]) -> list[dict[str, Any]]:
    """Per family (of the models in both runs): layers editable, and crashes, before and after."""
    names = {r.model for r in before} & {r.model for r in after}
    old = {row["family"]: row for row in summarize([r for r in before if r.model in names])}
    new = {row["family"]: row for row in summarize([r for r in after if r.model in names])}
    return [
        {"family": family, "models": new[family]["models"], "layers": new[family]["layers"],
         "editable before": old[family]["editable"], "editable after": new[family]["editable"],
         "crashes before": old[family]["crashes"] + old[family]["failed"],
         "crashes after": new[family]["crashes"] + new[family]["failed"]}
        for family in new
    ]


# -- running models in their own processes --------------------------------------------------------------------


def _run_isolated(name: str, layers: int, timeout: float) -> ModelReport:
    command = [sys.executable, __file__, "--worker", name, "--layers", str(layers)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return ModelReport(name, family_of(name), error=f"timed out after {timeout:.0f} s",
                           seconds=time.perf_counter() - start)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return ModelReport(name, family_of(name), error=f"exit {done.returncode}: {tail[0]}",
                           seconds=time.perf_counter() - start)
    data = json.loads(lines[-1])
    return ModelReport(data["model"], data["family"], [Outcome(**o) for o in data["outcomes"]], data["error"],
                       data["seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", help="model names (default: all but the two largest)")
    parser.add_argument("--ci", action="store_true", help="one model per family, 3 layers each")
    parser.add_argument("--layers", type=int, default=None, help="layers per model (default 8, 3 with --ci)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per model before it counts as a hang")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model process")
    parser.add_argument("--json", help="write every outcome to this JSON file")
    parser.add_argument("--markdown", help="write the table and the refusal reasons to this Markdown file")
    parser.add_argument("--compare", help="a JSON file of an earlier run: print both side by side per family")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    layers = args.layers or (3 if args.ci else 8)
    if args.worker:
        report = run_model(args.worker, layers)
        print(json.dumps(asdict(report)))
        return 0
    names = args.models or (list(CI_MODELS) if args.ci else all_models())
    env_threads = os.environ.get("OMP_NUM_THREADS")
    if env_threads is None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    reports = []
    for name in names:
        report = _run_isolated(name, layers, args.timeout)
        reports.append(report)
        counts: dict[str, int] = defaultdict(int)
        for o in report.outcomes:
            counts[o.status] += 1
        print(f"{name:22s} {report.seconds:7.1f} s  " + " ".join(f"{k} {v}" for k, v in sorted(counts.items()))
              + (f"  ERROR {report.error}" if report.error else ""), flush=True)
        if args.json:  # after every model: a run cut short still leaves what it measured
            with open(args.json, "w") as f:
                json.dump({"rows": summarize(reports), "reports": [asdict(r) for r in reports]}, f, indent=1)
    rows = summarize(reports)
    print()
    print(format_table(rows))
    for status in ("crash", "failed", "refused"):
        found = reasons(reports, status)
        if found:
            print(f"\n{status}:")
            for n, reason in found[:40]:
                print(f"  {n:4d}  {reason}")
    if args.compare:
        print()
        print(format_table(compare(_load(args.compare), reports)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "reports": [asdict(r) for r in reports]}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(format_table(rows, markdown=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
