#!/usr/bin/env python3
"""Lists the `crate::` dependencies between a crate's modules and the cycles
among them (strongly connected components of more than one module).

Usage: module_cycles.py <crate>/src [--tests] [--edges]

A module is a file (`a/b.rs` or `a/b/mod.rs` is `a::b`). Every `crate::x::y`
path (in `use` lines, `use crate::{x, y::z}` groups and inline paths) and
every `super::` path counts as an edge to the longest known module prefix.
An edge from a module to its own ancestor or descendant (a folder's
`mod.rs` re-exporting its children, a child using its folder's types) is
reported as nesting, not as a cycle. `#[cfg(test)] mod tests` blocks are
left out unless `--tests` is given. Exits 1 when a cycle exists.
"""
import os
import re
import sys


def module_of(root, path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return ""
    return "::".join(rel)


def strip_tests(text):
    m = re.search(r"#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod\s+\w+\s*\{", text)
    return text[: m.start()] if m else text


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def expand_group(prefix, body):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']"""
    out, depth, cur = [], 0, ""
    for ch in body + ",":
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            item = cur.strip()
            cur = ""
            if not item:
                continue
            m = re.match(r"^([\w:]*?)::\{(.*)\}$", item, flags=re.S)
            if m:
                out += expand_group(prefix + [p for p in m.group(1).split("::") if p], m.group(2))
            else:
                out.append("::".join(prefix + item.split(" as ")[0].strip().split("::")))
        else:
            cur += ch
    return out


def paths_in(text):
    paths = []
    for m in re.finditer(r"\b(crate|super(?:::super)*)::\{", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        paths += [m.group(1) + "::" + p for p in expand_group([], text[m.end() : i - 1])]
    for m in re.finditer(r"\b((?:crate|super(?:::super)*)(?:::\w+)+)", text):
        paths.append(m.group(1))
    return paths


def resolve(path, here, modules, is_dir_module):
    parts = path.split("::")
    if parts[0] == "crate":
        base, parts = [], parts[1:]
    else:
        base = here.split("::") if here else []
        if not is_dir_module:
            base = base[:-1]  # a file's `super` is its folder
        while parts and parts[0] == "super":
            base, parts = base[:-1], parts[1:]
    best = "::".join(base)
    for i in range(1, len(parts) + 1):
        cand = "::".join(base + parts[:i])
        if cand in modules:
            best = cand
    return best


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    root = args[0] if args else "src"
    tests = "--tests" in sys.argv
    files = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            if f.endswith(".rs"):
                p = os.path.join(d, f)
                if d == root and f == "main.rs" and os.path.exists(os.path.join(root, "lib.rs")):
                    continue  # the binary is its own crate
                files[module_of(root, p)] = p
    modules = set(files)
    edges = {m: set() for m in modules}
    for m, p in files.items():
        text = strip_comments(open(p, encoding="utf-8").read())
        if not tests:
            text = strip_tests(text)
        is_dir = p.endswith(("mod.rs", "lib.rs", "main.rs"))
        for path in paths_in(text):
            t = resolve(path, m, modules, is_dir)
            if t != m:
                edges[m].add(t)

    def related(a, b):
        pa, pb = a.split("::") if a else [], b.split("::") if b else []
        return pa[: len(pb)] == pb or pb[: len(pa)] == pa

    graph = {m: {t for t in ts if not related(m, t)} for m, ts in edges.items()}
    if "--edges" in sys.argv:
        for m in sorted(graph):
            print(f"{m or '<root>'} -> {', '.join(sorted(graph[m])) or '-'}")
    # Tarjan
    index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    nedges = sum(len(t) for t in graph.values())
    print(f"{len(modules)} modules, {nedges} crate-internal edges" + (" (tests included)" if tests else ""))
    if not sccs:
        print("no module cycle")
        return 0
    for c in sccs:
        print("cycle: " + " <-> ".join(c))
        for a in c:
            for b in sorted(graph[a]):
                if b in c:
                    print(f"    {a} -> {b}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
