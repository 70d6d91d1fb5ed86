"""MkDocs hooks that make the generated pages of the documentation site.

- The home page: README.md, the repository's front page (the guide pages
  are markdown files under docs/guide/, the sources of their own).
- The tutorials: each `tutorials/*.py` whose docstring starts with
  `Title:` (the keras-io format: string statements are markdown, the rest
  is code), rendered without running it, followed by the figures its
  committed run left in `saved_results/tutorials/<name>/`.
- The command-line page: `docs/cli.md`'s `<!-- argparse-help: ... -->`
  lines become the `--help` of the `keras-sam` parser, built in a
  subprocess that loads `keras_sam.experiments.cli` without running
  `keras_sam/__init__.py` (so without Keras or a backend).
- A docstring check: every public class, function and method of the
  modules the API pages document (their `::: name` lines) has a
  docstring; one that lacks it is a warning, so `mkdocs build --strict`
  fails.
- An API coverage check: every name the package exports (`keras_sam`'s
  `__all__`; of each module it exports, that module's `__all__` or, if it
  has none, the public names it defines) has an entry on a page under
  docs/api/; one without is a warning.

Links in the README, the tutorials and the pages under docs/ are written
for the repository (relative paths, as a reader browsing it follows
them): links to a page the site has (README.md, a tutorial, a page of
docs/), images and CSV files are rewritten to the site's copies; a
markdown file of the repository they link to (a protocol, a results
README; and what it links to in turn) becomes a page under
`repository/`, outside the navigation; a link to any other file of the
repository becomes the file's path in code; a link to a file that does
not exist is a warning.
"""

import ast
import inspect
import json
import logging
import os
import pathlib
import posixpath
import re
import subprocess
import sys

from mkdocs.structure.files import File, InclusionLevel

log = logging.getLogger("mkdocs.hooks.keras_sam")

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "keras_sam"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif")
# Linked files of these kinds are copied into the site too (results).
ASSET_SUFFIXES = (*IMAGE_SUFFIXES, ".csv")
ASSETS = "assets"
# Where the repository's markdown files that pages link to (a protocol,
# a results README) are shown, outside the navigation.
REPOSITORY = "repository"
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:")

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"(!?)\[([^\]]+)\]\(([^)\s]+)\)")
_HELP_MARKER = re.compile(r"^<!-- argparse-help: keras-sam ?(.*?) -->$", re.M)
_API_IDENTIFIER = re.compile(r"^::: ([\w.]+)", re.M)
_HTML_ID = re.compile(r'id="(keras_sam(?:\.\w+)*)"')
_TABLE_CELL = re.compile(r"<t([dh])\b[^>]*>.*?</t\1>", re.S)

# Set by `on_files` and read by `on_page_markdown`: generated page
# (src_uri) -> its markdown, and repository path -> site src_uri.
_PAGES = {}
_SITE_PATHS = {}
_FILES = None
# The HTML ids of the API pages' entries, collected by `on_page_content`.
_API_IDS = set()


def _split_fenced(text):
    """Yields `(is_code, chunk)`: the text cut at fenced code blocks."""
    chunk, code = [], False
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            if not code:
                yield False, "".join(chunk)
                chunk, code = [line], True
            else:
                chunk.append(line)
                yield True, "".join(chunk)
                chunk, code = [], False
            continue
        chunk.append(line)
    yield code, "".join(chunk)


def _add_asset(repo_path):
    """Copies a repository file into the site; returns its src_uri."""
    uri = posixpath.join(ASSETS, repo_path)
    if _FILES.get_file_from_path(uri) is None:
        _FILES.append(
            File.generated(
                _CONFIG, uri, abs_src_path=str(ROOT / repo_path)
            )
        )
    return uri


def _rewrite_links(text, source, page_uri):
    """Rewrites the repository links of `source`'s text for `page_uri`."""

    def replace(match):
        bang, label, target = match.groups()
        if _SCHEME.match(target) or target.startswith("#"):
            return match.group(0)
        path, _, anchor = target.partition("#")
        repo_path = posixpath.normpath(
            posixpath.join(posixpath.dirname(source), path)
        )
        if not (ROOT / repo_path).exists():
            log.warning(
                "%s links to %r, which is not in the repository",
                source,
                target,
            )
            return match.group(0)
        uri = _SITE_PATHS.get(repo_path)
        if uri is None and repo_path.lower().endswith(ASSET_SUFFIXES):
            uri = _add_asset(repo_path)
        if uri is None:
            shown = label.strip("`").rstrip("/")
            if repo_path == shown or repo_path.startswith(shown + "/"):
                return f"`{repo_path}` (in the repository)"
            return f"{label} (`{repo_path}` in the repository)"
        link = posixpath.relpath(uri, posixpath.dirname(page_uri) or ".")
        if anchor:
            link += "#" + anchor
        return f"{bang}[{label}]({link})"

    out = []
    for is_code, chunk in _split_fenced(text):
        out.append(chunk if is_code else _LINK.sub(replace, chunk))
    return "".join(out)


def _linked_markdown(sources):
    """The repository's markdown files that `sources` (`(repository path,
    markdown)` pairs) link to, directly or through one another, and that
    the site has no page for: `{repository path: src_uri}`."""
    found, queue = {}, list(sources)
    while queue:
        source, text = queue.pop()
        for is_code, chunk in _split_fenced(text):
            if is_code:
                continue
            for _, _, target in _LINK.findall(chunk):
                if _SCHEME.match(target) or target.startswith("#"):
                    continue
                path = posixpath.normpath(
                    posixpath.join(
                        posixpath.dirname(source), target.partition("#")[0]
                    )
                )
                if (
                    path.endswith(".md")
                    and path not in _SITE_PATHS
                    and path not in found
                    and (ROOT / path).is_file()
                ):
                    found[path] = posixpath.join(REPOSITORY, path)
                    queue.append((path, (ROOT / path).read_text()))
    return found


def _render_repository_page(repo_path, uri):
    """A repository markdown file as a page, saying where it comes from."""
    text = (ROOT / repo_path).read_text()
    note = (
        '!!! info "A file of the repository"\n'
        f"    `{repo_path}`, shown as the repository holds it.\n\n"
    )
    first, _, rest = text.partition("\n")
    if first.startswith("# "):
        text = f"{first}\n\n{note}{rest}"
    else:
        text = note + text
    return _rewrite_links(text, repo_path, uri)


# ---------------------------------------------------------------- tutorials


def _tutorial_scripts():
    scripts = []
    for path in sorted((ROOT / "tutorials").glob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        if docstring and docstring.startswith("Title:"):
            scripts.append(path)
    return scripts


def _tutorial_header(docstring):
    """The keras-io header (`Key: value` lines) as a dict."""
    fields, key = {}, None
    for line in docstring.splitlines():
        match = re.match(r"^([A-Z][\w ]*):\s*(.*)$", line)
        if match:
            key = match.group(1)
            fields[key] = match.group(2).strip()
        elif key and line.strip():
            fields[key] += " " + line.strip()
    return fields


def _render_tutorial(path):
    """A keras-io style script as markdown: prose, then fenced code."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    header = _tutorial_header(ast.get_docstring(tree))
    repo_path = path.relative_to(ROOT).as_posix()
    parts = [f"# {header.pop('Title', path.stem)}\n"]
    if "Description" in header:
        parts.append(header.pop("Description") + "\n")
    details = [f"**{key}:** {value}" for key, value in header.items()]
    details.append(
        f"**Source:** `{repo_path}`, shown here without running it; run "
        f"it with `python {repo_path}` (`--quick` for a smoke test)."
    )
    parts.append('!!! info "About this tutorial"\n')
    parts.extend(f"    {line}\n" for line in details)

    def code(start, end):
        block = "\n".join(lines[start:end]).strip("\n")
        if block.strip():
            parts.append(f"```python\n{block}\n```\n")

    cursor = tree.body[0].end_lineno
    for node in tree.body[1:]:
        is_prose = (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        )
        if not is_prose:
            continue
        code(cursor, node.lineno - 1)
        parts.append(inspect.cleandoc(node.value.value) + "\n")
        cursor = node.end_lineno
    code(cursor, len(lines))

    figures = ROOT / "saved_results" / "tutorials" / path.stem
    images = sorted(
        p for p in figures.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES
    )
    if images:
        results = figures.relative_to(ROOT).as_posix()
        parts.append(
            f"## Figures\n\nFrom the committed run in `{results}/` "
            "(its `run.json` records the command, commit and hardware).\n"
        )
        for image in images:
            image_path = image.relative_to(ROOT).as_posix()
            rel = posixpath.relpath(image_path, "tutorials")
            parts.append(f"![{image.stem}]({rel})\n")
    return "\n".join(parts)


# ---------------------------------------------------------- command line

_CLI_HELP = r"""
import argparse, ast, json, pathlib, sys, types

root = pathlib.Path(sys.argv[1])
init = root / "keras_sam" / "__init__.py"
package = types.ModuleType("keras_sam")
package.__path__ = [str(init.parent)]
for node in ast.parse(init.read_text()).body:
    if isinstance(node, ast.Assign) and any(
        getattr(t, "id", None) == "__version__" for t in node.targets
    ):
        package.__version__ = node.value.value
sys.modules["keras_sam"] = package

from keras_sam.experiments.cli import build_parser

parser = build_parser()
helps = {"": parser.format_help()}
for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
        for name, subparser in action.choices.items():
            helps[name] = subparser.format_help()
print(json.dumps(helps))
"""


def _cli_helps():
    env = dict(os.environ, COLUMNS="88", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", _CLI_HELP, str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        log.warning("keras-sam's parser failed:\n%s", result.stderr)
        return {}
    return json.loads(result.stdout)


def _render_cli(markdown):
    helps = _cli_helps()

    def replace(match):
        command = match.group(1).strip()
        if command not in helps:
            log.warning("cli.md: keras-sam has no command %r", command)
            return match.group(0)
        shown = f"keras-sam {command} --help".replace("  ", " ")
        return f"```text\n$ {shown}\n{helps[command].rstrip()}\n```"

    return _HELP_MARKER.sub(replace, markdown)


# ------------------------------------------------------- docstring check


# Methods a Keras class overrides from Keras (documented there), besides
# the callback hooks `on_*`.
KERAS_OVERRIDES = {
    "build",
    "build_from_config",
    "call",
    "compute_output_shape",
    "compute_output_spec",
    "from_config",
    "get_build_config",
    "get_config",
    "predict_step",
    "test_step",
    "train_step",
}


def _documented(obj):
    return bool(obj.docstring and obj.docstring.value.strip())


def _exempt(obj):
    """Whether a member without a docstring is documented elsewhere: a
    dunder method (`__init__`'s arguments are the class docstring's), an
    override of a documented method of a keras_sam base class, or of a
    Keras method."""
    if obj.name.startswith("__") and obj.name.endswith("__"):
        return True
    parent = obj.parent
    if parent is None or parent.kind.value != "class":
        return False
    for base in parent.mro():
        member = base.members.get(obj.name)
        if member is not None and _documented(member):
            return True
    external = any(
        len(c.resolved_bases) < len(c.bases)
        or any(b.kind.value != "class" for b in c.resolved_bases)
        for c in [parent, *parent.mro()]
    )
    return external and (
        obj.name in KERAS_OVERRIDES or obj.name.startswith("on_")
    )


def _check_docstrings(config):
    """Warns for each public class, function or method without docstring
    in the objects that the API pages document."""
    import griffe

    identifiers = []
    for page in sorted((ROOT / config["docs_dir"] / "api").glob("*.md")):
        identifiers += _API_IDENTIFIER.findall(page.read_text())
    package = griffe.load(
        PACKAGE,
        search_paths=[str(ROOT)],
        docstring_parser="google",
        resolve_aliases=True,
        resolve_external=False,
    )

    def ours(obj):
        return not obj.is_alias or obj.target_path.startswith(PACKAGE + ".")

    missing, seen = [], set()

    def walk(obj):
        obj = obj.final_target if obj.is_alias else obj
        if obj.path in seen:
            return
        seen.add(obj.path)
        if (
            obj.kind.value in ("module", "class", "function")
            and not _documented(obj)
            and not _exempt(obj)
        ):
            missing.append(f"{obj.path} ({obj.relative_filepath})")
        if obj.kind.value in ("module", "class"):
            for name, member in obj.members.items():
                if ours(member) and member.is_public:
                    walk(member)
                    # Constants are documented where `__all__` lists them.
                    target = member.final_target if member.is_alias else member
                    if (
                        target.kind.value == "attribute"
                        and name in (obj.exports or ())
                        and not _documented(target)
                    ):
                        missing.append(
                            f"{target.path} ({target.relative_filepath})"
                        )

    for identifier in identifiers:
        try:
            obj = package[identifier.removeprefix(PACKAGE + ".")]
        except KeyError:
            continue  # mkdocstrings reports the unknown identifier
        walk(obj)
    for path in missing:
        log.warning("no docstring: %s", path)


# ------------------------------------------------------ API coverage check


def _exported_names():
    """`{public path: paths its entry may have}` for every exported name:
    `keras_sam.__all__` and, for each module it exports, that module's
    `__all__` or (without one) the public names the module defines."""
    import griffe

    package = griffe.load(
        PACKAGE,
        search_paths=[str(ROOT)],
        resolve_aliases=True,
        resolve_external=False,
    )

    def target(obj):
        return obj.final_target if obj.is_alias else obj

    names = {}
    for name in sorted(package.exports or ()):
        exported = target(package.members[name])
        names[f"{PACKAGE}.{name}"] = {exported.path}
        if exported.kind.value != "module":
            continue
        if exported.exports is not None:
            members = sorted(exported.exports)
        else:
            members = [
                n
                for n, m in exported.members.items()
                if not n.startswith("_")
                and not m.is_alias
                and m.kind.value != "module"
            ]
        for member in members:
            obj = exported.members.get(member)
            if obj is None:
                paths = set()
            elif obj.is_alias or obj.kind.value != "module":
                paths = {target(obj).path}
            else:
                # A function re-exported from the submodule of its name
                # (`keras_sam.models.resnet`, the `resnet` builder), which
                # the submodule hides from griffe.
                paths = {f"{obj.path}.{member}"}
            names[f"{exported.path}.{member}"] = paths
    return names


def _check_api_coverage():
    """Warns for each exported name that no API page has an entry for."""
    for name, paths in _exported_names().items():
        if not (paths | {name}) & _API_IDS:
            log.warning(
                "%s has no API entry: add `::: %s` to a page in docs/api/",
                name,
                min(paths or {name}),
            )


# ---------------------------------------------------------------- hooks

_CONFIG = None


def on_config(config):
    """Appends the tutorial pages to the nav's "Tutorials" section."""
    global _CONFIG
    _CONFIG = config
    _API_IDS.clear()
    tutorials = []
    for path in _tutorial_scripts():
        title = _tutorial_header(ast.get_docstring(ast.parse(path.read_text())))
        tutorials.append({title["Title"]: f"tutorials/{path.stem}.md"})
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and "Tutorials" in entry:
            entry["Tutorials"] = list(entry["Tutorials"] or []) + tutorials
    return config


def on_files(files, config):
    global _FILES
    _FILES = files
    _PAGES.clear()
    _SITE_PATHS.clear()
    _SITE_PATHS["README.md"] = "index.md"
    docs = _docs_prefix(config)
    for file in files.documentation_pages():
        _SITE_PATHS[posixpath.join(docs, file.src_uri)] = file.src_uri
    scripts = _tutorial_scripts()
    for path in scripts:
        _SITE_PATHS[path.relative_to(ROOT).as_posix()] = (
            f"tutorials/{path.stem}.md"
        )

    readme = (ROOT / "README.md").read_text()
    tutorials = {
        path.relative_to(ROOT).as_posix(): _render_tutorial(path)
        for path in scripts
    }
    sources = [("README.md", readme), *tutorials.items()]
    sources += [
        (posixpath.join(docs, file.src_uri), file.content_string)
        for file in files.documentation_pages()
    ]
    linked = _linked_markdown(sources)
    _SITE_PATHS.update(linked)

    _PAGES["index.md"] = _rewrite_links(readme, "README.md", "index.md")
    for repo_path, markdown in tutorials.items():
        uri = _SITE_PATHS[repo_path]
        _PAGES[uri] = _rewrite_links(markdown, repo_path, uri)
    for repo_path, uri in linked.items():
        _PAGES[uri] = _render_repository_page(repo_path, uri)
    for uri, markdown in _PAGES.items():
        if files.get_file_from_path(uri) is not None:
            log.warning("%s is generated; remove it from docs/", uri)
            files.remove(files.get_file_from_path(uri))
        inclusion = (
            InclusionLevel.NOT_IN_NAV
            if uri.startswith(REPOSITORY + "/")
            else InclusionLevel.UNDEFINED
        )
        files.append(
            File.generated(config, uri, content=markdown, inclusion=inclusion)
        )
    _check_docstrings(config)
    return files


def _docs_prefix(config):
    """The docs folder's path in the repository (`docs`)."""
    docs_dir = pathlib.Path(config["docs_dir"]).resolve()
    return docs_dir.relative_to(ROOT).as_posix()


def on_page_markdown(markdown, page, config, files):
    uri = page.file.src_uri
    if uri in _PAGES:
        return markdown  # generated: its links are already rewritten
    if uri == "cli.md":
        markdown = _render_cli(markdown)
    source = posixpath.join(_docs_prefix(config), uri)
    return _rewrite_links(markdown, source, uri)


def on_page_content(html, page, config, files):
    if page.file.src_uri.startswith("api/"):
        _API_IDS.update(_HTML_ID.findall(html))
    # A table cell's code writes `|` as `\|` (`rho g / \|g\|`): GitHub
    # shows `|`, Python-Markdown keeps the backslash.
    return _TABLE_CELL.sub(lambda m: m.group(0).replace("\\|", "|"), html)


def on_post_build(config):
    _check_api_coverage()
