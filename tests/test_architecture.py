"""The import structure: no cycle between the project's modules, apps import only leftwards
(`organizations` ← `billing` ← `usage`), and only the gateway imports `stripe`.

Read from the source with `ast` (no Django needed). The graph holds the imports a module runs when it
is imported (top level, class bodies, `try`/`if` blocks; not function bodies, not `if TYPE_CHECKING:`),
relative imports resolved. Test packages (`*/tests/`) are left out: nothing imports them.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("billing", "usage", "organizations", "billing_project")
#: app -> apps it must not import (anywhere in its code, function bodies included).
FORBIDDEN = {"organizations": {"billing", "usage"}, "billing": {"usage"}}
STRIPE_GATEWAY = "billing.stripe_gateway"


def _project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "tests" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


MODULES = _project_modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(body: list[ast.stmt], *, top_level_only: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements run when the module body runs (or every import, with top_level_only=False)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not top_level_only:
                yield from _import_nodes(node.body, top_level_only=False)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.orelse, top_level_only=top_level_only)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None) or []
                for child in children:
                    stmts = child.body if isinstance(child, (ast.ExceptHandler, ast.match_case)) else [child]
                    yield from _import_nodes(stmts, top_level_only=top_level_only)


def _imported_names(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """Dotted names a statement imports (absolute; for `from X import n`, X.n and X)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if node.level:
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        base_parts = package.split(".")
        base_parts = base_parts[:len(base_parts) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    for alias in node.names:
        yield f"{base}.{alias.name}"
    yield base


def _project_target(name: str) -> str | None:
    """The project module a dotted name lands in (the longest prefix that is a module)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _parse(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))


def import_graph(*, top_level_only: bool = True) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        edges: set[str] = set()
        for node in _import_nodes(_parse(module).body, top_level_only=top_level_only):
            names = list(_imported_names(module, node))
            if isinstance(node, ast.ImportFrom):
                # `from X import n`: the submodule X.n when n is one, else the module X itself.
                *submodules, base = names
                targets = {_project_target(n) for n in submodules if n in MODULES} or {_project_target(base)}
            else:
                targets = {_project_target(n) for n in names}
            edges |= {t for t in targets if t and t != module}
        graph[module] = edges
    return graph


def cyclic_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete (shortest) cycle per cyclic component, from its first module back to it."""
    cycles = []
    for component in cyclic_components(graph):
        members = set(component)
        start = component[0]
        # Shortest path start -> ... -> start inside the component (BFS).
        previous: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        found = v
                        break
                    if w not in previous:
                        previous[w] = v
                        nxt.append(w)
                if found:
                    break
            frontier = nxt
        path = [found]
        while path[-1] != start:
            path.append(previous[path[-1]])
        cycle = list(reversed(path)) + [start]
        cycles.append(cycle)
    return cycles


def test_find_cycles_reports_the_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def _cycle_report(graph: dict[str, set[str]]) -> str:
    report = "\n".join(f"{' -> '.join(cycle)}\n  ({len(component)} modules in this knot: {', '.join(component)})"
                       for cycle, component in zip(find_cycles(graph), cyclic_components(graph)))
    print(report)
    return report


def test_no_import_cycle_between_project_modules():
    graph = import_graph()
    assert "billing.stripe_gateway" in graph and graph["billing.services.balance"], "graph not built"
    report = _cycle_report(graph)
    assert not report, f"import cycle(s) between modules (module-level imports):\n{report}"


def test_no_cycle_hidden_in_function_level_imports():
    """An import moved into a function body to dodge a cycle still is the cycle: counted here too."""
    report = _cycle_report(import_graph(top_level_only=False))
    assert not report, f"import cycle(s) between modules (function-level imports included):\n{report}"


def test_apps_import_only_leftwards():
    """organizations ← billing ← usage, counting every import (function bodies too)."""
    violations = []
    for module in MODULES:
        app = module.split(".")[0]
        for node in _import_nodes(_parse(module).body, top_level_only=False):
            for name in _imported_names(module, node):
                if name.split(".")[0] in FORBIDDEN.get(app, ()):
                    violations.append(f"{MODULES[module].relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not violations, "\n".join(sorted(set(violations)))


def test_only_the_gateway_imports_stripe():
    offenders = []
    for module in MODULES:
        if module == STRIPE_GATEWAY:
            continue
        for node in _import_nodes(_parse(module).body, top_level_only=False):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue
            for name in _imported_names(module, node):
                if name == "stripe" or name.startswith("stripe."):
                    offenders.append(f"{MODULES[module].relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"only {STRIPE_GATEWAY} may import stripe: {sorted(set(offenders))}"


def test_tasks_keep_their_registered_names():
    """Messages already queued and the beat schedule name tasks by the modules they lived in before
    billing/tasks.py held them all; billing.enqueue looks them up by those names."""
    from celery import current_app
    from django.conf import settings

    from billing import enqueue, tasks

    registered = current_app.tasks
    for name, task in ((enqueue.WEBHOOK_PROCESS, tasks.webhook_process), (enqueue.TOPUP_CHARGE, tasks.topup_charge),
                       (enqueue.SEND_ORG_ADMIN_EMAIL, tasks.send_org_admin_email)):
        assert task.name == name and registered[name].name == name
    assert enqueue.WEBHOOK_PROCESS == "billing.tasks_webhooks.webhook_process"
    assert enqueue.TOPUP_CHARGE == "billing.tasks_topups.topup_charge"
    assert enqueue.SEND_ORG_ADMIN_EMAIL == "billing.tasks.send_org_admin_email"
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        if entry["task"].startswith("billing."):
            assert entry["task"] in registered, entry


def test_an_app_error_becomes_http_in_one_place():
    """Only billing_project.api turns an AppError into a response (JSON, a 404/403 page, or flash and
    redirect): everything else calls its `app_error_response`."""
    home = "billing_project.api"
    builders = ("error_response(", "Http404(exc.", "PermissionDenied(exc.", "messages.error(request, exc.")
    offenders = []
    for module, path in MODULES.items():
        if module == home:
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(b in code for b in builders) and "app_error_response(" not in code:
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not offenders, f"translate AppError with {home}.app_error_response: {offenders}"


def test_every_gateway_function_is_called_by_the_app():
    """The gateway holds only what the app calls; calls only tests make (saving a raw card, listing
    events) live in tests/stripe_calls.py."""
    import re

    gateway = _parse(STRIPE_GATEWAY)
    # reset_client drops the cached client when settings change (tests point it at a fresh simulator).
    public = [n.name for n in gateway.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")
              and n.name != "reset_client"]
    sources = {module: path.read_text() for module, path in MODULES.items()}
    unused = []
    for name in public:
        calls = sum(len(re.findall(rf"(?<![\w.]){name}\(|\.{name}\(", src)) for src in sources.values())
        if calls - 1 <= 0:  # the `def` line itself
            unused.append(name)
    assert not unused, f"gateway functions no app module calls: {unused}"
